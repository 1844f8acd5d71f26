"""real_accuracy: federated vs pooled vs local-only on the real NIH partition of `fedchest demo --real`.

The three real sites (``server/real_demo.py``: outpatient PA, ICU-like AP, mixed; split by patient) are built once
per benchmark run; each site's salted patient-level test split (25 %) is the held-out set of every approach, so
all of them are scored on the same held-out patients. Per seed (initialisation and batch order):

- federated: the ServerApp and ClientApps under Flower's simulation runtime, ``rounds`` x ``local_epochs``;
- pooled: one model trained centrally on the union of the three sites' training splits for rounds x local_epochs
  epochs;
- local-only: each site alone on its own training split for rounds x local_epochs epochs.

Equal compute: every approach sees each training image rounds x local_epochs times, in batches of 32, so the
number of optimiser steps is equal up to the last partial batch of each pass: federated sum over sites and rounds
of local_epochs x ceil(n_site / 32), local-only the same per site (summed over the three local models), pooled
rounds x local_epochs x ceil(N / 32) (at most 2 fewer per pass); the record lists each count.

Defaults: the demo's recipe (server/real_demo.py REAL_RECIPE) but 10 rounds instead of its 15, so that three seeds
fit in about 25 minutes on 2 shared cores.

Figure: mean AUROC over the classes with >= 5 positives among the pooled held-out images (NIH findings through
the ontology's synonym map; masked classes never count) and mAP; mean over seeds with a 95 % t-interval. Small real
data (688 images at 64 px): wide intervals, far from published NIH figures.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np

from benchmarks.common import concat, record, site_configs
from client.index import SiteData, load_split
from client.training import predict, train_local
from server.checkpoints import load_checkpoint
from server.real_demo import REAL_ENV, RealDataMissing, make_real_sites
from server.simulation import CLIENT_APP, SERVER_APP, run_in_process
from shared_models.device import select_device
from shared_models.metrics import per_class_metrics
from shared_models.networks import build_model
from shared_models.ontology import load_label_set

MIN_POSITIVES = 5
T_975 = {2: 12.706, 3: 4.303, 4: 3.182, 5: 2.776, 6: 2.571, 7: 2.447, 8: 2.365, 9: 2.306, 10: 2.262}
BATCH = 32


def interval(values: list[float]) -> list[float]:
    """95 % t-interval of the mean over seeds."""
    v = np.asarray(values, dtype=float)
    half = T_975.get(len(v), 1.96) * v.std(ddof=1) / math.sqrt(len(v))
    return [float(v.mean() - half), float(v.mean() + half)]


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
    import torch

    torch.manual_seed(seed)
    model = build_model(preset, num_classes, image_size=image_size)
    train_local(model, data, epochs, recipe["lr"], BATCH, select_device(), seed=seed,
                weight_decay=recipe["weight-decay"], loss=recipe["loss"])
    return model


def run(out: Path, seeds: tuple[int, ...] = (0, 1, 2), rounds: int | None = 10, local_epochs: int | None = None,
        preset: str | None = None, image_size: int = 64) -> dict:
    from server.real_demo import REAL_RECIPE

    recipe = dict(REAL_RECIPE)
    rounds = rounds or recipe["rounds"]
    local_epochs = local_epochs or recipe["local-epochs"]
    preset = preset or recipe["preset"]
    command = (f"python -m benchmarks.run --only real_accuracy (seeds={list(seeds)}, rounds={rounds}, "
               f"local_epochs={local_epochs}, preset={preset}, lr={recipe['lr']}, weight_decay="
               f"{recipe['weight-decay']}, loss={recipe['loss']}, size={image_size})")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    try:
        sites_dir = make_real_sites(out, image_size, seed=0)
    except RealDataMissing as exc:
        print(f"real_accuracy: skipped, the real NIH images are absent ({exc}); set {REAL_ENV}")
        return {}
    cfgs = site_configs(sites_dir)
    num_classes = load_label_set().num_seen
    tr = {c.name: load_split(c, "train") for c in cfgs}
    te = {c.name: load_split(c, "test") for c in cfgs}
    held_out = concat(list(te.values()))
    epochs = rounds * local_epochs
    per_seed: dict[str, list] = {"federated": [], "pooled": [], "local_only": []}
    t0 = time.perf_counter()
    for seed in seeds:
        fed_dir = out / f"federated-seed{seed}"
        run_config = {
            "num-server-rounds": rounds, "local-epochs": local_epochs, "lr": recipe["lr"], "batch-size": BATCH,
            "weight-decay": recipe["weight-decay"], "loss": recipe["loss"], "model-preset": preset,
            "image-size": image_size, "label-set": "cxrlt2026", "fraction-train": 1.0, "min-nodes": len(cfgs),
            "round-timeout": 3600.0, "out-dir": str(fed_dir), "sim-sites-dir": str(sites_dir),
            "run-name": f"bench-real-accuracy-seed{seed}", "seed": seed,
        }
        run_in_process(run_config, num_supernodes=len(cfgs), cpus_per_client=1.0, apps=(SERVER_APP, CLIENT_APP))
        if not (fed_dir / "summary.json").exists():
            raise RuntimeError(f"real_accuracy: the federated run of seed {seed} wrote no summary in {fed_dir}")
        fed = build_model(preset, num_classes, image_size=image_size)
        fed.load_state_dict(load_checkpoint(sorted((fed_dir / "checkpoints").glob("round-*.pt"))[-1])["state_dict"])
        per_seed["federated"].append(scores(fed, held_out))
        pooled = train(concat(list(tr.values())), epochs, preset, num_classes, image_size, seed, recipe)
        per_seed["pooled"].append(scores(pooled, held_out))
        local = {name: scores(train(d, epochs, preset, num_classes, image_size, seed, recipe), held_out)
                 for name, d in tr.items()}
        per_seed["local_only"].append({"mAUC": float(np.mean([v["mAUC"] for v in local.values()])),
                                       "mAP": float(np.mean([v["mAP"] for v in local.values()])), "by_site": local})
        print(f"real_accuracy seed {seed}: federated {per_seed['federated'][-1]['mAUC']:.3f}, pooled "
              f"{per_seed['pooled'][-1]['mAUC']:.3f}, local-only (mean of 3) {per_seed['local_only'][-1]['mAUC']:.3f} "
              f"mAUC ({time.perf_counter() - t0:.0f} s)", flush=True)
    means = {k: {m: float(np.mean([s[m] for s in v])) for m in ("mAUC", "mAP")} for k, v in per_seed.items()}
    ci = {k: {m: interval([s[m] for s in v]) for m in ("mAUC", "mAP")} for k, v in per_seed.items()}
    n_train = {name: len(d) for name, d in tr.items()}
    figures = {
        "synthetic": False,
        "data": "real NIH ChestX-ray14, 688 images at 64 px from 180 patients, 3 sites split by patient "
                "(small real data)",
        "metric": f"mean AUROC over classes with >= {MIN_POSITIVES} positives among the held-out images",
        "federated_mAUC": means["federated"]["mAUC"], "pooled_mAUC": means["pooled"]["mAUC"],
        "local_only_mAUC": means["local_only"]["mAUC"],
        "federated_mAP": means["federated"]["mAP"], "pooled_mAP": means["pooled"]["mAP"],
        "local_only_mAP": means["local_only"]["mAP"],
        "interval_95": ci,
        "federated_over_pooled": means["federated"]["mAUC"] / means["pooled"]["mAUC"],
        "federated_over_pooled_mAP": means["federated"]["mAP"] / means["pooled"]["mAP"],
        "per_seed": per_seed,
        "held_out_images": len(held_out), "held_out_classes": per_seed["pooled"][0]["classes"],
        "train_images": n_train,
        "equal_compute": {
            "passes_over_each_training_image": epochs,
            "optimiser_steps_federated": sum(steps(n, epochs) for n in n_train.values()),
            "optimiser_steps_local_only_total": sum(steps(n, epochs) for n in n_train.values()),
            "optimiser_steps_pooled": steps(sum(n_train.values()), epochs),
        },
        "recipe": {**recipe, "rounds": rounds, "local-epochs": local_epochs, "preset": preset},
        "wall_seconds": time.perf_counter() - t0,
        "headline": {"federated/pooled mAUC": means["federated"]["mAUC"] / means["pooled"]["mAUC"],
                     "federated mAUC": means["federated"]["mAUC"], "pooled mAUC": means["pooled"]["mAUC"],
                     "local-only mAUC (mean of sites)": means["local_only"]["mAUC"]},
    }
    return {"real_accuracy": record(figures, command, seeds=list(seeds))}
