"""The zero-shot branch at a site: a local round with and without DP-SGD, what leaves (never the frozen text
encoder, never text), and the zero-shot evaluation summary."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from client.client_app import group_statistics, run_model
from client.index import load_split
from client.dp_release import released_counts
from client.local_round import ledger_for, outgoing_state, train_round
from client.zeroshot import PROMPT_SETS, text_encoder, zero_shot_evaluation
from shared_models.networks import parameter_group
from shared_models.ontology import load_label_set
from shared_models.privacy.accountant import epsilon
from shared_models.zeroshot.config import zeroshot_spec

LS = load_label_set("cxrlt2026")
BASE = {"model-preset": "tiny", "label-set": "cxrlt2026", "image-size": 32, "local-epochs": 1, "batch-size": 16,
        "lr": 1e-3, "server-round": 1, "seed": 0, "zeroshot": True, "zeroshot-proxy-classes": "Nodule"}


@pytest.fixture
def site(padchest_site):
    return padchest_site


def _round(cfg, config):
    model = run_model(config, cfg)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    data = load_split(cfg, "train")
    c = model.num_classes
    release = (released_counts(cfg, config, data.targets[:, :c], data.mask[:, :c], data.projection)
               if config.get("dp") else None)
    stats, privacy = train_round(config, cfg, data, model, release)
    counts, _ = group_statistics(data, model.num_classes, {parameter_group(k) for k in model.state_dict()})
    return model, before, outgoing_state(model, cfg, counts, fedavg=False), stats, privacy, data


def _assert_no_text_encoder(sent: dict[str, torch.Tensor]) -> None:
    frozen = [p.detach() for p in text_encoder().model.parameters()]
    shapes = {tuple(p.shape) for p in frozen}
    for k, v in sent.items():
        assert "word_embeddings" not in k and ".attention.self." not in k, k  # MiniLM parameter names
        if tuple(v.shape) in shapes:
            assert not any(tuple(p.shape) == tuple(v.shape) and torch.equal(p, v) for p in frozen), k
    assert all(not p.requires_grad for p in frozen)


def test_local_round_trains_the_head_and_never_sends_the_text_encoder(site):
    model, before, sent, stats, _, data = _round(site, BASE)
    assert any(r for r in data.reports), "the PadChest site should have report text"
    assert stats["contrastive_loss"] > 0
    groups = {parameter_group(k) for k in sent}
    assert {"zeroshot.text_proj", "zeroshot.logit_scale", "zeroshot.logit_bias"} <= groups
    assert any(g.startswith("zeroshot.image_proj.") for g in groups)
    assert not torch.equal(before["zeroshot.text_proj.weight"], sent["zeroshot.text_proj.weight"])
    assert set(sent) <= set(model.state_dict())  # only the model's own parameters leave
    _assert_no_text_encoder(sent)
    assert all(v.dtype != torch.uint8 for v in sent.values())  # no text or pixels in any form
    assert (site.work_dir / "zeroshot" / "minilm-sentences.npz").exists()  # embeddings cached at the site


def test_proxy_classes_are_hidden_from_the_asl_branch(site):
    """The proxy class's label is masked out of ASL: its classifier row gets no gradient, so AdamW only decays it
    (by 1 - lr * weight_decay per step), while the other rows learn."""
    config = {**BASE, "zeroshot-weight": 0.0}
    model, before, _, stats, *_ = _round(site, config)
    j = LS.seen.index("Nodule")
    after = model.state_dict()["experts.PA.fc.weight"]
    decayed = before["experts.PA.fc.weight"][j] * (1 - 1e-3 * 1e-4) ** stats["steps"]
    assert torch.allclose(after[j], decayed, atol=1e-7)
    assert float((after - before["experts.PA.fc.weight"]).abs().max()) > 1e-4  # other rows did learn


def test_dp_round_on_the_separate_encoder(site):
    config = {**BASE, "dp": True, "dp-noise-multiplier": 1.0, "dp-max-grad-norm": 1.0,
              "zeroshot-image-encoder": "separate", "run-id": "zs-dp"}
    model, before, sent, stats, privacy, _ = _round(site, config)
    history = [(e["noise_multiplier"], e["sample_rate"], e["steps"]) for e in ledger_for(site).entries()]
    assert privacy["dp_epsilon"] == pytest.approx(epsilon(history, site.privacy.delta), rel=1e-9)
    assert [e["head"] for e in ledger_for(site).entries()] == ["site-statistics", "routed-experts"]
    assert "dp_clipped_fraction" not in privacy and 0 <= stats["clipped_fraction"] <= 1  # it stays at the site
    assert not torch.equal(before["zeroshot.image_encoder.conv1.0.weight"],
                           sent["zeroshot.image_encoder.conv1.0.weight"])
    _assert_no_text_encoder(sent)


def test_zero_shot_evaluation_summary(site):
    config = {**BASE, "zeroshot-fusion": 0.5}
    spec = zeroshot_spec(config, LS)
    model = run_model(config, site)
    data = load_split(site, None)
    site0 = dataclasses.replace(site, privacy=dataclasses.replace(site.privacy, min_count=0))
    probs, _, extra = zero_shot_evaluation(model, data, LS, spec, site0, load_split(site, "val"))
    assert probs.shape == (len(data), LS.num_seen) and np.all((probs >= 0) & (probs <= 1))
    for name in (*PROMPT_SETS, "proxy"):
        assert f"zs.{name}.hist_pos.all" in extra and f"zs.{name}.n.LAT" in extra
    assert len(extra["zs.descriptive.auroc.all"]) == len(LS.zeroshot)
    assert len(extra["zs.proxy.auroc.all"]) == 1
    assert extra["zs.proxy.n.all"] == len(load_split(site, "val"))  # proxies: model selection on validation
    hist = np.asarray(extra["zs.descriptive.hist_pos.all"]) + np.asarray(extra["zs.descriptive.hist_neg.all"])
    assert hist.sum() == int(data.mask[:, LS.num_seen:].sum())  # every annotated held-out entry scored once


def test_dashboard_class_page_shows_zero_shot_classes_apart(tmp_path, monkeypatch):
    """Registry rows as the server writes them for a zero-shot round, shown on the class page in their own
    section with the pooled interval."""
    from server.registry import Registry
    from tests.test_dashboard import _app

    url = f"sqlite:///{tmp_path / 'r.db'}"
    reg = Registry(url)
    run_id = reg.create_run(name="zs", strategy="s", heads="routed-experts+zeroshot", label_set="cxrlt2026",
                            num_rounds=1, config={}, synthetic=True)
    reg.start_round(run_id, 1)
    rows = [(None, "all", c, k, 0.5, 10) for c in LS.seen for k in ("ap", "auroc", "f1", "eval_prevalence")]
    rows += [(None, "all", c, "train_prevalence", 0.1, 100) for c in LS.seen] + [(None, "all", None, "mAP", 0.3, 100)]
    rows += [(None, "all", c, f"zs_{s}_{k}", 0.7, 6) for c in LS.zeroshot for s in PROMPT_SETS
             for k in ("ap", "auroc", "f1")]
    rows += [(None, "all", None, f"zs_descriptive_{k}", v, 60) for k, v in
             (("mAUC", 0.71), ("mAUC_lo", 0.61), ("mAUC_hi", 0.81), ("mAP", 0.2), ("mF1", 0.1))]
    reg.add_metrics(run_id, 1, rows)
    reg.finish_round(run_id, 1, 100, 1)
    at = _app(url, monkeypatch, page="classes", run=run_id)
    assert not at.exception
    text = " ".join(s.value for s in at.subheader)
    assert "Zero-shot classes" in text
    tables = [d.value for d in at.dataframe]
    seen_table, macro, per_class = tables[0], tables[1], tables[2]
    assert not set(LS.zeroshot) & set(seen_table["class_name"])  # held-out classes not among the seen
    assert macro.iloc[0]["mAUC 95% CI"] == "[0.610, 0.810]"
    assert set(per_class["class_name"]) == set(LS.zeroshot)
