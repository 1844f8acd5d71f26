"""`fedchest demo --real`: a consortium of three sites on real NIH ChestX-ray14 radiographs, end to end.

The shared folder (``FEDCHEST_REAL_DATA``, else ``../shared/data/real`` beside the repository) holds 688 real
NIH radiographs at 64 px (``nih64/``) and NIH's ``Data_Entry_2017`` table. The demo splits the patients (never
single images) over three sites with the case mixes of real hospitals: an outpatient clinic (PA views only), an
ICU-like ward (patients imaged mostly AP) and a mixed general hospital. Each site is a ``site.toml`` with the
``nih`` source pointing at the shared images and a ``patients`` list, so no image is copied; the sites are
checked by the site CLI's code as hospitals would, then the routed experts train under Flower's simulation runtime.
NIH findings reach the consortium label set through the ontology's ``nih`` synonym map; classes NIH cannot
express are masked at every site, never counted as negatives.

Small real data: 688 images at 64 px train nothing near published NIH accuracy; the figures show that the
platform learns from real radiographs, with intervals, against the constant predictor.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from consortium.sites import site_cli_here
from server.report import fmt
from consortium.simulation import CLIENT_APP, SERVER_APP, run_in_process

REAL_ENV = "FEDCHEST_REAL_DATA"
DEFAULT_REAL = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "real"
NIH_TABLE = Path("nih") / "Data_Entry_2017_v2020.csv.gz"
SITES = ("outpatient-pa", "icu-ap", "general-mixed")
TEST_FRACTION, VAL_FRACTION = 0.25, 0.0
# The training recipe of `fedchest demo --real` (and the real_accuracy benchmark), chosen by 3-fold patient-level
# cross-validation on the 688 images (scripts/real_cv.py; figures in docs/real-images.md).
# Seed 0, mean over 3 folds: small-generalist BCE wd 0.05 0.650, tiny-generalist the same 0.644 (at about half the
# compute), small-generalist + affine augmentation 0.646, tiny BCE wd 0.05 0.608, tiny ASL wd 1e-4 (the old default)
# about 0.59; a per-class logistic regression on 16 x 16 pixels 0.640.
REAL_RECIPE = {"preset": "tiny-generalist", "rounds": 15, "local-epochs": 2, "lr": 0.001, "weight-decay": 0.05,
               "loss": "bce"}
# The strategy of the real recipe (run-config keys; docs/real-images.md): a cosine learning-rate schedule over the
# rounds, so that the late rounds refine instead of over-fitting each site's ~150-200 images (a constant lr peaked
# at round 5 of 15 and declined after). No FedBN: its checkpoint would lack normalisation layers for a hospital
# that scores it without having trained (`fedchest-site evaluate`).
REAL_STRATEGY = {"lr-schedule": "cosine", "lr-min-factor": 0.0}


class RealDataMissing(FileNotFoundError):
    """The shared real images are not where the demo looks; the message names both places."""


def find_real_data(images: str = "nih64") -> Path:
    """The shared real-data folder: ``$FEDCHEST_REAL_DATA`` when set, else ``../shared/data/real``."""
    env = os.environ.get(REAL_ENV)
    root = Path(env) if env else DEFAULT_REAL
    if not (root / images).is_dir() or not (root / NIH_TABLE).is_file():
        raise RealDataMissing(
            f"real NIH images not found: expected {images}/ and {NIH_TABLE} under {root} (looked at "
            f"{REAL_ENV}={env!r} and the default {DEFAULT_REAL}); set {REAL_ENV} to the folder that holds them")
    return root


def assign_patients(real: Path, images: str = "nih64", seed: int = 0) -> dict[str, list[str]]:
    """Patient IDs per site, by each patient's share of AP (supine, bedside) images: patients imaged mostly AP go
    to the ICU-like site; of the rest, a random 60 % of the PA-only patients form the outpatient site and the
    others, with every patient who has both views, the mixed site. No patient is at two sites."""
    on_disk = {p.name for p in (real / images).glob("*.png")}
    table = pd.read_csv(real / NIH_TABLE, usecols=["Image Index", "Patient ID", "View Position"], dtype=str)
    table = table[table["Image Index"].isin(on_disk)]
    ap_share = table.groupby("Patient ID")["View Position"].apply(lambda v: float((v.str.strip() == "AP").mean()))
    rng = np.random.default_rng(seed)
    pa_only = sorted(ap_share.index[ap_share == 0.0], key=int)
    rng.shuffle(pa_only)
    cut = int(round(0.6 * len(pa_only)))
    mostly_ap = sorted(ap_share.index[ap_share >= 0.5], key=int)
    mixed = sorted(ap_share.index[(ap_share > 0.0) & (ap_share < 0.5)], key=int)
    return {SITES[0]: sorted(pa_only[:cut], key=int), SITES[1]: mostly_ap,
            SITES[2]: sorted(list(pa_only[cut:]) + mixed, key=int)}


def write_site(folder: Path, name: str, real: Path, images: str, patients: list[str], image_size: int) -> Path:
    """A site folder: ``site.toml`` (the nih source on the shared images) and its ``patients.txt``."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "patients.txt").write_text("\n".join(patients) + "\n")
    toml = folder / "site.toml"
    toml.write_text(
        f'[site]\nname = "{name}"\nimage_size = {image_size}\n'
        f"[split]\nval = {VAL_FRACTION}\ntest = {TEST_FRACTION}\n"
        f'[[sources]]\nkind = "nih"\nroot = "{(real / images).resolve()}"\n'
        f'table = "{(real / NIH_TABLE).resolve()}"\npatients = "{(folder / "patients.txt").resolve()}"\n')
    return toml


def make_real_sites(out: Path, image_size: int, seed: int, images: str = "nih64",
                    pin_salt: Callable[[Path, int], None] | None = None, salt_key: int | None = None) -> Path:
    """Three checked NIH sites under ``out/real-sites`` (reused when the parameters match).

    ``seed`` draws which PA-only patients go to the outpatient site. Each site's patient-level test split is
    decided by its secret salt: random (a fresh secret per site, as at a hospital) unless ``salt_key`` is given,
    then ``pin_salt(site_toml, 16 * salt_key + site_index)`` writes a fixed one before the site is first indexed
    (the benchmarks pass ``client.site_config.pin_split_salt``), so the same key gives the same held-out
    patients on every run."""
    if (pin_salt is None) != (salt_key is None):
        raise ValueError("make_real_sites: pin_salt and salt_key go together (both given, or neither)")
    real = find_real_data(images)
    sites_dir = out / "real-sites"
    params = {"real": str(real.resolve()), "images": images, "image_size": image_size, "seed": seed,
              "test": TEST_FRACTION, "val": VAL_FRACTION, "salt_key": salt_key}
    stamp = sites_dir / "demo-params.json"
    if stamp.exists() and json.loads(stamp.read_text()) == params:
        print(f"reusing real NIH sites in {sites_dir}")
        return sites_dir
    shutil.rmtree(sites_dir, ignore_errors=True)
    jobs = [(name, write_site(sites_dir / f"{i:02d}-{name}", name, real, images, patients, image_size), len(patients))
            for i, (name, patients) in enumerate(assign_patients(real, images, seed).items())]
    if pin_salt is not None:
        for i, (_name, toml, _n) in enumerate(jobs):
            pin_salt(toml, 16 * salt_key + i)

    def check(job) -> str:
        name, toml, _ = job
        r = site_cli_here("check", "--config", str(toml))
        if r.returncode:
            raise RuntimeError(f"fedchest-site check failed for {name}:\n{r.stdout[-2000:]}{r.stderr[-2000:]}")
        return r.stdout

    for (name, _toml, n_patients), text in zip(jobs, map(check, jobs)):  # in this process, one after the other
        lines = text.splitlines()
        views = next((line.strip() for line in lines if line.strip().startswith("projection ")), "")
        print(f"[{name}] {n_patients} patients; " + lines[0].split(": ", 1)[-1] + "; " + " ".join(views.split()))
    stamp.write_text(json.dumps(params))
    return sites_dir


def run_real_demo(out: Path, rounds: int = REAL_RECIPE["rounds"], seed: int = 0, preset: str = REAL_RECIPE["preset"],
                  image_size: int = 64, local_epochs: int = REAL_RECIPE["local-epochs"], lr: float = REAL_RECIPE["lr"],
                  verbose: bool = False, extra: dict | None = None, weight_decay: float = REAL_RECIPE["weight-decay"],
                  loss: str = REAL_RECIPE["loss"]) -> dict:
    out = out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    print("fedchest demo --real: real NIH ChestX-ray14 radiographs (small real data: 688 images from 180 patients "
          "at 64 px; not a clinical result)\n")
    sites_dir = make_real_sites(out, image_size, seed)
    summary_path = out / "summary.json"
    summary_path.unlink(missing_ok=True)
    run_config = {
        "num-server-rounds": rounds, "local-epochs": local_epochs, "lr": lr, "batch-size": 32,
        "weight-decay": weight_decay, "loss": loss,
        "model-preset": preset, "image-size": image_size, "label-set": "cxrlt2026", "fraction-train": 1.0,
        "min-nodes": len(SITES), "round-timeout": 1800.0, "out-dir": str(out), "sim-sites-dir": str(sites_dir),
        "run-name": f"demo-real-nih-{rounds}rounds", "seed": seed, "pooled-ci-replicates": 1000,
        **REAL_STRATEGY, **(extra or {}),
    }
    t0 = time.perf_counter()
    run_in_process(run_config, num_supernodes=len(SITES), cpus_per_client=1.0, verbose=verbose,
                   apps=(SERVER_APP, CLIENT_APP))
    if not summary_path.exists():
        raise RuntimeError(f"the federated run wrote no {summary_path}; see the log above")
    summary = json.loads(summary_path.read_text())
    summary["demo_wall_seconds"] = time.perf_counter() - t0
    summary["real_data"] = {"images": "nih64", "sites": list(SITES), "test_fraction": TEST_FRACTION}
    summary_path.write_text(json.dumps(summary, indent=1))
    print("\n=== fedchest demo --real finished (real NIH radiographs, small real data) ===")
    print("\n".join(real_round_lines(summary)))
    print(f"summary:     {summary_path}")
    print(f"registry:    {summary['db_url']}")
    print(f"checkpoints: {summary['checkpoints']}")
    ckpt = sorted(Path(summary["checkpoints"]).glob("round-*.pt"))[-1]
    site = sorted(sites_dir.glob("*/site.toml"))[0]
    print(f"score it at a site: fedchest-site evaluate --checkpoint {ckpt} --config {site} --split test")
    return summary


def real_round_lines(summary: dict) -> list[str]:
    """Per round: pooled mAUC (with its interval) and mAP against the constant predictor, then per site."""
    sites = summary["sites"]
    lines = [f"federated evaluation on each site's held-out patients (test split); constant predictor: mAUC 0.500, "
             f"mAP = prevalence ({fmt(summary['baseline']['prevalence_mAP'])} in the last round)",
             f"{'round':>5}  {'pooled mAUC [95% CI]':<24}{'pooled mAP':>11}" + "".join(f"{s:>22}" for s in sites),
             f"{'':>5}  {'':<24}{'':>11}" + "".join(f"{'mAUC / mAP':>22}" for _ in sites)]
    for r in summary["rounds"]:
        p, ci = r["pooled"], r.get("pooled_ci", {}).get("mAUC", [float("nan")] * 2)
        lines.append(f"{r['round']:>5}  {fmt(p['mAUC'])} [{fmt(ci[0])}, {fmt(ci[1])}]{'':<7}{fmt(p['mAP']):>11}"
                     + "".join(f"{fmt(r['sites'][s]['all']['mAUC']) + ' / ' + fmt(r['sites'][s]['all']['mAP']):>22}"
                               for s in sites))
    return lines
