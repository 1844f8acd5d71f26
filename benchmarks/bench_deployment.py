"""deployment: the same federated job (3 synthetic sites x 120 images, 5 rounds, `tiny` preset, 32 px) run as a
real deployment on loopback (`fedchest deploy local`: SuperLink with TLS + SuperNode authentication, one SuperNode
per site, `flwr run`) and as an in-process Flower simulation, side by side in one run. Per round: the interval, the
slowest site's own compute (train + evaluate seconds it reports), the overhead beyond it (server/deploy/overhead.py,
what `fedchest deploy local` prints), the phase breakdown (server/timeline.py, the registry's phase.* rows), and
bytes moved. Then a soak: 10 SuperNodes x 20 rounds, counting HTTP 5xx answers in the SuperLink's log, retries in
the ServerApp's and lost rounds."""

from __future__ import annotations

import json
import statistics
import time
from datetime import timezone
from pathlib import Path

from sqlalchemy import create_engine, text

from benchmarks.common import record

SITES, ROUNDS, IMAGES, SIZE, PRESET = 3, 5, 120, 32, "tiny"
SOAK_SITES, SOAK_ROUNDS, SOAK_IMAGES = 10, 20, 60


def _phases(db_url: str, run_id: str) -> dict[str, dict[str, float]]:
    """Median over rounds 2+ of each phase of the slowest site's reply per stage, and of the server's own phases."""
    engine = create_engine(db_url)
    with engine.connect() as c:
        rows = c.execute(text("SELECT round, site, name, value FROM metrics WHERE run_id = :r AND name LIKE 'phase.%'"),
                         {"r": run_id}).all()
    engine.dispose()
    per: dict[tuple[str, int, str | None], dict[str, float]] = {}
    for rnd, site, name, value in rows:
        _, stage, phase = name.split(".", 2)
        per.setdefault((stage, rnd, site), {})[phase] = value or 0.0
    out: dict[str, dict[str, list[float]]] = {}
    for stage in {k[0] for k in per}:
        for rnd in sorted({k[1] for k in per if k[0] == stage and k[1] > 1}):
            sites = {k[2]: v for k, v in per.items() if k[0] == stage and k[1] == rnd and k[2] is not None}
            if sites:
                slowest = max(sites.values(), key=lambda v: sum(v.values()))
                for phase, v in slowest.items():
                    out.setdefault(stage, {}).setdefault(phase, []).append(v)
            server = per.get((stage, rnd, None), {})
            for phase, v in server.items():
                out.setdefault(f"server {stage}", {}).setdefault(phase, []).append(v)
    return {stage: {p: round(statistics.median(v), 3) for p, v in phases.items()} for stage, phases in out.items()}


def _rounds(summary: dict) -> list[dict]:
    from server.deploy.overhead import round_overheads

    return [{"round": r.round, "interval_s": round(r.interval, 3), "site_compute_s": round(r.compute, 3),
             "overhead_s": round(r.overhead, 3)} for r in round_overheads(summary["db_url"], summary["run_id"])]


def _first_round_start(summary: dict) -> float:
    """Unix time the run's first round started (the registry keeps naive UTC times)."""
    from sqlalchemy import func, select

    from server.registry.models import Round

    engine = create_engine(summary["db_url"])
    with engine.connect() as c:
        start = c.execute(select(func.min(Round.started_at)).where(Round.run_id == summary["run_id"])).scalar()
    engine.dispose()
    return start.replace(tzinfo=timezone.utc).timestamp() if start else float("nan")


def _median(rows: list[dict], key: str) -> float:
    use = rows[1:] if len(rows) > 1 else rows
    return round(statistics.median(r[key] for r in use), 3)


def _deployed(out: Path, sites: int, rounds: int, images: int) -> tuple[dict, float, float]:
    from consortium.deploy_local import deploy_local

    called = time.time()
    summary = deploy_local(out, sites, rounds, images, SIZE, PRESET, local_epochs=1, seed=0)
    return summary, time.time() - called, _first_round_start(summary) - called


def run(out: Path) -> dict:
    from consortium.sites import make_sites
    from consortium.simulation import run_in_process

    out.mkdir(parents=True, exist_ok=True)
    summary, deploy_wall, first_start = _deployed(out / "deploy", SITES, ROUNDS, IMAGES)
    deployed = _rounds(summary)
    sites_dir = make_sites(out / "deploy", SITES, IMAGES, SIZE, 0)  # the same sites, reused
    sim_out = out / "simulation"
    cfg = {**summary["config"], "out-dir": str(sim_out), "sim-sites-dir": str(sites_dir), "run-name": "bench-sim"}
    t0 = time.time()
    run_in_process(cfg, num_supernodes=SITES, cpus_per_client=1.0)
    sim_wall = time.time() - t0
    sim_summary = json.loads((sim_out / "summary.json").read_text())
    simulated = _rounds(sim_summary)

    soak, soak_wall, _ = _deployed(out / "soak", SOAK_SITES, SOAK_ROUNDS, SOAK_IMAGES)
    faults = soak["deploy"]["faults"]
    soak_fig = {"sites": SOAK_SITES, "rounds": SOAK_ROUNDS, "images_per_site": SOAK_IMAGES,
                "rounds_completed": soak["rounds_completed"], "lost_rounds": SOAK_ROUNDS - soak["rounds_completed"],
                "site_misses (dropout, straggler, error or skipped-round events)": faults["site_misses"],
                "median_overhead_s": soak["deploy"]["median_overhead_seconds"], "wall_s": round(soak_wall, 1),
                **{k: v for k, v in faults.items() if k != "site_misses"}}

    headline = {
        "deployment: median overhead per round beyond the slowest site's compute (s, rounds 2+)":
            _median(deployed, "overhead_s"),
        "simulation: median overhead per round beyond the slowest site's compute (s, rounds 2+)":
            _median(simulated, "overhead_s"),
        "deployment: median round interval (s, rounds 2+)": _median(deployed, "interval_s"),
        "simulation: median round interval (s, rounds 2+)": _median(simulated, "interval_s"),
        "deployment: first round starts after `deploy local` is called (s, site synthesis included)":
            round(first_start, 1),
        "deployment: whole job (s)": round(deploy_wall, 1),
        "simulation: whole job incl. Ray start-up (s)": round(sim_wall, 1),
        "soak: lost rounds / HTTP 5xx / ServerApp retries": f"{soak_fig['lost_rounds']} / "
                                                            f"{soak_fig['http_5xx_answers']} / "
                                                           f"{soak_fig['serverapp_retries']}",
    }
    return {"deployment": record(
        {"headline": headline, "deployed_rounds": deployed, "simulated_rounds": simulated,
         "deployed_phases_median_s": _phases(summary["db_url"], summary["run_id"]),
         "simulated_phases_median_s": _phases(sim_summary["db_url"], sim_summary["run_id"]),
         "deployed_logs": summary["deploy"]["faults"], "soak": soak_fig,
         "sites": SITES, "rounds": ROUNDS, "images_per_site": IMAGES, "image_size": SIZE, "preset": PRESET},
        f"python -m benchmarks.run --only deployment ({SITES} sites x {IMAGES} images, {ROUNDS} rounds, preset "
        f"{PRESET}, {SIZE} px; TLS + SuperNode auth on loopback vs in-process simulation; soak {SOAK_SITES} "
        f"SuperNodes x {SOAK_ROUNDS} rounds x {SOAK_IMAGES} images)", seeds=[0])}
