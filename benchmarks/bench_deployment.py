"""deployment: the same federated job (2 synthetic sites, 3 rounds, `tiny` preset, 64 px) run as a real
deployment on loopback (`fedchest deploy local`: SuperLink with TLS + SuperNode authentication, one SuperNode
process per site, `flwr run`) and as an in-process Flower simulation. Per round: wall time, the sites' own
compute (the slowest site's train + evaluate seconds, which they report), the overhead beyond it, and bytes
moved (model down to every site, updates up, as the registry records them)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
from sqlalchemy import create_engine, text

from benchmarks.common import record

SITES, ROUNDS, IMAGES, SIZE, PRESET = 2, 3, 200, 64, "tiny"


def _per_round(db: Path, ckpt_dir: Path) -> list[dict]:
    engine = create_engine(f"sqlite:///{db}")
    with engine.connect() as c:
        rounds = c.execute(text("SELECT round, started_at, finished_at FROM rounds ORDER BY round")).all()
        site_rows = c.execute(text("SELECT round, site, name, value FROM metrics WHERE class_name IS NULL AND "
                                   "site IS NOT NULL AND name IN ('train_seconds', 'eval_seconds', 'update_bytes') "
                                   "AND projection = 'all'")).all()
    engine.dispose()
    import torch

    model_bytes = sum(t.numel() * t.element_size() for t in
                      torch.load(sorted(ckpt_dir.glob("round-*.pt"))[0], weights_only=True)["state_dict"].values())
    out = []
    for rnd, start, end in rounds:
        wall = (np.datetime64(end) - np.datetime64(start)) / np.timedelta64(1, "s")
        per = {}
        for r, site, name, value in site_rows:
            if r == rnd:
                per.setdefault(site, {})[name] = value or 0.0
        compute = max(v.get("train_seconds", 0) for v in per.values()) + max(v.get("eval_seconds", 0) for v in per.values())
        up = sum(v.get("update_bytes", 0) for v in per.values())
        out.append({"round": rnd, "wall_s": float(wall), "site_compute_s": compute, "overhead_s": float(wall) - compute,
                    "bytes_down": model_bytes * len(per), "bytes_up": up})
    return out


def run(out: Path) -> dict:
    from server.demo import make_sites
    from server.deploy.local import deploy_local
    from server.simulation import run_in_process

    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    summary = deploy_local(out / "deploy", SITES, ROUNDS, IMAGES, SIZE, PRESET, local_epochs=1, seed=0)
    deploy_wall = time.perf_counter() - t0
    deployed = _per_round(out / "deploy" / "run" / "registry.db", out / "deploy" / "run" / "checkpoints")

    sites_dir = make_sites(out / "deploy", SITES, IMAGES, SIZE, 0)  # the same sites, reused
    sim_out = out / "simulation"
    cfg = {**summary["config"], "out-dir": str(sim_out), "sim-sites-dir": str(sites_dir), "run-name": "bench-sim"}
    t0 = time.perf_counter()
    run_in_process(cfg, num_supernodes=SITES, cpus_per_client=1.0)
    sim_wall = time.perf_counter() - t0
    simulated = _per_round(sim_out / "registry.db", sim_out / "checkpoints")

    def mean(rows, key, skip_first=True):
        use = rows[1:] if skip_first and len(rows) > 1 else rows
        return float(np.mean([r[key] for r in use]))

    headline = {
        "deployment: overhead per round beyond site compute (s, rounds 2-3)": mean(deployed, "overhead_s"),
        "simulation: overhead per round beyond site compute (s, rounds 2-3)": mean(simulated, "overhead_s"),
        "deployment: round wall (s, rounds 2-3)": mean(deployed, "wall_s"),
        "simulation: round wall (s, rounds 2-3)": mean(simulated, "wall_s"),
        "deployment: site compute per round (s)": mean(deployed, "site_compute_s"),
        "MB per round (down + up)": (deployed[-1]["bytes_down"] + deployed[-1]["bytes_up"]) / 1e6,
        "deployment: whole job incl. start-up (s)": deploy_wall,
        "simulation: whole job incl. Ray start-up (s)": sim_wall,
    }
    (out / "deployment-rounds.json").write_text(json.dumps({"deployed": deployed, "simulated": simulated}, indent=1))
    return {"deployment": record(
        {"deployed_rounds": deployed, "simulated_rounds": simulated, "headline": headline,
         "sites": SITES, "rounds": ROUNDS, "images_per_site": IMAGES, "image_size": SIZE, "preset": PRESET},
        f"python -m benchmarks.run --only deployment ({SITES} sites x {IMAGES} images, {ROUNDS} rounds, preset "
        f"{PRESET}, {SIZE} px; TLS + SuperNode auth on loopback vs in-process simulation)")}
