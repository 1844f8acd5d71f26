"""inference: routed-ensemble latency in ms/image at 224 px, batch 1 and batch 32, with and without TTA,
on 2 torch threads, for the demo's `small` preset. Images of known projection (one expert each) and of
unknown projection (router + soft mixture of all three experts) are timed separately."""

from __future__ import annotations

import time
from pathlib import Path

import torch

from benchmarks.common import record
from shared_models.networks import build_model
from shared_models.tta import DEFAULT_TTA, predict_with_tta


def _ms_per_image(fn, batch: int, repeats: int) -> float:
    fn()  # warm-up
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - t0) / repeats / batch * 1000


def run(out: Path, preset: str = "small", size: int = 224) -> dict:
    torch.set_num_threads(2)
    torch.manual_seed(0)
    model = build_model(preset, 30).eval()
    figures = {}
    with torch.inference_mode():
        for batch in (1, 32):
            x = torch.randn(batch, 1, size, size)
            for routing, proj in (("known view", torch.zeros(batch, dtype=torch.long)),
                                  ("router", torch.full((batch,), -1))):
                reps = 20 if batch == 1 else 3
                figures[f"batch {batch}, {routing}"] = _ms_per_image(lambda x=x, proj=proj: model(x, proj), batch, reps)
                figures[f"batch {batch}, {routing}, TTA x{len(DEFAULT_TTA)}"] = _ms_per_image(
                    lambda x=x, proj=proj: predict_with_tta(model, x, proj), batch, max(1, reps // 4))
    return {"inference": record({"ms_per_image": figures, "preset": preset, "image_size": size, "threads": 2,
                                 "headline": {f"ms/image {k}": v for k, v in figures.items()}},
                                f"python -m benchmarks.run --only inference (preset {preset}, {size} px)")}
