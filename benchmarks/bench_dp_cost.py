"""dp_cost: one training step (batch 32, 64 px, 30 classes) of each expert family at the tiny and small presets:
non-DP, DP-SGD with fedchest's exact per-sample gradients (torch.func vmap over whole samples), and DP-SGD
with Opacus's per-layer hooks (GradSampleModule) for comparison. Step time (best of 5 after a warm-up) and
peak resident memory, each configuration in a fresh process. DP models are the DP-compatible builds (group
norm) in every column, so the ratio isolates the cost of per-sample clipping."""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.common import record

CASES = {  # family -> (preset at tiny size, preset at small size, projection whose expert is that family)
    "resnet10t": ("tiny", "small", "PA"),
    "convnextv2": ("families-tiny", "families-small", "PA"),
    "swin": ("families-tiny", "families-small", "AP"),
    "cait": ("families-tiny", "families-small", "LAT"),
}
MODES = ("plain", "dp-vmap", "dp-opacus-hooks")
BATCH, SIZE, CLASSES = 32, 64, 30


def measure(preset: str, projection: str, mode: str) -> dict:
    """Runs in its own process: one expert as a whole model (every image routed to it)."""
    import torch

    from shared_models.device import limit_threads
    from shared_models.losses import AsymmetricLoss
    from shared_models.networks import PROJECTIONS, RoutedExperts, build_model
    from shared_models.privacy import clipped_gradient_sum

    limit_threads()
    torch.manual_seed(0)
    net = build_model(preset, CLASSES, image_size=SIZE, dp_compatible=True).experts[projection]
    model = RoutedExperts({p: net for p in PROJECTIONS}, CLASSES).train()
    x = torch.randn(BATCH, 1, SIZE, SIZE)
    p = torch.zeros(BATCH, dtype=torch.long)
    y = (torch.rand(BATCH, CLASSES) < 0.1).float()
    m = torch.ones(BATCH, CLASSES)
    loss_fn = AsymmetricLoss()
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if mode == "plain":
        def step():
            net.zero_grad()
            loss_fn(net(x), y, m).backward()
    elif mode == "dp-vmap":
        def step():
            clipped_gradient_sum(model, x, p, y, m, loss_fn, 1.0)
    else:
        from opacus import GradSampleModule

        try:
            gsm = GradSampleModule(net, loss_reduction="sum")
        except Exception as exc:  # noqa: BLE001 - reported as the result
            return {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"}

        def step():
            gsm.zero_grad()
            loss_fn(gsm(x), y, m).backward()  # ASL sums over the batch: per-sample grads are the sample's own
            grads = [q.grad_sample for q in net.parameters() if q.requires_grad]
            norms = torch.sqrt(sum(g.flatten(1).pow(2).sum(1) for g in grads))
            factor = (1.0 / (norms + 1e-6)).clamp(max=1.0)
            for q, g in zip([q for q in net.parameters() if q.requires_grad], grads):
                q.grad = torch.einsum("b,b...->...", factor, g)
    try:
        step()
        times = []
        for _ in range(5):
            t = time.perf_counter()
            step()
            times.append(time.perf_counter() - t)
    except Exception as exc:  # noqa: BLE001
        return {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"}
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"step_ms": 1000 * min(times), "peak_rss_mb": peak / 1024, "step_rss_mb": (peak - base_rss) / 1024,
            "params": sum(q.numel() for q in net.parameters())}


def run(out: Path) -> dict:
    results: dict = {}
    for family, (tiny, small, proj) in CASES.items():
        for size, preset in (("tiny", tiny), ("small", small)):
            row = {}
            for mode in MODES:
                code = (f"import json; from benchmarks.bench_dp_cost import measure; "
                        f"print(json.dumps(measure({preset!r}, {proj!r}, {mode!r})))")
                r = subprocess.run([sys.executable, "-W", "ignore", "-c", code], capture_output=True, text=True,
                                   cwd=Path(__file__).resolve().parent.parent, timeout=1200)
                row[mode] = json.loads(r.stdout.strip().splitlines()[-1]) if r.returncode == 0 else {
                    "error": r.stderr.strip().splitlines()[-1][:200]}
            plain = row["plain"].get("step_ms")
            for mode in MODES[1:]:
                if plain and "step_ms" in row[mode]:
                    row[mode]["x_plain"] = row[mode]["step_ms"] / plain
            results[f"{family}@{size}"] = row
            print(family, size, {k: {kk: round(vv, 2) if isinstance(vv, float) else vv for kk, vv in v.items()}
                                 for k, v in row.items()}, flush=True)
    headline = {}
    for key, row in results.items():
        for mode in MODES[1:]:
            headline[f"{key} {mode} (x non-DP step)"] = row[mode].get("x_plain", row[mode].get("error", "n/a"))
    return {"dp_cost": record({"per_family": results, "batch": BATCH, "image_size": SIZE, "headline": headline},
                              f"python -m benchmarks.run --only dp_cost (batch {BATCH}, {SIZE} px, "
                              f"FEDCHEST_THREADS default, fresh process per configuration)")}
