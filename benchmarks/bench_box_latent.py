"""box_latent: the box head trained federated (Flower simulation) on the frozen routed experts of a federated run
over a synthetic consortium: macro-AUROC, Brier and ECE at BL-TTA N = 1 / 8 / 32 with bootstrap intervals, OOD
AUROC of the radius score per OOD kind, per-image latency per N; variants of the objective and the backbone."""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import torch

from benchmarks.common import record
from client.index import load_split
from client.predict import load_global_model
from client.site_config import load_site_config
from client.training import _batch
from consortium.sites import make_sites
from consortium.simulation import run_in_process
from shared_models.device import select_device

VARIANTS = {  # run-config changes from the defaults (box-loss bce, invariance weight 0.1, the run's experts)
    "default": {},
    "asl-loss": {"box-loss": "asl"},
    "no-invariance": {"box-invariance-weight": 0.0},
    "random-backbone": {"box-backbone-weights": ""},
}


def _run(cfg: dict, sites: int) -> tuple[dict, float]:
    t0 = time.perf_counter()
    run_in_process(cfg, num_supernodes=sites)
    return json.loads((Path(cfg["out-dir"]) / "summary.json").read_text()), time.perf_counter() - t0


def _figures(summary: dict, wall: float) -> dict:
    last = summary["box"]["last"]
    by_n = {n: {k: e[k] for k in ("mAUC", "mAUC_ci", "mAP", "brier", "brier_ci", "brier_raw", "ece", "ece_ci",
                                   "ece_raw")} for n, e in last["by_samples"].items()}
    return {"by_samples": by_n, "ood_auroc": last["ood"], "mAUC_by_round": summary["box"]["mAUC_by_round"],
            "temperature_by_site": last["temperature"], "site_similarity": last["similarity"], "wall_seconds": wall}


@torch.no_grad()
def _latency(checkpoint: Path, site_toml: Path, images: int = 40) -> dict:
    """Median seconds per image, one image at a time (backbone + head), per N; and the backbone alone."""
    model, _, _ = load_global_model(checkpoint)
    data = load_split(load_site_config(site_toml), "test")
    device = select_device()
    model.to(device).eval()
    out = {}
    for n in (0, 1, 8, 32):
        times = []
        for i in range(min(images, len(data))):
            x, p, _, _ = _batch(data, [i], device, model.num_classes)
            t0 = time.perf_counter()
            if n == 0:
                model.features(x, p)
            else:
                model(x, p, n).probabilities()
            times.append(time.perf_counter() - t0)
        out["backbone_only" if n == 0 else f"N={n}"] = statistics.median(times)
    return out


def _severity(checkpoint: Path, site_toml: Path) -> dict:
    """OOD AUROC of the radius score on one site's test split against the held-out imaging chain at increasing
    severity (0 = the edge of the training ranges, 1 = the OOD kind the runs report), and against the training
    augmentation's own chains (how often in-range shifts raise the score)."""
    from functools import partial

    from sklearn.metrics import roc_auc_score

    from client.boxlatent import box_predictions
    from shared_models.boxlatent.shifts import device_shift, held_out_device

    model, _, _ = load_global_model(checkpoint)
    data = load_split(load_site_config(site_toml), "test")
    device = select_device()
    ident = box_predictions(model, data, device, (1,)).ood_score()
    shifts = {"training-range": device_shift,  # the augmentation itself: a false-alarm reference
              **{str(s): partial(held_out_device, severity=s) for s in (0.0, 0.25, 0.5, 0.75, 1.0)}}
    out = {}
    for name, shift in shifts.items():
        shifted = box_predictions(model, data, device, (1,), shift=shift).ood_score()
        out[name] = float(roc_auc_score([0] * len(ident) + [1] * len(shifted), [*ident, *shifted]))
    return out


def run(work: Path, sites: int = 3, images: int = 1000, rounds: int = 6, box_rounds: int = 5) -> dict:
    sites_dir = make_sites(work, sites, images, 64, 0)
    common = {"model-preset": "small", "image-size": 64, "label-set": "cxrlt2026", "min-nodes": sites,
              "round-timeout": 3600.0, "sim-sites-dir": str(sites_dir), "seed": 0}
    main, main_wall = _run({**common, "num-server-rounds": rounds, "local-epochs": 2, "lr": 0.001, "batch-size": 32,
                            "out-dir": str(work / "experts")}, sites)
    backbone = sorted(Path(main["checkpoints"]).glob("round-*.pt"))[-1]
    box = {**common, "num-server-rounds": box_rounds, "local-epochs": 2, "lr": 0.003, "batch-size": 64,
           "box-latent": True, "box-backbone-weights": str(backbone)}
    variants, default_ckpt = {}, None
    for name, extra in VARIANTS.items():
        summary, wall = _run({**box, **extra, "out-dir": str(work / f"box-{name}")}, sites)
        variants[name] = _figures(summary, wall)
        if name == "default":
            default_ckpt = sorted(Path(summary["checkpoints"]).glob("round-*.pt"))[-1]
    first_site = sorted(sites_dir.glob("*/site.toml"))[0]
    latency = _latency(default_ckpt, first_site)
    severity = _severity(default_ckpt, first_site)
    d = variants["default"]["by_samples"]
    figures = {
        "setup": f"{sites} synthetic sites x {images} images, 64 px, preset small; backbone = the routed experts after "
                 f"{rounds} federated rounds (pooled mAUC {main['rounds'][-1]['pooled']['mAUC']:.3f}), frozen; box "
                 f"head {box_rounds} rounds x 2 local epochs",
        "experts_run": {"pooled": main["rounds"][-1]["pooled"], "wall_seconds": main_wall},
        "variants": variants, "latency_seconds_per_image": latency,
        "device_shift_severity_ood_auroc": {"site": first_site.parent.name, "by_severity": severity},
        "headline": {
            **{f"mAUC N={n}": d[n]["mAUC"] for n in ("1", "8", "32") if n in d},
            **{f"Brier N={n} (temperature)": d[n]["brier"] for n in ("1", "8", "32") if n in d},
            "ECE N=8 (temperature)": d["8"]["ece"], "ECE N=8 raw": d["8"]["ece_raw"],
            **{f"OOD AUROC {k}": v["auroc"] for k, v in variants["default"]["ood_auroc"].items()},
            **{f"latency {k} (s/image)": v for k, v in latency.items()},
            **{f"OOD AUROC device severity {k} (one site)": v for k, v in severity.items()},
        },
    }
    return {"box_latent": record(figures, "make bench (python -m benchmarks.run --only box_latent)")}
