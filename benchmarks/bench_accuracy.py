"""accuracy + federation_tax: pooled (centralised) vs federated (Flower simulation) vs local-only models at
equal total compute on one synthetic consortium, and the wall-time overhead of federation.

Equal compute: every approach sees each training image rounds x local-epochs times (equal passes per image, not
equal optimiser steps: a local-only model takes about 1/sites of the pooled model's steps).
The federation tax is each round's interval (end of the round before to its own end) over the slowest site's own
train + evaluate seconds in that round (server/deploy/overhead.py): sites train in parallel, so the slowest one
bounds the round. Each seed makes its own consortium (synthesis seed), initialisation and run seed.

The federated run uses the ServerApp's default strategy (server/server_app.py DEFAULTS) plus ``options``
(``--param options="fedbn=true,lr-schedule=cosine"``, run-config keys); the pooled and local-only models follow
the same learning-rate schedule per epoch (its round = epoch // local_epochs + 1). With FedBN each site's test
images are scored by the global model under that site's own normalisation layers (its work dir), as the federated
evaluation does; without, by the global model.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import numpy as np

from benchmarks.common import concat, evaluate, fmt_interval, record, seed_interval, site_configs, train_model
from client.training import predict
from shared_models.device import select_device
from shared_models.metrics import per_class_metrics, summarise
from client import fedbn
from client.index import load_split
from server.checkpoints import load_checkpoint
from server.deploy.overhead import round_overheads
from consortium.sites import make_sites
from server.registry import Registry
from consortium.simulation import run_in_process
from server.schedule import round_lr
from server.server_app import DEFAULTS
from shared_models.networks import build_model
from shared_models.ontology import load_label_set


def parse_options(text: str) -> dict:
    """``"fedbn=true,lr-schedule=cosine"`` as run-config values, each typed by the ServerApp's default."""
    out = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or key not in DEFAULTS:
            raise ValueError(f"accuracy options: {item!r} is not KEY=VALUE with a run-config KEY")
        default = DEFAULTS[key]
        out[key] = (value.lower() in ("1", "true", "yes")) if isinstance(default, bool) else type(default)(value)
    return out


def federated(run_config: dict, cfgs: list, num_classes: int) -> tuple[dict, dict]:
    """Run the federation; returns its summary and, per site, the model that site runs: the last global model,
    under FedBN with the site's own normalisation layers (kept in its work dir, client/fedbn.py)."""
    fed_dir = Path(run_config["out-dir"])
    run_in_process(run_config, num_supernodes=len(cfgs))
    summary = json.loads((fed_dir / "summary.json").read_text())
    global_state = load_checkpoint(sorted((fed_dir / "checkpoints").glob("round-*.pt"))[-1])["state_dict"]
    models = {}
    for c in cfgs:
        models[c.name] = build_model(str(run_config["model-preset"]), num_classes,
                                     image_size=int(run_config["image-size"]))
        models[c.name].load_state_dict(global_state)
        if bool({**DEFAULTS, **run_config}["fedbn"]) and not fedbn.restore(models[c.name], c, summary["run_id"]):
            raise RuntimeError(f"accuracy: a fedbn run, but {c.name} kept no normalisation layers")
    return summary, models


def map_on(models: dict, test: dict, names: list[str], num_classes: int) -> float:
    """mAP over these sites' test images, each scored by its site's model."""
    probs = np.concatenate([predict(models[n], test[n], select_device())[0] for n in names])
    data = concat([test[n] for n in names])
    return summarise(per_class_metrics(data.targets[:, :num_classes], probs, data.mask[:, :num_classes]))["mAP"]


def one_seed(out: Path, seed: int, sites: int, images: int, image_size: int, rounds: int, local_epochs: int,
             preset: str, lr: float, options: dict | None = None, arms: dict | None = None) -> tuple[dict, dict]:
    """The accuracy and federation-tax figures of one seed."""
    sites_dir = make_sites(out, sites, images, image_size, seed=seed)
    cfgs = site_configs(sites_dir)
    num_classes = load_label_set().num_seen
    train = {c.name: load_split(c, "train") for c in cfgs}
    test = {c.name: load_split(c, "test") for c in cfgs}
    epochs = rounds * local_epochs

    # federated, through Flower's simulation runtime (the same apps as the demo)
    base = {
        "num-server-rounds": rounds, "local-epochs": local_epochs, "lr": lr, "batch-size": 32, "model-preset": preset,
        "image-size": image_size, "label-set": "cxrlt2026", "fraction-train": 1.0, "min-nodes": sites,
        "round-timeout": 3600.0, "sim-sites-dir": str(sites_dir), "run-name": "bench-accuracy", "seed": seed,
    }
    fed_dir = out / "federated"
    run_config = {**base, "out-dir": str(fed_dir), **(options or {})}
    cfg = {**DEFAULTS, **run_config}
    t0 = time.perf_counter()
    summary, fed_models = federated(run_config, cfgs, num_classes)
    fed_wall = time.perf_counter() - t0
    # each round's interval against its slowest site's own train + evaluate seconds (registry rows of this run)
    per_round = round_overheads(f"sqlite:///{fed_dir / 'registry.db'}", summary["run_id"])
    if len(per_round) < 2:
        raise RuntimeError(f"accuracy: {len(per_round)} round(s) with the sites' compute seconds in "
                           f"{fed_dir / 'registry.db'}; the federation tax needs rounds 2+")
    later = per_round[1:]

    def lr_at(epoch: int) -> float:
        return round_lr(lr, str(cfg["lr-schedule"]), epoch // local_epochs + 1, rounds, float(cfg["lr-min-factor"]))

    pooled_model, pooled_seconds = train_model(concat(list(train.values())), epochs, preset, num_classes, lr, seed,
                                               lr_at, image_size)
    local = {name: train_model(d, epochs, preset, num_classes, lr, seed, lr_at, image_size)[0]
             for name, d in train.items()}

    def fed_map_on(names: list[str]) -> float:
        return map_on(fed_models, test, names, num_classes)

    all_test = concat(list(test.values()))
    fed_map = fed_map_on(list(test))
    pooled_map = evaluate(pooled_model, all_test)["mAP"]
    gains = {}
    for name, model in local.items():
        others = concat([d for n, d in test.items() if n != name])
        gains[name] = {"local_only_mAP_on_other_sites": evaluate(model, others)["mAP"],
                       "federated_mAP_on_same_data": fed_map_on([n for n in test if n != name])}
    # references next to the federated run, for the dashboard (overview and cross-site generalisation)
    refs = [("pooled", None, "all", "mAP", pooled_map)]
    cross = {}
    for model_name, model in [("pooled", pooled_model), *((f"local-only:{n}", m) for n, m in local.items())]:
        cross[model_name] = {site: evaluate(model, d)["mAP"] for site, d in test.items()}
        refs += [(model_name, site, "all", "mAP", v) for site, v in cross[model_name].items()]
    refs.append(("local-only (mean over sites)", None, "all", "mAP",
                 float(np.mean([evaluate(m, all_test)["mAP"] for m in local.values()]))))
    Registry(f"sqlite:///{fed_dir / 'registry.db'}").add_references(summary["run_id"], refs)
    gain_mean = float(np.mean([g["federated_mAP_on_same_data"] - g["local_only_mAP_on_other_sites"]
                               for g in gains.values()]))
    accuracy = {
        "pooled_mAP": pooled_map, "federated_mAP": fed_map, "federated_over_pooled": fed_map / pooled_map,
        "prevalence_mAP": summary["baseline"]["prevalence_mAP"], "per_site_local_only": gains,
        "mean_gain_over_local_only_on_other_sites": gain_mean, "cross_site_mAP": cross,
    }
    if arms:  # other strategies on the same sites, seed and budget, against the same pooled model
        accuracy["arms"] = {}
        for i, (name, arm) in enumerate(arms.items()):
            arm_summary, arm_models = federated({**base, "out-dir": str(out / f"federated-arm{i}"), **arm}, cfgs,
                                                num_classes)
            arm_map = map_on(arm_models, test, list(test), num_classes)
            accuracy["arms"][name] = {"federated_mAP": arm_map, "federated_over_pooled": arm_map / pooled_map,
                                      "last_round_federated_eval_mAP": arm_summary["rounds"][-1]["pooled"]["mAP"]}
            print(f"accuracy seed {seed}: arm {name}: federated/pooled {arm_map / pooled_map:.3f}", flush=True)
    tax = {
        "federation_tax": statistics.median(r.interval / r.compute for r in later),
        "round_interval_over_slowest_compute_whole_run": sum(r.interval for r in per_round) / sum(
            r.compute for r in per_round),
        "median_overhead_seconds_rounds_2plus": statistics.median(r.overhead for r in later),
        "per_round": [{"round": r.round, "interval_s": r.interval, "slowest_site_compute_s": r.compute,
                       "slowest_site": r.site} for r in per_round],
        "simulation_wall_seconds": fed_wall, "strategy_wall_seconds": summary["wall_seconds"],
        "centralised_train_seconds": pooled_seconds,
    }
    return accuracy, tax


STRATEGY_KEYS = ("aggregation", "server-optimizer", "server-lr", "server-momentum", "proximal-mu", "lr-schedule",
                 "lr-min-factor", "fedbn")
ACC_KEYS = ("federated_over_pooled", "federated_mAP", "pooled_mAP", "mean_gain_over_local_only_on_other_sites")
TAX_KEYS = ("federation_tax", "round_interval_over_slowest_compute_whole_run", "median_overhead_seconds_rounds_2plus")


def run(out: Path, sites: int = 3, images: int = 1000, image_size: int = 64, rounds: int = 10,
        local_epochs: int = 2, preset: str = "small", lr: float = 0.001, options: str = "", arms: str = "",
        seeds: tuple[int, ...] = (0,)) -> dict:
    """``options``: run-config overrides of the federated run ("key=value,key=value"); ``arms``: other federated
    strategies measured beside it on the same sites and budget, separated by ";" (e.g. "fedbn=true;
    server-optimizer=fedavgm,server-momentum=0.5"), each against the same pooled model."""
    opts = parse_options(options)
    arm_opts = {a.strip(): parse_options(a) for a in arms.split(";") if a.strip()}
    strategy = {k: opts.get(k, DEFAULTS[k]) for k in STRATEGY_KEYS}
    command = (f"python -m benchmarks.run --only accuracy --seeds {' '.join(map(str, seeds))} (sites={sites}, "
               f"images={images}, size={image_size}, rounds={rounds}, local_epochs={local_epochs}, preset={preset}"
               + (f", options={options}" if options else "") + (f", arms={arms}" if arms else "") + ")")
    acc, tax = {}, {}
    for seed in seeds:
        t0 = time.perf_counter()
        acc[seed], tax[seed] = one_seed(out / f"seed-{seed}", seed, sites, images, image_size, rounds, local_epochs,
                                        preset, lr, opts, arm_opts)
        print(f"accuracy seed {seed}: {time.perf_counter() - t0:.0f}s, federated/pooled "
              f"{acc[seed]['federated_over_pooled']:.3f}, federation tax {tax[seed]['federation_tax']:.2f}", flush=True)
    a = {k: seed_interval([acc[s][k] for s in seeds]) for k in ACC_KEYS}
    t = {k: seed_interval([tax[s][k] for s in seeds]) for k in TAX_KEYS}
    epochs = rounds * local_epochs
    budget = (f"federated: {rounds} rounds x {local_epochs} local epochs at each site (batch 32); pooled: {epochs} "
              f"epochs over all sites' training images; local-only: {epochs} epochs over its own site's (equal passes "
              f"per image, so about 1/{sites} of the pooled optimiser steps)")
    accuracy = record({
        **{k: a[k]["mean"] for k in ACC_KEYS}, "intervals": a, "by_seed": {str(s): acc[s] for s in seeds},
        "epochs_equivalent": epochs, "compute_budget": budget, "strategy": strategy,
        **({"arms": {name: {k: seed_interval([acc[s]["arms"][name][k] for s in seeds])
                            for k in ("federated_over_pooled", "federated_mAP")} for name in arm_opts}}
           if arm_opts else {}),
        "headline": {"federated/pooled mAP": fmt_interval(a["federated_over_pooled"]),
                     "federated mAP": fmt_interval(a["federated_mAP"]), "pooled mAP": fmt_interval(a["pooled_mAP"]),
                     "gain over local-only (mAP, other sites)":
                         fmt_interval(a["mean_gain_over_local_only_on_other_sites"]),
                     **{f"arm {name}: federated/pooled mAP": fmt_interval(seed_interval(
                         [acc[s]["arms"][name]["federated_over_pooled"] for s in seeds])) for name in arm_opts}},
    }, command, seeds=list(seeds))
    fed_tax = record({
        **{k: t[k]["mean"] for k in TAX_KEYS}, "intervals": t, "by_seed": {str(s): tax[s] for s in seeds},
        "definition": ("federation_tax: median over rounds 2+ of (round interval / slowest site's train + evaluate "
                       "seconds in that round), server/deploy/overhead.py; was simulation wall / SUM of the sites' "
                       "compute until this record"),
        "headline": {"federation tax (round interval / slowest site's compute, median rounds 2+)":
                         fmt_interval(t["federation_tax"], 2),
                     "whole run: round intervals / slowest sites' compute":
                         fmt_interval(t["round_interval_over_slowest_compute_whole_run"], 2),
                     "overhead per round beyond the slowest site (s, median rounds 2+)":
                         fmt_interval(t["median_overhead_seconds_rounds_2plus"], 2)},
    }, command, seeds=list(seeds))
    return {"accuracy": accuracy, "federation_tax": fed_tax}
