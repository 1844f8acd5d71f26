"""accuracy + federation_tax: pooled (centralised) vs federated (Flower simulation) vs local-only models at
equal total compute on one synthetic consortium, and the wall-time overhead of federation.

Equal compute: every approach sees each training image rounds x local-epochs times.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import numpy as np

from benchmarks.common import concat, evaluate, record, site_configs, train_model
from client.index import load_split
from server.checkpoints import load_checkpoint
from server.demo import make_sites
from server.registry import Registry
from server.simulation import run_in_process
from shared_models.networks import build_model
from shared_models.ontology import load_label_set


def run(out: Path, sites: int = 3, images: int = 1000, image_size: int = 64, rounds: int = 10,
        local_epochs: int = 2, preset: str = "small", lr: float = 0.001) -> dict:
    command = (f"python -m benchmarks.run --only accuracy (sites={sites}, images={images}, size={image_size}, "
               f"rounds={rounds}, local_epochs={local_epochs}, preset={preset})")
    sites_dir = make_sites(out, sites, images, image_size, seed=0)
    cfgs = site_configs(sites_dir)
    num_classes = load_label_set().num_seen
    train = {c.name: load_split(c, "train") for c in cfgs}
    test = {c.name: load_split(c, "test") for c in cfgs}
    epochs = rounds * local_epochs

    # federated, through Flower's simulation runtime (the same apps as the demo)
    fed_dir = out / "federated"
    run_config = {
        "num-server-rounds": rounds, "local-epochs": local_epochs, "lr": lr, "batch-size": 32, "model-preset": preset,
        "image-size": image_size, "label-set": "cxrlt2026", "fraction-train": 1.0, "min-nodes": sites,
        "round-timeout": 3600.0, "out-dir": str(fed_dir), "sim-sites-dir": str(sites_dir), "run-name": "bench-accuracy",
        "seed": 0,
    }
    t0 = time.perf_counter()
    run_in_process(run_config, num_supernodes=sites)
    fed_wall = time.perf_counter() - t0
    summary = json.loads((fed_dir / "summary.json").read_text())
    fed_model = build_model(preset, num_classes)
    fed_model.load_state_dict(load_checkpoint(sorted((fed_dir / "checkpoints").glob("round-*.pt"))[-1])["state_dict"])

    # client-side work recorded by the sites themselves (registry rows for this run)
    con = sqlite3.connect(fed_dir / "registry.db")
    client_seconds = con.execute(
        "SELECT SUM(value) FROM metrics WHERE run_id = ? AND name IN ('train_seconds', 'eval_seconds')",
        (summary["run_id"],)).fetchone()[0]
    con.close()

    pooled_model, pooled_seconds = train_model(concat(list(train.values())), epochs, preset, num_classes, lr)
    local = {name: train_model(d, epochs, preset, num_classes, lr)[0] for name, d in train.items()}

    all_test = concat(list(test.values()))
    fed_map = evaluate(fed_model, all_test)["mAP"]
    pooled_map = evaluate(pooled_model, all_test)["mAP"]
    gains = {}
    for name, model in local.items():
        others = concat([d for n, d in test.items() if n != name])
        gains[name] = {"local_only_mAP_on_other_sites": evaluate(model, others)["mAP"],
                       "federated_mAP_on_same_data": evaluate(fed_model, others)["mAP"]}
    # references next to the federated run, for the dashboard (overview and cross-site generalisation)
    refs = [("pooled", None, "all", "mAP", pooled_map)]
    cross = {}
    for model_name, model in [("pooled", pooled_model), *((f"local-only:{n}", m) for n, m in local.items())]:
        cross[model_name] = {site: evaluate(model, d)["mAP"] for site, d in test.items()}
        refs += [(model_name, site, "all", "mAP", v) for site, v in cross[model_name].items()]
    refs.append(("local-only (mean over sites)", None, "all", "mAP",
                 float(np.mean([evaluate(m, all_test)["mAP"] for m in local.values()]))))
    Registry(f"sqlite:///{fed_dir / 'registry.db'}").add_references(summary["run_id"], refs)
    gain_mean = float(np.mean([g["federated_mAP_on_same_data"] - g["local_only_mAP_on_other_sites"] for g in gains.values()]))
    accuracy = record({
        "pooled_mAP": pooled_map, "federated_mAP": fed_map, "federated_over_pooled": fed_map / pooled_map,
        "prevalence_mAP": summary["baseline"]["prevalence_mAP"], "per_site_local_only": gains,
        "mean_gain_over_local_only_on_other_sites": gain_mean, "cross_site_mAP": cross, "epochs_equivalent": epochs,
        "headline": {"federated/pooled mAP": fed_map / pooled_map, "federated mAP": fed_map, "pooled mAP": pooled_map,
                     "gain over local-only (mAP, other sites)": gain_mean},
    }, command)
    tax = record({
        "simulation_wall_seconds": fed_wall, "strategy_wall_seconds": summary["wall_seconds"],
        "client_train_plus_evaluate_seconds": client_seconds, "centralised_train_seconds": pooled_seconds,
        "federation_tax": fed_wall / client_seconds,
        "headline": {"federation tax (sim wall / client work)": fed_wall / client_seconds,
                     "strategy-only tax": summary["wall_seconds"] / client_seconds},
    }, command)
    return {"accuracy": accuracy, "federation_tax": tax}
