"""Privacy against the coordinator (issue 21): DP randomness nobody can rebuild, nothing exact leaves a DP site, losses
whose influence stays bounded, small counts per histogram bin, and what a DP site's evaluation reply may be."""

from __future__ import annotations

import dataclasses
import json
import math
import time

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord, Context, Message, Metadata, RecordDict

from client.client_app import run_model
from client.dp_release import (HEAD, ReleasedCounts, evaluation_release, gaussian_release, released_counts,
                               sensitivity)
from client.evaluation import EXACT, NOISED, WITHHELD, evaluation_summary, merge_small_bins, scope_summary
from client.index import load_split
from client.local_round import check_dp_config, ledger_for, train_round
from client.privacy import PolicyRefusal
from server.records import to_record
from shared_models.metrics import HistogramSpec
from shared_models.privacy.accountant import epsilon

BASE = {"model-preset": "tiny", "label-set": "cxrlt2026", "image-size": 32, "local-epochs": 1, "batch-size": 16,
        "lr": 1e-3, "server-round": 1, "seed": 0, "run-id": "dp-test"}
DP = {**BASE, "dp": True, "dp-noise-multiplier": 1.0, "dp-max-grad-norm": 1.0}


def _site(padchest_site, **policy):
    return dataclasses.replace(padchest_site, privacy=dataclasses.replace(padchest_site.privacy, **policy))


def _trained(site, config, release=None) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    model = run_model(config, site)
    train_round(config, site, load_split(site, "train"), model, release)
    return model.state_dict()


def test_dp_noise_cannot_be_rebuilt_from_the_run_config_and_plain_runs_stay_reproducible(padchest_site):
    data = load_split(padchest_site, "train")
    c = run_model(DP, padchest_site).num_classes
    release = released_counts(padchest_site, DP, data.targets[:, :c], data.mask[:, :c], data.projection)
    a, b = _trained(padchest_site, DP, release), _trained(padchest_site, DP, release)
    assert any(not torch.equal(a[k], b[k]) for k in a)  # same seed, same round, same data: different noise
    plain_a, plain_b = _trained(padchest_site, BASE), _trained(padchest_site, BASE)
    assert all(torch.equal(plain_a[k], plain_b[k]) for k in plain_a)  # without DP: bit for bit


def _train_reply(site, config) -> dict:
    from client import client_app

    model = run_model(config, site)
    arrays = to_record(model.state_dict())
    meta = Metadata(run_id=1, message_id="m1", src_node_id=0, dst_node_id=1, reply_to_message_id="", group_id="1",
                    created_at=time.time(), ttl=60.0, message_type="train")
    msg = Message(content=RecordDict({"arrays": arrays, "config": ConfigRecord(config)}), metadata=meta)
    ctx = Context(run_id=1, node_id=1, node_config={"site-config": str(site.path)}, state=RecordDict(), run_config={})
    original = client_app.resolve_site
    client_app.resolve_site = lambda context, cfg: site
    try:
        reply = client_app.train(msg, ctx)
    finally:
        client_app.resolve_site = original
    return dict(reply.content["metrics"])


ALLOWED_UNDER_DP = {"num-examples", "train_pos", "train_annotated", "n.PA", "n.AP", "n.LAT", "train_seconds",
                    "dp_epsilon", "dp_delta", "dp_noise_multiplier", "dp_max_grad_norm", "dp_steps", "dp_sample_rate",
                    "dp_epsilon_budget"}


def test_a_dp_reply_carries_released_counts_only_and_charges_them_once(padchest_site):
    site = _site(padchest_site, epsilon_budget=1000.0)
    first = _train_reply(site, DP)
    second = _train_reply(site, {**DP, "server-round": 2})
    for m in (first, second):
        extra = {k for k in m if not k.startswith(("count.", "pos."))} - ALLOWED_UNDER_DP
        assert not extra, extra  # no loss, no clipped fraction, nothing outside the ledger
    data = load_split(site, "train")
    exact_pos, _ = data.class_counts(len(first["train_pos"]))
    released = ReleasedCounts.from_json(json.loads(next((site.work_dir / "dp-release").glob("*.json")).read_text()))
    assert first["train_pos"] == released.class_counts()[0].tolist() == second["train_pos"]  # re-sent unchanged
    assert first["num-examples"] == released.public_size
    assert first["train_pos"] != [int(v) for v in exact_pos]  # noised, not the site's exact counts
    entries = ledger_for(site).entries()
    heads = [e["head"] for e in entries]
    assert heads.count(HEAD) == 1 and heads.count("routed-experts") == 2
    # the epsilon the site reports composes every charged release: the counts once, DP-SGD twice
    history = [(e["noise_multiplier"], e["sample_rate"], e["steps"]) for e in entries]
    assert second["dp_epsilon"] == pytest.approx(epsilon(history, site.privacy.delta), rel=1e-9)
    assert second["dp_sample_rate"] == pytest.approx(min(1.0, 16 / released.public_size))
    assert second["dp_steps"] == math.ceil(released.public_size / 16)


def test_the_release_has_the_stated_sensitivity_and_noise():
    rng = np.random.default_rng(0)
    y = (rng.random((300, 5)) < 0.6).astype(np.float32)
    mask = np.ones_like(y)
    proj = rng.integers(-1, 3, 300)
    assert sensitivity(5, 2) == pytest.approx(math.sqrt(2 + 2 + 5))
    draws = [gaussian_release(y, mask, proj, 2.0, 5, np.random.default_rng((3, s))) for s in range(300)]
    examples = np.array([d.examples for d in draws])
    assert examples.std() == pytest.approx(2.0 * math.sqrt(12), rel=0.1)
    assert abs(examples.mean() - 300) < 4 * 2.0 * math.sqrt(12) / math.sqrt(300)
    assert all((d.positives >= 0).all() and (d.annotated >= 0).all() for d in draws)
    # one image changes the exact vector by at most the sensitivity (its positives bounded to L)
    from client.dp_release import exact_statistics

    few = y * (np.cumsum(y, 1) <= 2)  # at most L = 2 positives per image: bounding draws nothing
    for i in range(0, 300, 37):
        rest = np.delete(np.arange(300), i)
        full = exact_statistics(few, mask, proj, 2, np.random.default_rng(1))
        less = exact_statistics(few[rest], mask[rest], proj[rest], 2, np.random.default_rng(1))
        assert np.linalg.norm(full - less) <= sensitivity(5, 2) + 1e-9


def test_dp_losses_use_released_counts_never_the_sites_own(padchest_site, monkeypatch):
    import client.dp_training as dpt

    seen = {}
    real = dpt.objective

    def spy(model, data, prevalence, *args):
        seen["prevalence"] = np.asarray(prevalence)
        return real(model, data, prevalence, *args)

    monkeypatch.setattr(dpt, "objective", spy)
    data = load_split(padchest_site, "train")
    c = run_model(DP, padchest_site).num_classes
    y = np.zeros((len(data), c), np.float32)
    release = ReleasedCounts(float(len(data)) + 7, np.zeros(3), np.zeros((4, c)), np.full(c, 50.0), 1.0, 6)
    release.positives[0, :] = 5.0  # prevalence 0.1 everywhere: nothing like the site's own
    config = {**DP, "asl-class-weights": True, "logit-adjust-tau": 1.0}
    train_round(config, padchest_site, data, run_model(config, padchest_site), release)
    assert np.allclose(seen["prevalence"], 0.1)
    assert y.shape[1] == c


@pytest.mark.parametrize("extra,match", [
    ({"sampling": "class-balanced"}, "re-sampling"),
    ({"localizer": True}, "localiser"),
    ({"label-graph": True}, "label-graph-noise"),
])
def test_dp_configs_that_would_break_the_guarantee_are_refused(padchest_site, extra, match):
    with pytest.raises(PolicyRefusal, match=match):
        check_dp_config({**DP, **extra}, padchest_site)
    check_dp_config({**BASE, **extra}, padchest_site)  # the same without DP is fine


def test_no_released_histogram_bin_holds_fewer_than_min_count():
    rng = np.random.default_rng(0)
    n, c, k = 400, 4, 5
    targets = (rng.random((n, c)) < 0.2).astype(np.float32)
    probs = rng.random((n, c))
    spec = HistogramSpec(24, 6.0)
    out = scope_summary(probs, targets, np.ones_like(targets), spec, k)
    pos = np.asarray(out["hist_pos.all"]).reshape(c, -1)
    neg = np.asarray(out["hist_neg.all"]).reshape(c, -1)
    assert ((pos == 0) | (pos >= k)).all() and ((neg == 0) | (neg >= k)).all()
    exact_pos, exact_neg = spec.histograms(targets, probs)
    assert (pos.sum(1) == exact_pos.sum(1)).all() and (neg.sum(1) == exact_neg.sum(1)).all()
    half = spec.bins // 2  # never merged across p = 0.5: counts above and below it stay exact
    assert (pos[:, half:].sum(1) == exact_pos[:, half:].sum(1)).all()
    single = np.zeros((1, 24), np.int64)
    single[0, 3] = 1
    p, q = merge_small_bins(single, np.full((1, 24), 3), k)
    assert (p[(p > 0)] >= 1).all() and p.sum() == 1  # a class whose total is under k is left to be withheld


def test_bands_are_summarised_before_the_small_count_rule():
    """Two tail classes with 2 and 3 positives (k = 5) are withheld one by one, yet the site's tail mAP is their
    exact mean AP; a band with fewer than k positives in all is NaN; the server reports the site's figure."""
    from server.federated_eval import parse_site_eval, round_metrics
    from shared_models.metrics import per_class_metrics

    rng = np.random.default_rng(1)
    n, k = 300, 5
    targets = np.zeros((n, 4), np.float32)
    targets[:120, 0] = 1  # head
    targets[rng.choice(n, 2, replace=False), 1] = 1  # tail, 2 positives
    targets[rng.choice(n, 3, replace=False), 2] = 1  # tail, 3 positives
    targets[rng.choice(n, 4, replace=False), 3] = 1  # medium, 4 positives: under k on its own band
    probs = np.clip(targets * 0.3 + rng.random((n, 4)) * 0.7, 0, 1)
    mask = np.ones_like(targets)
    bands = np.array([0, 2, 2, 1])
    spec = HistogramSpec(24, 6.0)
    out = scope_summary(probs, targets, mask, spec, k, bands=bands)
    exact = per_class_metrics(targets, probs, mask)["ap"]
    assert math.isnan(out["ap.all"][1]) and math.isnan(out["ap.all"][2]) and out["withheld.all"] == 3
    head, medium, tail = out["band_map.all"]
    assert head == pytest.approx(exact[0]) and tail == pytest.approx((exact[1] + exact[2]) / 2) and math.isnan(medium)
    assert "band_map.all" not in scope_summary(probs, targets, mask, spec, k)  # no bands, no band figures
    summary = evaluation_summary(probs, targets, mask, np.zeros(n, np.int64), spec, k, bands)
    bands_of = np.array(["head", "tail", "tail", "medium"], object)
    _, result = round_metrics({"s1": parse_site_eval(summary, 4, spec)}, bands_of, ("a", "b", "c", "d"), spec)
    assert result["sites"]["s1"]["all"]["tail_mAP"] == pytest.approx(tail)  # not NaN, as suppressed histograms give
    assert math.isnan(result["pooled"]["tail_mAP"])  # the pooled figure comes from the released histograms only


def test_dp_evaluation_is_withheld_noised_or_exact_by_the_sites_choice(padchest_site):
    rng = np.random.default_rng(0)
    n, c = 60, 4
    probs, targets = rng.random((n, c)), (rng.random((n, c)) < 0.3).astype(np.float32)
    mask, proj = np.ones_like(targets), rng.integers(-1, 3, n)
    spec = HistogramSpec(24, 6.0)
    exact = {"exact": 1}
    site = _site(padchest_site, epsilon_budget=1000.0)
    withheld = evaluation_release(DP, site, exact, probs, targets, mask, proj, spec, families=False)
    assert withheld["dp_evaluation"] == WITHHELD and withheld["n.all"] == 0 and sum(withheld["hist_pos.all"]) == 0
    noised = evaluation_release({**DP, "dp-eval-noise-multiplier": 1.0}, site, exact, probs, targets, mask, proj,
                                spec, families=False)
    assert noised["dp_evaluation"] == NOISED and all(math.isnan(v) for v in noised["auroc.all"])
    assert [e["head"] for e in ledger_for(site).entries()] == ["evaluation"] and noised["dp_epsilon"] > 0
    with pytest.raises(PolicyRefusal, match="no noised release"):
        evaluation_release({**DP, "dp-eval-noise-multiplier": 1.0}, site, exact, probs, targets, mask, proj, spec,
                           families=True)
    allowed = _site(padchest_site, dp_exact_evaluation=True)
    assert evaluation_release(DP, allowed, exact, probs, targets, mask, proj, spec, True) == {**exact,
                                                                                            "dp_evaluation": EXACT}
