"""dp_cost: one training step (batch 32, 64 px, 30 classes) of each expert family at the tiny and small presets:
non-DP; DP-SGD with fedchest's vmap engine (torch.func over whole samples); DP-SGD with fedchest's ``auto``
engine (the per-layer engine with ghost norms where the family allows it, vmap otherwise: what sites run); and
DP-SGD with Opacus's per-layer hooks (GradSampleModule) for comparison. Step time (best of 8 after a warm-up) and
peak resident memory, each configuration in a fresh process; each DP step's ratio to the non-DP step is the
best of 8 DP steps over the best of 8 non-DP steps interleaved with them in that process (this VM's speed
drifts by 2x between processes). DP models are the DP-compatible builds (group
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
MODES = ("plain", "dp-vmap", "dp-auto", "dp-opacus-hooks")
BATCH, SIZE, CLASSES, REPEATS = 32, 64, 30, 8


def measure(preset: str, projection: str, mode: str) -> dict:
    """Runs in its own process: one expert as a whole model (every image routed to it)."""
    import torch

    from shared_models.device import limit_threads
    from shared_models.losses import AsymmetricLoss
    from shared_models.networks import PROJECTIONS, RoutedExperts, build_model
    from shared_models.privacy import clipped_gradient_sum, engine_for

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

    def plain_step():
        net.zero_grad()
        loss_fn(net(x), y, m).backward()

    if mode == "plain":
        step = plain_step
    elif mode in ("dp-vmap", "dp-auto"):
        engine = engine_for(model, 0, mode[3:])

        def step():
            clipped_gradient_sum(model, x, p, y, m, loss_fn, 1.0, engine=engine)
    else:
        from opacus import GradSampleModule

        try:
            gsm = GradSampleModule(net, loss_reduction="sum")
        except Exception as exc:  # noqa: BLE001 - reported as the result
            return {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"}

        def step():
            gsm.zero_grad()
            loss_fn(gsm(x), y, m).backward()  # per-sample grads scaled by 1/batch: same work, timing only
            grads = [q.grad_sample for q in net.parameters() if q.requires_grad]
            norms = torch.sqrt(sum(g.flatten(1).pow(2).sum(1) for g in grads))
            factor = (1.0 / (norms + 1e-6)).clamp(max=1.0)
            for q, g in zip([q for q in net.parameters() if q.requires_grad], grads):
                q.grad = torch.einsum("b,b...->...", factor, g)

        def plain_step():  # the same network with Opacus's hooks off
            gsm.disable_hooks()
            try:
                net.zero_grad()
                loss_fn(net(x), y, m).backward()
            finally:
                gsm.enable_hooks()
    def best(fn, times):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)

    try:
        step()
        times: list[float] = []
        plain_times: list[float] = []
        for _ in range(REPEATS):  # interleaved with the non-DP step: the ratio is measured under one load
            best(step, times)
            if mode != "plain":
                best(plain_step, plain_times)
    except Exception as exc:  # noqa: BLE001
        return {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"}
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out = {"step_ms": 1000 * min(times), "peak_rss_mb": peak / 1024, "step_rss_mb": (peak - base_rss) / 1024,
           "params": sum(q.numel() for q in net.parameters())}
    if plain_times:
        out["x_plain"] = min(times) / min(plain_times)
    if mode.startswith("dp-") and mode != "dp-opacus-hooks":
        out["engine"] = engine
    return out


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
            results[f"{family}@{size}"] = row
            print(family, size, {k: {kk: round(vv, 2) if isinstance(vv, float) else vv for kk, vv in v.items()}
                                 for k, v in row.items()}, flush=True)
    headline = {}
    for key, row in results.items():
        for mode in MODES[1:]:
            engine = f" [{row[mode]['engine']}]" if mode == "dp-auto" and "engine" in row[mode] else ""
            headline[f"{key} {mode}{engine} (x non-DP step)"] = row[mode].get("x_plain",
                                                                              row[mode].get("error", "n/a"))
    return {"dp_cost": record({"per_family": results, "batch": BATCH, "image_size": SIZE, "headline": headline},
                              f"python -m benchmarks.run --only dp_cost (batch {BATCH}, {SIZE} px, "
                              f"FEDCHEST_THREADS default, fresh process per configuration)")}
