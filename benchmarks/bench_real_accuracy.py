"""real_accuracy: federated vs pooled vs local-only on the real NIH partition of `fedchest demo --real`.

The three real sites (``consortium/real_demo.py``: outpatient PA, ICU-like AP, mixed; split by patient, the demo's
partition) hold each site's salted patient-level test split (25 %), the held-out set of every approach, so all of
them are scored on the same held-out patients. A seed fixes the sites' split salts (``16 x seed + site index``,
written before indexing: ``client.site_config.pin_split_salt``), the initialisation and the batch order, so a
seed is reproducible and the interval over seeds covers which patients are held out as well as training noise:

- federated: the ServerApp and ClientApps under Flower's simulation runtime, ``rounds`` x ``local_epochs``;
- pooled: one model trained centrally on the union of the three sites' training splits for rounds x local_epochs
  epochs;
- local-only: each site alone on its own training split for rounds x local_epochs epochs, each of the three
  models scored on all the held-out patients, then averaged.

Equal compute (the same recipe: preset, AdamW lr / weight decay, loss, augmentation, batch 32): every approach
passes over each training image rounds x local_epochs times, so the optimiser steps are equal in total up to the
last partial batch of each pass: federated, the sum over sites and rounds of local_epochs x ceil(n_site / 32);
local-only the same sum over its three models (each model only its own site's share); pooled rounds x
local_epochs x ceil(N / 32) (at most 2 fewer per pass). The record lists each count per seed.

Figures: mean AUROC over the classes with >= 5 positives among the pooled held-out images (NIH findings through
the ontology's synonym map; masked classes never count) and mAP over the same classes; mean over seeds with a
95 % t-interval. ``federated_over_pooled`` is the mAP ratio (as in ``accuracy`` and issue 26's criterion),
``federated_over_pooled_mAUC`` the AUROC one. Small real data (688 images at 64 px): wide intervals, far from
published NIH figures.

Budget: the demo's recipe (consortium/real_demo.py REAL_RECIPE) at 5 rounds x 2 local epochs (10 passes) instead of
its 15 x 2, for all three arms alike: on the shared 2-core machine under a load of 12-16 from other work, one seed
at 10 rounds was on course for about 45 min (federated 6 min, pooled 18 min, local-only at 0.1 batches/s: two
torch threads, see CENTRAL_THREADS), so three seeds would not have fitted in 2 h.

Each seed's result is kept in ``WORK/seed-N/result.json`` with the commit and parameters it measured; a later run
with the same ``--work``, the same commit (clean tree) and the same parameters reuses it instead of training again
(the record lists the reused seeds).
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np

from benchmarks.common import (concat, fmt_interval, head_commit, record, seed_interval, site_configs,
                               tree_changes)
from client.index import SiteData, load_split
from client.site_config import pin_split_salt
from client.training import predict, train_local
from server.checkpoints import load_checkpoint
from consortium.real_demo import REAL_ENV, REAL_STRATEGY, RealDataMissing, make_real_sites
from consortium.simulation import CLIENT_APP, SERVER_APP, run_in_process
from server.schedule import round_lr
from shared_models.device import select_device
from shared_models.metrics import per_class_metrics
from shared_models.networks import build_model
from shared_models.ontology import load_label_set

MIN_POSITIVES = 5
BATCH = 32
# Pooled and local-only train on one torch thread, as each simulated site does (FEDCHEST_THREADS=1). On the shared
# 2-core machine under a load of 11-19, tiny-generalist at 64 px trained at 0.5-0.9 batches/s on one thread and
# 0.07-0.11 on two (the threads wait on each other whenever one is descheduled): two threads made pooled crawl.
CENTRAL_THREADS = 1
ARMS = ("federated", "pooled", "local_only")
FIGURES = ("federated_over_pooled", "federated_over_pooled_mAUC", *(f"{a}_{m}" for a in ARMS for m in ("mAP", "mAUC")))


def scores(model, data: SiteData) -> dict[str, float]:
    """Mean AUROC over the classes with >= MIN_POSITIVES annotated positives, and mAP over the same classes."""
    c = model.num_classes
    probs, _ = predict(model, data, select_device())
    m = per_class_metrics(data.targets[:, :c], probs, data.mask[:, :c])
    sel = m["n_pos"] >= MIN_POSITIVES
    return {"mAUC": float(np.nanmean(m["auroc"][sel])), "mAP": float(np.nanmean(m["ap"][sel])),
            "classes": int(sel.sum())}


def steps(n: int, passes: int) -> int:
    """Optimiser steps of ``passes`` epochs over n images in batches of 32 (train_local skips a last batch of 1)."""
    return passes * sum(1 for s in range(0, n, BATCH) if n - s >= 2)


def train(data: SiteData, epochs: int, preset: str, num_classes: int, image_size: int, seed: int,
          recipe: dict) -> object:
    """One model trained centrally with the sites' own ``train_local``, on CENTRAL_THREADS torch thread(s)."""
    import torch

    torch.manual_seed(seed)
    model = build_model(preset, num_classes, image_size=image_size)
    before = torch.get_num_threads()
    torch.set_num_threads(CENTRAL_THREADS)
    schedule = str(recipe.get("lr-schedule", "constant"))
    try:
        if schedule == "constant":
            train_local(model, data, epochs, recipe["lr"], BATCH, select_device(), seed=seed,
                        weight_decay=recipe["weight-decay"], loss=recipe["loss"])
        else:  # round by round as a site trains: a fresh AdamW per round at the round's rate
            rounds, local_epochs = recipe["rounds"], recipe["local-epochs"]
            for r in range(1, rounds + 1):
                lr = round_lr(recipe["lr"], schedule, r, rounds, float(recipe.get("lr-min-factor", 0.0)))
                train_local(model, data, local_epochs, lr, BATCH, select_device(), seed=seed * 1000 + r,
                            weight_decay=recipe["weight-decay"], loss=recipe["loss"])
    finally:
        torch.set_num_threads(before)
    return model


def one_seed(out: Path, seed: int, recipe: dict, image_size: int) -> dict:
    """Federated, pooled and local-only on the sites of this seed's split salts; scores on their held-out patients."""
    rounds, local_epochs, preset = recipe["rounds"], recipe["local-epochs"], recipe["preset"]
    sites_dir = make_real_sites(out, image_size, seed=0, pin_salt=pin_split_salt, salt_key=seed)
    cfgs = site_configs(sites_dir)
    num_classes = load_label_set().num_seen
    tr = {c.name: load_split(c, "train") for c in cfgs}
    held_out = concat([load_split(c, "test") for c in cfgs])
    epochs = rounds * local_epochs
    wall: dict[str, float] = {}

    t0 = time.perf_counter()
    fed_dir = out / "federated"
    shutil.rmtree(fed_dir, ignore_errors=True)  # never score a checkpoint an interrupted run left
    run_config = {
        "num-server-rounds": rounds, "local-epochs": local_epochs, "lr": recipe["lr"], "batch-size": BATCH,
        "weight-decay": recipe["weight-decay"], "loss": recipe["loss"], "model-preset": preset,
        "image-size": image_size, "label-set": "cxrlt2026", "fraction-train": 1.0, "min-nodes": len(cfgs),
        "round-timeout": 3600.0, "out-dir": str(fed_dir), "sim-sites-dir": str(sites_dir),
        "run-name": f"bench-real-accuracy-seed{seed}", "seed": seed,
        **{k: recipe[k] for k in REAL_STRATEGY},
    }
    run_in_process(run_config, num_supernodes=len(cfgs), cpus_per_client=1.0, apps=(SERVER_APP, CLIENT_APP))
    if not (fed_dir / "summary.json").exists():
        raise RuntimeError(f"real_accuracy: the federated run of seed {seed} wrote no summary in {fed_dir}")
    fed = build_model(preset, num_classes, image_size=image_size)
    fed.load_state_dict(load_checkpoint(sorted((fed_dir / "checkpoints").glob("round-*.pt"))[-1])["state_dict"])
    res: dict = {"federated": scores(fed, held_out)}
    wall["federated"] = time.perf_counter() - t0
    print(f"real_accuracy seed {seed}: federated done ({wall['federated']:.0f} s)", flush=True)

    t0 = time.perf_counter()
    res["pooled"] = scores(train(concat(list(tr.values())), epochs, preset, num_classes, image_size, seed, recipe),
                           held_out)
    wall["pooled"] = time.perf_counter() - t0
    print(f"real_accuracy seed {seed}: pooled done ({wall['pooled']:.0f} s)", flush=True)

    t0 = time.perf_counter()
    local = {name: scores(train(d, epochs, preset, num_classes, image_size, seed, recipe), held_out)
             for name, d in tr.items()}
    wall["local_only"] = time.perf_counter() - t0
    res["local_only"] = {"mAUC": float(np.mean([v["mAUC"] for v in local.values()])),
                         "mAP": float(np.mean([v["mAP"] for v in local.values()])), "by_site": local}
    n_train = {name: len(d) for name, d in tr.items()}
    figures = {f"{a}_{m}": res[a][m] for a in ARMS for m in ("mAP", "mAUC")}
    figures["federated_over_pooled"] = res["federated"]["mAP"] / res["pooled"]["mAP"]
    figures["federated_over_pooled_mAUC"] = res["federated"]["mAUC"] / res["pooled"]["mAUC"]
    return {
        **figures, "scores": res, "held_out_images": len(held_out), "held_out_classes": res["pooled"]["classes"],
        "train_images": n_train, "wall_seconds": wall,
        "optimiser_steps": {
            "federated_total": sum(steps(n, epochs) for n in n_train.values()),
            "local_only_per_model": {name: steps(n, epochs) for name, n in n_train.items()},
            "pooled": steps(sum(n_train.values()), epochs)},
    }


def cached_seed(out: Path, seed: int, params: dict) -> dict:
    """``one_seed``, or its kept result when the same commit (clean tree) and parameters measured it."""
    path = out / "result.json"
    commit = head_commit()
    clean = not tree_changes()
    if clean and path.exists():
        kept = json.loads(path.read_text())
        if kept.get("commit") == commit and kept.get("params") == params:
            print(f"real_accuracy seed {seed}: reusing {path} (commit {commit[:10]}, same parameters)")
            return {**kept["result"], "reused": True}
    result = one_seed(out, seed, params["recipe"], params["image_size"])
    if clean:
        path.write_text(json.dumps({"commit": commit, "params": params, "result": result}, indent=1))
    return {**result, "reused": False}


def run(out: Path, seeds: tuple[int, ...] = (0, 1, 2), rounds: int | None = 5, local_epochs: int | None = None,
        preset: str | None = None, image_size: int = 64) -> dict:
    from consortium.real_demo import REAL_RECIPE, find_real_data

    recipe = {**REAL_RECIPE, **REAL_STRATEGY}
    recipe.update({"rounds": rounds or recipe["rounds"], "local-epochs": local_epochs or recipe["local-epochs"],
                   "preset": preset or recipe["preset"]})
    rounds, local_epochs, preset = recipe["rounds"], recipe["local-epochs"], recipe["preset"]
    command = (f"python -m benchmarks.run --only real_accuracy --seeds {' '.join(map(str, seeds))} (rounds={rounds}, "
               f"local_epochs={local_epochs}, preset={preset}, lr={recipe['lr']}, weight_decay="
               f"{recipe['weight-decay']}, loss={recipe['loss']}, lr-schedule={recipe['lr-schedule']}, "
               f"size={image_size})")
    try:
        find_real_data()
    except RealDataMissing as exc:
        print(f"real_accuracy: skipped, the real NIH images are absent ({exc}); set {REAL_ENV}")
        return {}
    params = {"recipe": recipe, "image_size": image_size}
    t0 = time.perf_counter()
    by_seed = {}
    for seed in seeds:
        seed_dir = Path(out) / f"seed-{seed}"
        seed_dir.mkdir(parents=True, exist_ok=True)
        r = by_seed[seed] = cached_seed(seed_dir, seed, params)
        print(f"real_accuracy seed {seed}: mAUC federated {r['federated_mAUC']:.3f}, pooled {r['pooled_mAUC']:.3f}, "
              f"local-only (mean of 3) {r['local_only_mAUC']:.3f}; mAP federated/pooled "
              f"{r['federated_over_pooled']:.3f} ({time.perf_counter() - t0:.0f} s)", flush=True)
    iv = {k: seed_interval([by_seed[s][k] for s in seeds]) for k in FIGURES}
    epochs = rounds * local_epochs
    first = by_seed[seeds[0]]
    budget = (f"equal passes and equal total optimiser steps: every arm passes over each training image {epochs} "
              f"times ({rounds} rounds x {local_epochs} local epochs; pooled and local-only {epochs} epochs) in "
              f"batches of 32 with the same recipe; optimiser steps (seed {seeds[0]}): federated "
              f"{first['optimiser_steps']['federated_total']} summed over the 3 sites, local-only the same sum "
              f"over its 3 models ({', '.join(map(str, first['optimiser_steps']['local_only_per_model'].values()))}"
              f" each), pooled {first['optimiser_steps']['pooled']} (the last partial batch of each pass)")
    figures = {
        "synthetic": False,
        "data": "real NIH ChestX-ray14, 688 images at 64 px from 180 patients, 3 sites split by patient "
                "(small real data, not a clinical result)",
        "metric": f"mean AUROC (mAUC) and mAP over the classes with >= {MIN_POSITIVES} positives among the pooled "
                  f"held-out images of the 3 sites; federated_over_pooled is the mAP ratio",
        **{k: iv[k]["mean"] for k in FIGURES}, "intervals": iv,
        "by_seed": {str(s): r for s, r in by_seed.items()},
        "reused_seeds": [s for s in seeds if by_seed[s]["reused"]],
        "split_salts": "16 x seed + site index, pinned before indexing (client.site_config.pin_split_salt)",
        "epochs_equivalent": epochs, "compute_budget": budget,
        "recipe": recipe, "wall_seconds": sum(sum(r["wall_seconds"].values()) for r in by_seed.values()),
        "headline": {"federated/pooled mAP": fmt_interval(iv["federated_over_pooled"]),
                     "federated/pooled mAUC": fmt_interval(iv["federated_over_pooled_mAUC"]),
                     "federated mAUC": fmt_interval(iv["federated_mAUC"]),
                     "pooled mAUC": fmt_interval(iv["pooled_mAUC"]),
                     "local-only mAUC (mean of 3 sites)": fmt_interval(iv["local_only_mAUC"]),
                     "federated mAP": fmt_interval(iv["federated_mAP"]), "pooled mAP": fmt_interval(iv["pooled_mAP"]),
                     "local-only mAP (mean of 3 sites)": fmt_interval(iv["local_only_mAP"])},
    }
    return {"real_accuracy": record(figures, command, seeds=list(seeds))}
