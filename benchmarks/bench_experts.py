"""experts (a): plain FedAvg vs projection-aware vs projection- and class-aware aggregation on a non-IID
synthetic consortium: laterals sit mostly at one site, and some tail classes exist at only one site.

Sites: `screening` (PadChest format; PA with laterals, and the only site with the planted tail classes),
`icu` (MIMIC format; portable AP only), `outpatient` (Open-i format; PA only). Same data, rounds and seed for
every mode; pooled mAP, tail mAP and lateral mAP of the last round (server-side pooled histograms).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import timm
import torch

from benchmarks.common import concat, evaluate, record, site_configs
from client.index import load_split
from client.index import prepare_site
from client.site_config import load_site_config
from client.synth import synthesize_site
from server.aggregation import MODES
from consortium.sites import make_sites
from consortium.simulation import run_in_process
from shared_models.networks import PROJECTIONS, RoutedExperts, build_model, load_preset

ONLY_AT_SCREENING = ("Hernia", "pneumoperitoneo", "Kyphosis", "azygos lobe", "Hydropneumothorax", "bronchiectasis")
SITES = {
    "screening": ("padchest", (0.45, 0.05, 0.50), {c: 4.0 for c in ONLY_AT_SCREENING}),
    "icu": ("mimic", (0.03, 0.97, 0.0), {c: 0.0 for c in ONLY_AT_SCREENING}),
    "outpatient": ("openi", (0.97, 0.03, 0.0), {c: 0.0 for c in ONLY_AT_SCREENING}),
}


def make_non_iid_sites(out: Path, images: int, image_size: int, seed: int = 0) -> Path:
    sites = out / "sites"
    for i, (name, (fmt, mix, scale)) in enumerate(SITES.items()):
        toml = sites / f"{i:02d}-{name}" / "site.toml"
        if not toml.exists():
            synthesize_site(toml.parent, fmt, name, images, image_size, seed, projection_mix=mix,
                            prevalence_scale=scale)
            prepare_site(load_site_config(toml))
    return sites


def routed_vs_generalist(out: Path, epochs: int = 12, preset: str = "small") -> dict:
    """(b) centralised on the demo consortium, same data and epochs: the routed experts vs one generalist of an
    expert's size (the same compute per image), and the routed experts plus a generalist member (2x compute)."""
    cfgs = site_configs(make_sites(out, 3, 1000, 64, seed=0))
    train = concat([load_split(c, "train") for c in cfgs])
    test = concat([load_split(c, "test") for c in cfgs])
    c = 30
    spec = load_preset(preset)["experts"]["PA"]

    def generalist() -> RoutedExperts:
        net = timm.create_model(spec["arch"], pretrained=False, in_chans=1, num_classes=c,
                                **{k: tuple(v) if isinstance(v, list) else v for k, v in spec.get("args", {}).items()})
        return RoutedExperts({p: net for p in PROJECTIONS}, c)  # one network for every view

    from client.training import train_local
    from shared_models.device import select_device

    figures = {}
    for name, factory in (("routed", lambda: build_model(preset, c)), ("generalist", generalist),
                          ("routed+generalist", lambda: build_model(f"{preset}-generalist", c))):
        torch.manual_seed(0)
        model = factory()
        t0 = time.perf_counter()
        for e in range(epochs):
            train_local(model, train, 1, 1e-3, 32, select_device(), seed=e)
        seconds = time.perf_counter() - t0
        by_view = {}
        for i, p in enumerate(PROJECTIONS):
            sel = test.projection == i
            by_view[p] = evaluate(model, type(test)(test.pixels[sel], test.projection[sel], test.targets[sel],
                                                    test.mask[sel]))["mAP"]
        figures[name] = {"mAP": evaluate(model, test)["mAP"], "mAP_by_view": by_view, "train_seconds": seconds}
    return figures


def run(out: Path, images: int = 800, image_size: int = 64, rounds: int = 8, local_epochs: int = 2,
        preset: str = "small") -> dict:
    sites = make_non_iid_sites(out, images, image_size)
    figures = {}
    for mode in MODES:
        run_dir = out / mode.replace("+", "-")
        run_in_process({
            "num-server-rounds": rounds, "local-epochs": local_epochs, "lr": 0.001, "batch-size": 32,
            "model-preset": preset, "image-size": image_size, "label-set": "cxrlt2026", "fraction-train": 1.0,
            "min-nodes": len(SITES), "round-timeout": 3600.0, "out-dir": str(run_dir), "sim-sites-dir": str(sites),
            "run-name": f"bench-experts-{mode}", "seed": 0, "aggregation": mode,
        }, num_supernodes=len(SITES))
        last = json.loads((run_dir / "summary.json").read_text())["rounds"][-1]
        figures[mode] = {"pooled_mAP": last["pooled"]["mAP"], "tail_mAP": last["pooled"]["tail_mAP"],
                         "lateral_mAP": last["pooled_by_projection"]["LAT"]["mAP"],
                         "frontal_PA_mAP": last["pooled_by_projection"]["PA"]["mAP"],
                         "frontal_AP_mAP": last["pooled_by_projection"]["AP"]["mAP"]}
    headline = {f"{mode} {k}": v for mode, f in figures.items() for k, v in f.items()
                if k in ("pooled_mAP", "tail_mAP", "lateral_mAP")}
    versus = routed_vs_generalist(out / "b")
    headline.update({f"(b) {name} mAP": f["mAP"] for name, f in versus.items()})
    return {"experts": record({"aggregation": figures, "routed_vs_generalist": versus, "headline": headline,
                               "sites": {k: v[:2] for k, v in SITES.items()}},
                              f"python -m benchmarks.run --only experts ({images} images/site, {rounds} rounds x "
                              f"{local_epochs} epochs, preset {preset})")}
