"""Patient-level k-fold cross-validation of the routed experts on the shared real NIH images (centralised).

What `fedchest demo --real` trains, measured without federation: the 688 64-px NIH ChestX-ray14 radiographs
(``$FEDCHEST_REAL_DATA`` or ``../shared/data/real``) indexed once as one site by ``fedchest-site check`` (the
platform's own decode, label mapping and masks), split into k folds by patient (never by image), trained with
``client.training.train_local`` (the code every site runs) and scored on the held-out patients: mean AUROC over
the classes with >= ``--min-pos`` positives in the held-out fold (NIH findings through the ontology's ``nih``
synonym map; masked classes never count). Prints one line per fold and seed, then the mean, the standard deviation
and the range over them. Small real data: the figures have wide spreads.

Run (niced; a few minutes per setting on 2 cores):

    nice -n 19 python scripts/real_cv.py --preset tiny --epochs 30 --lr 1e-3
    nice -n 19 python scripts/real_cv.py --preset small-generalist --loss bce --weight-decay 0.05 --seeds 0 1
    nice -n 19 python scripts/real_cv.py --baseline logreg     # per-class logistic regression on 16x16 pixels

``--work DIR`` keeps the indexed site (default /tmp/fedchest-real-cv); nothing is written into the repository.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from client.index import SiteData, load_split, sample_paths  # noqa: E402
from client.site_config import load_site_config  # noqa: E402
from client import training  # noqa: E402
from client.training import predict, train_local
from shared_models.losses import AUGMENTATIONS, LOSSES  # noqa: E402
from consortium.sites import site_cli_here as _site_cli  # noqa: E402
from consortium.real_demo import NIH_TABLE, find_real_data, write_site  # noqa: E402
from shared_models.networks import build_model  # noqa: E402
from shared_models.ontology import load_label_set  # noqa: E402

LABEL_SET = "cxrlt2026"
ORIGINAL_BATCH = training._batch


def indexed_site(work: Path, image_size: int) -> tuple[SiteData, np.ndarray]:
    """Every real image as one site (no test split) and the patient of each image."""
    real = find_real_data()
    table = pd.read_csv(real / NIH_TABLE, usecols=["Image Index", "Patient ID"], dtype=str)
    on_disk = {p.name for p in (real / "nih64").glob("*.png")}
    patients = sorted(set(table.loc[table["Image Index"].isin(on_disk), "Patient ID"]), key=int)
    folder = work / f"site-{image_size}"
    toml = folder / "site.toml"
    cfg_text = None if not toml.exists() else toml.read_text()
    write_site(folder, "real-cv", real, "nih64", patients, image_size)
    toml.write_text(toml.read_text().replace("test = 0.25", "test = 0.0"))
    cfg = load_site_config(toml)
    if cfg_text != toml.read_text() or not cfg.index_path.exists():
        r = _site_cli("check", "--config", str(toml))
        if r.returncode:
            raise SystemExit(f"fedchest-site check failed:\n{r.stdout[-2000:]}{r.stderr[-2000:]}")
    data = load_split(cfg, None)
    names = [Path(p).name for p in sample_paths(cfg, data.rows)]
    patient_of = dict(zip(table["Image Index"], table["Patient ID"]))
    return data, np.array([patient_of[n] for n in names])


def subset(data: SiteData, idx: np.ndarray) -> SiteData:
    return SiteData(data.pixels[idx], data.projection[idx], data.targets[idx], data.mask[idx])


def folds(patients: np.ndarray, k: int, seed: int) -> list[np.ndarray]:
    """k held-out index sets, each a random third (for k = 3) of the patients."""
    unique = np.array(sorted(set(patients), key=int))
    np.random.default_rng(seed).shuffle(unique)
    return [np.flatnonzero(np.isin(patients, part)) for part in np.array_split(unique, k)]


def mean_auroc(y: np.ndarray, m: np.ndarray, s: np.ndarray, min_pos: int) -> tuple[float, int]:
    from sklearn.metrics import roc_auc_score

    aucs = []
    for j in range(y.shape[1]):
        sel = m[:, j] > 0
        pos = int(y[sel, j].sum())
        if pos >= min_pos and pos < sel.sum():
            aucs.append(roc_auc_score(y[sel, j], s[sel, j]))
    return float(np.mean(aucs)), len(aucs)


def logreg_scores(train: SiteData, test: SiteData, n_classes: int) -> np.ndarray:
    """Per-class logistic regression on 16 x 16 downsampled pixels plus the AP flag (the reference baseline)."""
    from sklearn.linear_model import LogisticRegression

    def feats(d: SiteData) -> np.ndarray:
        px = torch.nn.functional.adaptive_avg_pool2d(torch.from_numpy(d.pixels).float()[:, None], 16)
        x = px.flatten(1).numpy() / 255.0
        return np.concatenate([x - x.mean(1, keepdims=True), (d.projection[:, None] == 1).astype(float)], 1)

    xtr, xte = feats(train), feats(test)
    out = np.full((len(test), n_classes), 0.5)
    for j in range(n_classes):
        sel = train.mask[:, j] > 0
        yj = train.targets[sel, j]
        if sel.sum() and 0 < yj.sum() < len(yj):
            out[:, j] = LogisticRegression(C=0.01, max_iter=2000).fit(xtr[sel], yj).predict_proba(xte)[:, 1]
    return out


def per_image_batch(data: SiteData, idx: np.ndarray, device: torch.device, num_classes: int):
    """``client.training._batch`` with each image standardised to zero mean and unit variance."""
    x, p, y, m = ORIGINAL_BATCH(data, idx, device, num_classes)
    mu, sd = x.mean((2, 3), keepdim=True), x.std((2, 3), keepdim=True).clamp(min=1e-3)
    return (x - mu) / sd, p, y, m


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--weight-decay", type=float, default=1e-4)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--loss", choices=LOSSES, default="asl")
    ap.add_argument("--class-weights", action="store_true", help="CXR-LT prevalence class weights")
    ap.add_argument("--routing", default="soft")
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--folds", type=int, default=3)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0], help="fold-split and training seeds")
    ap.add_argument("--min-pos", type=int, default=5)
    ap.add_argument("--baseline", choices=["logreg"], default=None)
    ap.add_argument("--work", type=Path, default=Path("/tmp/fedchest-real-cv"))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", type=Path, default=None, help="append the result as one JSON line here")
    ap.add_argument("--norm", choices=["global", "image"], default="global",
                    help="image: standardise each image (an experiment; the platform normalises globally)")
    ap.add_argument("--aug", choices=AUGMENTATIONS, default="shift", help="the run config `augment`")
    args = ap.parse_args(argv)
    if args.norm == "image":
        training._batch = per_image_batch
    torch.set_num_threads(args.threads)
    data, patients = indexed_site(args.work, args.image_size)
    n_classes = load_label_set(LABEL_SET).num_seen
    results = []
    t0 = time.perf_counter()
    for seed in args.seeds:
        for k, test_idx in enumerate(folds(patients, args.folds, seed)):
            train_idx = np.setdiff1d(np.arange(len(data)), test_idx)
            train, test = subset(data, train_idx), subset(data, test_idx)
            if args.baseline:
                scores = logreg_scores(train, test, n_classes)
            else:
                torch.manual_seed(seed * 100 + k)
                model = build_model(args.preset, n_classes, routing=args.routing, image_size=args.image_size)
                train_local(model, train, args.epochs, args.lr, args.batch_size, torch.device("cpu"),
                            seed=seed * 100 + k,
                            asl_class_weights=args.class_weights, weight_decay=args.weight_decay, loss=args.loss,
                            augmentation=args.aug)
                scores, _ = predict(model, test, torch.device("cpu"))
            auc, n = mean_auroc(test.targets[:, :n_classes], test.mask[:, :n_classes], scores, args.min_pos)
            results.append(auc)
            print(f"seed {seed} fold {k}: mean AUROC {auc:.3f} over {n} classes ({len(test_idx)} test images)",
                  flush=True)
    r = np.array(results)
    setting = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k not in ("work", "json")}
    print(f"{json.dumps(setting)}\n=> mean AUROC {r.mean():.3f} (sd {r.std(ddof=1) if len(r) > 1 else 0:.3f}, "
          f"range {r.min():.3f}-{r.max():.3f}, {len(r)} folds x seeds), {time.perf_counter() - t0:.0f} s")
    if args.json:
        with args.json.open("a") as fh:
            fh.write(json.dumps({**setting, "aucs": results, "mean": float(r.mean())}) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
