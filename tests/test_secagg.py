"""Secure aggregation (Flower's SecAgg+, legacy API): a run completes and its aggregate equals the weighted
FedAvg of the sites' updates recomputed in the clear (up to SecAgg+'s quantisation); combinations it cannot
honour are refused before any round."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from tests.conftest import REPO

RUN = """
import sys
from pathlib import Path
from consortium.simulation import run_in_process, SECAGG_APPS
sites, out = sys.argv[1], sys.argv[2]
cfg = {"num-server-rounds": 1, "local-epochs": 1, "lr": 1e-3, "batch-size": 32, "model-preset": "tiny",
       "image-size": 32, "min-nodes": 3, "round-timeout": 600.0, "out-dir": out, "sim-sites-dir": sites,
       "run-name": "secagg-test", "seed": 0, "aggregation": "fedavg", "secagg-max-weight": 100.0}
run_in_process(cfg, 3, apps=SECAGG_APPS)
"""


def test_secagg_run_matches_clear_weighted_fedavg(tmp_path):
    from client.client_app import site_data
    from client.local_round import train_round
    from client.site_config import load_site_config
    from server.checkpoints import load_checkpoint
    from consortium.sites import make_sites
    from shared_models.networks import build_model, float_state_keys

    sites = make_sites(tmp_path, 3, 90, 32, seed=4)
    out = tmp_path / "run"
    r = subprocess.run([sys.executable, "-c", RUN, str(sites), str(out)], cwd=REPO, capture_output=True, text=True,
                       timeout=900)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["rounds"][0]["sites"] == 3
    got = load_checkpoint(sorted((out / "checkpoints").glob("round-*.pt"))[-1])["state_dict"]

    torch.manual_seed(0)
    init = build_model("tiny", 30, image_size=32).state_dict()
    keys = float_state_keys(init)
    total, weight, steps = {k: torch.zeros_like(init[k]) for k in keys}, 0, 0
    for toml in sorted(sites.glob("*/site.toml")):
        site = load_site_config(toml)
        data = site_data(site, "train")
        model = build_model("tiny", 30, image_size=32)
        model.load_state_dict(init)
        config = {"local-epochs": 1, "lr": 1e-3, "batch-size": 32, "seed": 0, "server-round": 1,
                  "aggregation": "fedavg"}
        steps = max(steps, int(train_round(config, site, data, model)[0]["steps"]))
        state = model.state_dict()
        for k in keys:
            total[k] += len(data) * state[k]
        weight += len(data)
    diff = torch.cat([(got[k] - total[k] / weight).flatten() for k in keys]).abs()
    moved = torch.cat([(got[k] - init[k]).flatten() for k in keys]).abs()
    print(f"moved mean {float(moved.mean()):.2e}; diff mean {float(diff.mean()):.2e} max {float(diff.max()):.2e}")
    assert float(moved.mean()) > 1e-4  # the aggregate is a trained model, not the initial one
    # Equal up to quantisation, except where Adam's first steps amplify last-bit differences between the
    # simulation's threads and this process into a sign flip of a near-zero gradient. One Adam step moves a
    # coordinate by at most lr (1 - beta1) / sqrt(1 - beta2) ~ 3.2 lr (Kingma & Ba, sec. 2.1), so two runs that
    # disagree at every step differ by at most 2 x 3.2 lr per step (seen: 7.8e-3 after 3 steps).
    assert float(diff.mean()) < 0.02 * float(moved.mean())
    assert float(diff.max()) < 2 * 1e-3 * (1 - 0.9) / (1 - 0.999) ** 0.5 * steps + 1e-5


def test_secagg_refuses_what_it_cannot_honour():
    from server.secagg_app import SECAGG_DEFAULTS, SecAggRefusal, check_secagg_config
    from server.server_app import DEFAULTS

    base = {**DEFAULTS, **SECAGG_DEFAULTS, "aggregation": "fedavg"}
    check_secagg_config(base)
    for change, words in ((("aggregation", "projection+class"), "needs each update in the clear"),
                          (("server-optimizer", "fedadam"), "server-optimizer"),
                          (("secagg-reconstruction-threshold", 9), "must not exceed"),
                          (("zeroshot", True), "zero-shot branch"), (("box-latent", True), "box-latent head")):
        with pytest.raises(SecAggRefusal, match=words):
            check_secagg_config({**base, change[0]: change[1]})
