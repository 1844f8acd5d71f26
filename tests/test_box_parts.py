"""Box-latent head (issue 9): the pooled reliability table, the calibration intervals, the image shifts, the
frozen-backbone model, the server's pooling (OOD AUROC, site similarity) and the run-config checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from server.box_eval import box_overlap, box_round, ood_auroc, site_similarity
from shared_models.boxlatent import BoxSpec, box_spec, build_box_model
from shared_models.boxlatent.calibration import (brier_from_table, brier_score, calibration_ci, ece_from_table,
                                                 expected_calibration_error, reliability_table)
from shared_models.boxlatent.config import BoxConfigError, spec_config
from shared_models.boxlatent.model import backbone_state, load_backbone_weights
from shared_models.boxlatent.shifts import corrupt, device_shift, held_out_device, non_chest_images
from shared_models.metrics import HistogramSpec
from shared_models.networks import build_model, classifier_keys, parameter_group

OOD = HistogramSpec(400, 10.0)


def _entries(n=400, c=6, seed=0):
    rng = np.random.default_rng(seed)
    y = (rng.random((n, c)) < 0.3).astype(np.float32)
    p = np.clip(0.3 * y + 0.7 * rng.random((n, c)), 0, 1)
    m = (rng.random((n, c)) < 0.8).astype(np.float32)
    return p, y, m


def test_reliability_tables_pool_exactly_across_sites():
    p, y, m = _entries()
    whole = reliability_table(p, y, m)
    parts = reliability_table(p[:150], y[:150], m[:150]) + reliability_table(p[150:], y[150:], m[150:])
    assert np.allclose(whole, parts)
    keep = m > 0
    assert brier_from_table(parts) == pytest.approx(np.mean((p[keep] - y[keep]) ** 2))
    assert brier_score(p, y, m) == pytest.approx(brier_from_table(whole))
    assert ece_from_table(parts) == pytest.approx(expected_calibration_error(p, y, m))
    assert np.isnan(brier_from_table(np.zeros((10, 2, 3))))


def test_calibration_intervals_cover_the_estimate_and_shrink_with_more_data():
    p, y, m = _entries(200)
    small = calibration_ci(reliability_table(p, y, m), 300, seed=1)
    p2, y2, m2 = _entries(5000, seed=2)
    big = calibration_ci(reliability_table(p2, y2, m2), 300, seed=1)
    table = reliability_table(p, y, m)
    assert small["brier"][0] <= brier_from_table(table) <= small["brier"][1]
    assert small["ece"][0] <= ece_from_table(table) <= small["ece"][1]
    assert big["brier"][1] - big["brier"][0] < small["brier"][1] - small["brier"][0]
    assert calibration_ci(np.zeros((10, 2, 3)), 100) == {}


def test_shifts_stay_images_and_the_held_out_device_is_further_than_training_shifts():
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(8, 1, 32, 32) * 0.6 + 0.2
    train = device_shift(x, gen)
    held = held_out_device(x, gen)
    bad = corrupt(x, gen)
    other = non_chest_images(6, 32, gen)
    for img in (train, held, bad, other):
        assert img.min() >= 0 and img.max() <= 1 and torch.isfinite(img).all()
    assert other.shape == (6, 1, 32, 32)
    assert 0 < float((train - x).abs().mean()) < float((held - x).abs().mean())
    assert float((bad - x).abs().mean()) > float((train - x).abs().mean())
    again = device_shift(x, torch.Generator().manual_seed(0))
    assert torch.equal(again, device_shift(x, torch.Generator().manual_seed(0)))


def test_box_model_freezes_the_backbone_and_routes_features_like_the_experts():
    torch.manual_seed(0)
    model = build_box_model("tiny", 5, BoxSpec(latent_dim=8), image_size=32)
    groups = {parameter_group(k) for k in model.state_dict()}
    assert groups == {"backbone", "box"}
    assert all(not p.requires_grad for p in model.backbone.parameters())
    assert all(p.requires_grad for p in model.box.parameters())
    assert classifier_keys(model) == {"box": ["box.classifier.weight", "box.classifier.bias"]}
    model.train()
    assert not model.backbone.training  # batch-norm statistics stay the backbone's
    x = torch.randn(3, 1, 32, 32)
    feats = model.features(x, torch.tensor([0, 2, 0]))
    pa = model.backbone.experts["PA"]
    with torch.no_grad():
        ref = pa.forward_head(pa.forward_features(x[[0]]), pre_logits=True)
    assert torch.allclose(feats[0], ref[0], atol=1e-6)
    out = model(x, torch.tensor([-1, -1, 1]), samples=4)
    loss = out.logits.sum() + out.radius.sum()
    loss.backward()
    assert all(p.grad is None for p in model.backbone.parameters())
    assert model.box.centre.weight.grad is not None


def test_backbone_weights_from_a_fedchest_checkpoint(tmp_path):
    experts = build_model("tiny", 5, image_size=32)
    path = tmp_path / "round-003.pt"
    # a mixed run's checkpoint: the CT model and the prompt localiser ride along (make demo's box run met this)
    state = {**experts.state_dict(), "zeroshot.text_proj.weight": torch.zeros(2, 2), "ct.t": torch.zeros(()),
             "loc.region_tokens": torch.zeros(3, 4)}
    torch.save({"state_dict": state, "model_preset": "tiny", "classes": list("abcde")}, path)
    loaded = load_backbone_weights(path, "tiny")
    assert not any(k.startswith(("zeroshot.", "ct.", "loc.")) for k in loaded)
    model = build_box_model("tiny", 5, BoxSpec(latent_dim=8), 32, loaded)
    assert torch.equal(model.backbone.experts["PA"].fc.weight, experts.experts["PA"].fc.weight)
    with pytest.raises(ValueError, match="holds preset 'tiny' but the run's model-preset is 'small'"):
        load_backbone_weights(path, "small")
    with pytest.raises(FileNotFoundError, match="not a file"):
        load_backbone_weights(tmp_path / "missing.pt", "tiny")
    with pytest.raises(ValueError, match="do not fit preset 'tiny' with 7 classes"):
        build_box_model("tiny", 7, BoxSpec(), 32, loaded)
    with pytest.raises(ValueError, match="no routed-expert weights"):
        backbone_state({"fc.weight": torch.zeros(1)}, "x.pt")


def test_config_is_checked_and_round_trips():
    assert box_spec({}) is None
    spec = box_spec({"box-latent": True, "box-samples": 16})
    assert spec.samples == 16 and spec.reported_samples == (1, 8, 16, 32)
    assert box_spec(spec_config(spec)) == spec
    with pytest.raises(BoxConfigError, match="box-loss = 'focal'"):
        box_spec({"box-latent": True, "box-loss": "focal"})
    with pytest.raises(BoxConfigError, match="box-samples = 0"):
        box_spec({"box-latent": True, "box-samples": 0})


def test_server_refuses_combinations_it_cannot_run():
    from server.server_app import DEFAULTS, _build

    spec = box_spec({"box-latent": True})
    cfg = {**DEFAULTS, "box-latent": True, "model-preset": "tiny", "image-size": 32}
    with pytest.raises(ValueError, match="no DP-SGD training yet"):
        _build({**cfg, "dp": True}, ("a", "b"), None, spec, False)
    with pytest.raises(ValueError, match="aggregation = \"projection\""):
        _build({**cfg, "aggregation": "fedavg"}, ("a", "b"), None, spec, False)
    with pytest.raises(ValueError, match="cannot be combined"):
        _build(cfg, ("a", "b"), object(), spec, False)


def _ood_hist(scores):
    return np.bincount(OOD.bin_index(1 / (1 + np.exp(-np.asarray(scores)))), minlength=OOD.bins)


def test_ood_auroc_from_histograms_matches_sklearn():
    rng = np.random.default_rng(0)
    ident, ood = rng.normal(-2, 0.5, 300), rng.normal(-1.5, 0.5, 200)
    auroc, ci = ood_auroc(_ood_hist(ident), _ood_hist(ood), 200, 0)
    exact = roc_auc_score(np.r_[np.zeros(300), np.ones(200)], np.r_[ident, ood])
    assert auroc == pytest.approx(exact, abs=0.01)
    assert ci[0] < auroc < ci[1]
    assert np.isnan(ood_auroc(_ood_hist(ident), np.zeros(OOD.bins, int), 10, 0)[0])  # no OOD images: undefined


def test_site_similarity_from_mean_boxes():
    assert box_overlap(np.zeros(2), np.ones(2), np.zeros(2), np.ones(2)) == 1.0
    assert box_overlap(np.zeros(2), np.ones(2), np.full(2, 5.0), np.ones(2)) == 0.0
    assert box_overlap(np.zeros(1), np.ones(1), np.ones(1), np.ones(1)) == pytest.approx(1 / 3)
    d = 4
    base = {"n": np.array([6, 6, 0]), "centre": np.zeros((3, d)), "radius": np.ones((3, d))}
    near = {"n": np.array([6, 0, 0]), "centre": np.full((3, d), 0.5), "radius": np.ones((3, d))}
    none = {"n": np.array([0, 0, 0]), "centre": np.full((3, d), np.nan), "radius": np.full((3, d), np.nan)}
    sim = site_similarity({"a": base, "b": near, "c": none}, ("x", "y", "z"))
    m = np.asarray(sim["matrix"])
    assert sim["sites"] == ["a", "b", "c"] and m[0, 0] == 1.0
    assert m[0, 1] == m[1, 0] == pytest.approx(1.5 / 2.5)  # overlap 1.5 of union 2.5 in every dimension
    assert np.isnan(m[2, 0]) and np.isnan(m[2, 2])
    assert sim["shared_classes"]["a|b"] == ["x"]


def test_box_round_pools_sites():
    """Each N (box samples per image) is pooled from its own histograms and tables: N = 1's scores here are
    noisier than N = 8's, so their mAUC, Brier and temperatures differ, and each equals its own pooled figure."""
    spec = HistogramSpec(24, 6.0)
    rng = np.random.default_rng(0)

    def site(seed):
        r = np.random.default_rng(seed)
        p8, y, m = _entries(120, 3, seed)
        p1 = np.clip(0.5 * p8 + 0.5 * r.random(p8.shape), 0, 1)  # one box sample: a noisier score
        n, per_n = {}, {}
        for k, p, t in ((1, p1, 1.5), (8, p8, 1.2)):
            pos, neg = spec.histograms(y, p, m)
            n[k] = {"pos": pos, "neg": neg, "raw": reliability_table(p, y, m), "cal": reliability_table(p, y, m),
                    "temperature": t}
            per_n[k] = (pos, neg, p)
        ood = {"id": _ood_hist(r.normal(-2, 0.3, 100)), **{k: _ood_hist(r.normal(-1, 0.3, 50))
                                                            for k in ("device", "corrupt", "nonchest")}}
        stats = {"n": np.array([5, 5, 5]), "centre": rng.normal(size=(3, 4)), "radius": np.ones((3, 4))}
        return {"n": n, "ood": ood, "stats": stats}, per_n, (y, m)

    a, b = site(1), site(2)
    rows, out = box_round({"a": a[0], "b": b[0]}, (1, 8), 8, ("x", "y", "z"), spec, 50, seed=0)
    y, m = (np.concatenate([a[2][i], b[2][i]]) for i in range(2))
    for k in (1, 8):
        pooled = spec.metrics(a[1][k][0] + b[1][k][0], a[1][k][1] + b[1][k][1])
        assert out["by_samples"][k]["mAUC"] == pytest.approx(np.nanmean(pooled["auroc"]))
        p = np.concatenate([a[1][k][2], b[1][k][2]])
        assert out["by_samples"][k]["brier"] == pytest.approx(brier_score(p, y, m))
    assert out["temperature"] == {"a": {1: 1.5, 8: 1.2}, "b": {1: 1.5, 8: 1.2}}
    assert out["by_samples"][8]["mAUC"] - out["by_samples"][1]["mAUC"] > 0.05
    assert out["by_samples"][1]["brier"] != pytest.approx(out["by_samples"][8]["brier"])
    values = {r[3]: r[4] for r in rows if r[0] is None}
    assert [values[f"box_n{k}_mAUC"] for k in (1, 8)] == [out["by_samples"][k]["mAUC"] for k in (1, 8)]
    assert {(r[0], r[4]) for r in rows if r[3] == "box_temperature"} == {("a", 1.2), ("b", 1.2)}  # the primary N's
    assert all(out["ood"][k]["auroc"] > 0.95 for k in ("device", "corrupt", "nonchest"))
    assert {r[3] for r in rows} >= {"box_n8_mAUC", "box_n8_brier_lo", "box_ood_device_auroc", "box_site_similarity",
                                    "box_temperature"}
