"""robust: five synthetic sites, one of them malicious (its update sign-flipped and scaled, or replaced by scaled
noise, through benchmarks/attacks.py); the pooled mAP after the last round under each robust aggregation rule, against
the clean run and plain (group-wise) FedAvg under the same attack. The rules run with the norm bound off, so that
each is measured alone; the default configuration (no rule, norm bound 10) is its own row."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from benchmarks.common import record
from consortium.sites import make_sites
from consortium.simulation import SERVER_APP, run_in_process
from server.robust import RULES

ATTACKS = {"sign-flip": "sign-flip:2:4", "noise": "noise:2:10"}


def _run(cfg: dict, attack: str) -> dict:
    os.environ["FEDCHEST_ATTACK"] = attack
    t0 = time.perf_counter()
    try:
        run_in_process(cfg, num_supernodes=5, apps=(SERVER_APP, "benchmarks.attacks:app"))
    finally:
        os.environ.pop("FEDCHEST_ATTACK", None)
    summary = json.loads((Path(cfg["out-dir"]) / "summary.json").read_text())
    pooled = summary["rounds"][-1]["pooled"]
    return {"mAP": pooled["mAP"], "mAUC": pooled["mAUC"], "wall_seconds": time.perf_counter() - t0,
            "mAP_by_round": [r["pooled"]["mAP"] for r in summary["rounds"]]}


def run(work: Path, images: int = 400, rounds: int = 4) -> dict:
    sites_dir = make_sites(work, 5, images, 32, 0)
    attacker = sorted(sites_dir.glob("*/site.toml"))[2].parent.name
    base = {"num-server-rounds": rounds, "local-epochs": 1, "lr": 0.002, "batch-size": 32, "model-preset": "tiny",
            "image-size": 32, "min-nodes": 5, "sim-sites-dir": str(sites_dir), "round-timeout": 1800.0, "seed": 0}
    results = {"clean": _run({**base, "out-dir": str(work / "clean")}, "")}
    for name, attack in ATTACKS.items():
        results[name] = {"none (norm bound 10, default)": _run({**base, "out-dir": str(work / f"{name}-default")},
                                                               attack)}
        for rule in RULES:
            cfg = {**base, "out-dir": str(work / f"{name}-{rule}"), "robust-aggregation": rule, "norm-bound": 0.0}
            results[name][rule] = _run(cfg, attack)
    clean = results["clean"]["mAP"]
    figures = {
        "setup": f"5 synthetic sites x {images} images, 32 px, preset tiny, {rounds} rounds x 1 local epoch; site "
                 f"{attacker} (partition 2) malicious: sign-flip = global - 4 x its update; noise = global + N(0, "
                 "(10 x std of its update)^2) per tensor. Rules are per parameter group, norm bound off unless said.",
        "results": results,
        "headline": {"clean mAP (FedAvg)": clean,
                     **{f"{a} {r} mAP": results[a][r]["mAP"] for a in ATTACKS for r in results[a]}},
    }
    return {"robust": record(figures, "make bench (python -m benchmarks.run --only robust)")}
