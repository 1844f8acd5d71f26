"""ct: the CT vision-language model at synthetic CT sites (phantoms; SYNTHETIC, the machinery only).

- federated: two CT sites (CT-RATE and DICOM layouts) next to two radiograph sites in one Flower simulation
  (ct = true): pooled text-to-volume R@1/5/10 against chance, mAUC and mean F1 at the Youden threshold, depth MAE
  against always answering the middle of the scan, per round; what the radiograph model reached in the same run;
- the same CT sites under DP-SGD (noise 1.0, clip 1.0): the same figures, epsilon spent, and the CT sites' local
  training time per round against the non-DP run's;
- centralised: the CT model trained on both CT sites' training volumes pooled (the same number of epochs), scored
  on the same test volumes the same way (each site's reports against its own volumes).
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import torch

from benchmarks.common import record
from client.ct.federated import evaluate_ct_round, load_ct_site
from client.ct.training import CTTrainConfig, site_tensors, train_ct
from client.site_config import load_site_config
from client.synth import synthesize_site
from client.synth.ct import synthesize_ct_site
from server.ct_eval import ct_round, parse_ct
from consortium.simulation import run_in_process
from shared_models.ct.config import ct_spec
from shared_models.ct.model import CTVLM, prefixed
from shared_models.metrics import HistogramSpec
from shared_models.ontology import load_label_set

ROUNDS, EPOCHS, VOLUMES = 10, 2, 80
RUN = {"ct": True, "ct-size": "32,32,32", "ct-spacing": "6,6,6", "ct-disease-weight": 1.0, "ct-loc-weight": 1.0}
KEYS = ("R@1", "R@1_chance", "R@5", "R@5_chance", "R@10", "R@10_chance", "mAUC", "mean_youden_f1", "loc_mae_mm",
        "loc_centre_mae_mm", "volumes", "snippets")


def _sites(work: Path) -> tuple[Path, Path]:
    cxr, ct = work / "cxr", work / "ct"
    if not (ct / "b" / "site.toml").exists():
        synthesize_site(cxr / "a", "padchest", "cxr-a", n_images=300, image_size=32, seed=1)
        synthesize_site(cxr / "b", "mimic", "cxr-b", n_images=300, image_size=32, seed=2)
        synthesize_ct_site(ct / "a", "ct-rate", "ct-a", VOLUMES, (32, 32, 32), (6.0, 6.0, 6.0), seed=11)
        synthesize_ct_site(ct / "b", "dicom-ct", "ct-b", VOLUMES, (32, 32, 32), (6.0, 6.0, 6.0), seed=12)
    exact_dp_evaluation(ct)
    return cxr, ct


def exact_dp_evaluation(ct: Path) -> None:
    """The synthetic CT sites send exact evaluation summaries under DP ([privacy] dp_exact_evaluation = true,
    outside the accountant): by default a DP CT site withholds them, and the DP row measures the DP-trained model.
    Synthetic data only: a real site keeps its own policy."""
    for toml in Path(ct).glob("*/site.toml"):
        text = toml.read_text()
        if "[privacy]" in text:
            if "dp_exact_evaluation" not in text:
                raise ValueError(f"{toml}: has a [privacy] table without dp_exact_evaluation; the ct benchmark "
                                 "expects the synthetic site's default policy")
            continue
        toml.write_text(text.rstrip() + "\n\n[privacy]\ndp_exact_evaluation = true\n")


def _federated(work: Path, cxr: Path | None, ct: Path, dp: bool) -> dict:
    out = work / ("dp" if dp else "plain")
    n = 4 if cxr else 2
    cfg = {"num-server-rounds": ROUNDS, "local-epochs": EPOCHS, "model-preset": "tiny", "image-size": 32,
           "min-nodes": n, "out-dir": str(out), "sim-sites-dir": f"{cxr},{ct}" if cxr else str(ct), "seed": 0,
           "round-timeout": 1800.0, **RUN, "dp": dp, "dp-noise-multiplier": 1.0, "dp-max-grad-norm": 1.0}
    t0 = time.perf_counter()
    run_in_process(cfg, num_supernodes=n)
    s = json.loads((out / "summary.json").read_text())
    last = s["ct"]["last"]
    import sqlite3

    con = sqlite3.connect(str(out / "registry.db"))
    seconds = [v for (v,) in con.execute("SELECT value FROM metrics WHERE name = 'train_seconds' AND site LIKE 'ct-%'")]
    con.close()
    return {"pooled": {k: last["pooled"][k] for k in KEYS},
            "sites": {site: {k: e[k] for k in KEYS} for site, e in last["sites"].items()},
            "by_round": {k: s["ct"][f"{k}_by_round"] for k in ("R@10", "mAUC", "loc_mae_mm")},
            "radiograph_pooled_mAP_last": s["rounds"][-1]["pooled"].get("mAP") if cxr else None,
            "privacy_last_round": s["privacy"].get(str(ROUNDS)) if dp else None,
            "ct_site_train_seconds_median": statistics.median(seconds) if seconds else None,
            "wall_seconds": time.perf_counter() - t0}


def _centralised(ct: Path, work: Path) -> dict:
    """Both CT sites' training volumes pooled, ROUNDS x EPOCHS epochs; scored per site as the federated model."""
    spec, hist = ct_spec(RUN), HistogramSpec()
    classes = load_label_set("ctrate18").classes
    sites = [load_site_config(p) for p in sorted(ct.glob("*/site.toml"))]
    data = [load_ct_site(s, spec) for s in sites]
    volumes = [v for d in data for v in d.index.split("train")]
    train = site_tensors(volumes, data[0].bank)
    torch.manual_seed(0)
    model = CTVLM(spec.preset)
    opt = torch.optim.AdamW(model.parameters(), lr=spec.lr, weight_decay=1e-4, betas=(0.9, 0.95))
    pos, ann = (train.targets * train.mask).sum(0), train.mask.sum(0)
    t0 = time.perf_counter()
    for e in range(ROUNDS * EPOCHS):
        train_ct(model, train, data[0].prompts, CTTrainConfig(batch_size=spec.batch_size, lr=spec.lr, seed=e,
                                                               disease_weight=spec.disease_weight,
                                                               loc_weight=spec.loc_weight), pos, ann, opt)
    state = prefixed(model.state_dict())
    evals = {s.name: parse_ct(evaluate_ct_round({**RUN, "seed": 0}, s, state, hist), len(classes), hist)
             for s in sites}
    _, summary = ct_round(evals, classes, hist)
    return {"pooled": {k: summary["pooled"][k] for k in KEYS}, "train_seconds": time.perf_counter() - t0}


def headline(fig: dict) -> dict:
    """The figures for the markdown table, from the record's own values."""
    fed, dp, central = fig["federated"]["pooled"], fig["federated_dp"]["pooled"], fig["centralised"]["pooled"]
    return {"federated R@10 (chance)": f"{fed['R@10']:.3f} ({fed['R@10_chance']:.3f})",
            "federated mAUC / Youden F1": f"{fed['mAUC']:.3f} / {fed['mean_youden_f1']:.3f}",
            "federated depth MAE mm (middle of scan)": f"{fed['loc_mae_mm']:.1f} ({fed['loc_centre_mae_mm']:.1f})",
            "centralised R@10 / mAUC / depth MAE": f"{central['R@10']:.3f} / {central['mAUC']:.3f} / "
                                                   f"{central['loc_mae_mm']:.1f}",
            "DP (sigma 1, C 1) R@10 / mAUC": f"{dp['R@10']:.3f} / {dp['mAUC']:.3f}",
            "DP / plain CT site train time": fig["dp_train_time_ratio"]}


def run(work: Path) -> dict:
    work.mkdir(parents=True, exist_ok=True)
    cxr, ct = _sites(work)
    plain = _federated(work, cxr, ct, dp=False)
    dp = _federated(work, None, ct, dp=True)
    central = _centralised(ct, work)
    ratio = (dp["ct_site_train_seconds_median"] / plain["ct_site_train_seconds_median"]
             if dp["ct_site_train_seconds_median"] and plain["ct_site_train_seconds_median"] else None)
    fig = {
        "setup": f"2 CT sites x {VOLUMES} synthetic phantom volumes (ct-rate, dicom-ct; 32^3 at 6 mm) + 2 radiograph "
                 f"sites x 300 images in one run; ct-tiny, {ROUNDS} rounds x {EPOCHS} local epochs, loss weights "
                 "SigLIP 1 / disease 1 / localisation 1",
        "federated": plain, "federated_dp": dp, "centralised": central,
        "dp_train_time_ratio": ratio,
        "dp_evaluation": "the CT sites send exact evaluation summaries under DP (site policy dp_exact_evaluation)",
        "note": "SYNTHETIC phantoms: these figures show the machinery works, not clinical performance. Chance and the "
                "middle-of-scan baseline are given next to each figure; test splits are small (tens of volumes).",
    }
    return {"ct": record({**fig, "headline": headline(fig)}, "make bench (python -m benchmarks.run --only ct)")}
