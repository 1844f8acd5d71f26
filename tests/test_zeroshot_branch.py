"""Zero-shot branch, second part: the dual-branch model, what leaves a site, training texts, DP for the head,
bootstrap intervals and the server's pooling of zero-shot summaries."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from client.index import SiteData
from client.zeroshot import label_sentence, training_texts
from shared_models.metrics import HistogramSpec, bootstrap_macro, per_class_metrics
from shared_models.networks import build_model, parameter_group
from shared_models.ontology import load_label_set
from shared_models.zeroshot import clip_loss, siglip_loss
from shared_models.zeroshot.config import ZeroShotConfigError, ZeroShotSpec, zeroshot_spec
from shared_models.zeroshot.dp import ZeroShotDPError, check_dp_settings, clipped_zeroshot_sum

LS = load_label_set("cxrlt2026")


def test_losses_with_several_positive_texts_per_image():
    """positives (B_img, B_txt): an image's report sentences (or identical texts) are its positives."""
    torch.manual_seed(0)
    img, txt = torch.randn(3, 6), torch.randn(5, 6)
    t, b = torch.tensor(math.log(10.0)), torch.tensor(-10.0)
    pos = torch.tensor([[1, 1, 0, 0, 0], [0, 0, 1, 0, 0], [0, 0, 1, 1, 1]], dtype=torch.bool)
    cos = torch.nn.functional.normalize(img, dim=-1) @ torch.nn.functional.normalize(txt, dim=-1).T
    z = 2 * pos.float() - 1
    expected = -torch.nn.functional.logsigmoid(z * (10.0 * cos - 10.0)).sum() / 3
    assert float(siglip_loss(img, txt, t, b, pos)) == pytest.approx(float(expected), rel=1e-6)
    sq_img, sq_txt = torch.randn(4, 6), torch.randn(4, 6)
    assert float(siglip_loss(sq_img, sq_txt, t, b, torch.eye(4, dtype=torch.bool))) == pytest.approx(
        float(siglip_loss(sq_img, sq_txt, t, b)), rel=1e-6)
    assert float(clip_loss(sq_img, sq_txt, t, torch.eye(4, dtype=torch.bool))) == pytest.approx(
        float(clip_loss(sq_img, sq_txt, t)), rel=1e-6)
    # CLIP: each image's target spread over its texts, each text's over its images
    logits = math.exp(float(t)) * cos
    target = pos.float()
    rows = -(target / target.sum(1, keepdim=True) * torch.log_softmax(logits, 1)).sum(1).mean()
    cols = -(target.T / target.T.sum(1, keepdim=True) * torch.log_softmax(logits.T, 1)).sum(1).mean()
    assert float(clip_loss(img, txt, t, pos)) == pytest.approx(float((rows + cols) / 2), rel=1e-6)
    with pytest.raises(ValueError, match="positives"):
        siglip_loss(img, txt, t, b)


@pytest.mark.parametrize("preset", ["tiny", "small-generalist"])
def test_dual_branch_logits_equal_the_routed_experts(preset):
    torch.manual_seed(0)
    model = build_model(preset, LS.num_seen, image_size=32, zeroshot=ZeroShotSpec()).eval()
    x, p = torch.randn(6, 1, 32, 32), torch.tensor([0, 1, 2, -1, -1, 0])
    logits, router, emb = model.forward_dual(x, p)
    ref, ref_router = model.forward_with_router(x, p)
    assert torch.allclose(logits, ref, atol=1e-5) and torch.allclose(router, ref_router)
    assert emb.shape == (6, 128)
    # an image's embedding follows its route: changing the AP expert changes only the AP image and the unknowns
    with torch.no_grad():
        model.zeroshot.image_proj["AP"].weight.add_(1.0)
    emb2 = model.forward_dual(x, p)[2]
    changed = (emb2 - emb).abs().amax(1) > 1e-6
    assert changed.tolist() == [False, True, False, True, True, False]


def test_parameter_groups_of_the_head():
    model = build_model("tiny", LS.num_seen, image_size=32, zeroshot=ZeroShotSpec(image_encoder="separate",
                                                                                    text_adapter=True))
    groups = {parameter_group(k) for k in model.state_dict() if k.startswith("zeroshot.")}
    assert groups == {"zeroshot.image_encoder", "zeroshot.image_proj.encoder", "zeroshot.text_adapter",
                      "zeroshot.text_proj", "zeroshot.logit_scale", "zeroshot.logit_bias"}
    experts = build_model("tiny", LS.num_seen, image_size=32, zeroshot=ZeroShotSpec())
    assert {parameter_group(k) for k in experts.state_dict() if ".image_proj." in k} == {
        "zeroshot.image_proj.PA", "zeroshot.image_proj.AP", "zeroshot.image_proj.LAT"}


def test_config_is_checked():
    assert zeroshot_spec({}, LS) is None
    spec = zeroshot_spec({"zeroshot": True, "zeroshot-proxy-classes": "nodule, Pleural Thickening"}, LS)
    assert spec.proxy_classes == ("Nodule", "pleural thickening")
    assert spec.proxy_indices(LS) == [LS.seen.index("Nodule"), LS.seen.index("pleural thickening")]
    with pytest.raises(ZeroShotConfigError, match="Bulla.*not a seen class"):
        zeroshot_spec({"zeroshot": True, "zeroshot-proxy-classes": "Bulla"}, LS)
    with pytest.raises(ZeroShotConfigError, match="zeroshot-loss"):
        zeroshot_spec({"zeroshot": True, "zeroshot-loss": "triplet"}, LS)
    with pytest.raises(ZeroShotDPError, match="separate"):
        check_dp_settings("experts", "siglip")
    with pytest.raises(ZeroShotDPError, match="siglip"):
        check_dp_settings("separate", "clip")


def test_training_texts_reports_else_labels_without_hidden_classes():
    n, c = 3, len(LS.classes)
    targets, mask = np.zeros((n, c), np.float32), np.ones((n, c), np.float32)
    nodule, effusion, cardio = LS.seen.index("Nodule"), LS.seen.index("pleural effusion"), LS.seen.index("cardiomegaly")
    targets[1, [nodule, effusion, cardio]] = 1
    targets[2, nodule] = 1
    report = "Small round opacity in the lung. Normal heart size. Impression: nodule; no effusion."
    data = SiteData(np.zeros((n, 8, 8), np.uint8), np.zeros(n, np.int64), targets, mask, (report, "", ""))
    texts = training_texts(data, LS, hidden={nodule}, unit="report")
    assert texts == [[report], ["Chest radiograph showing cardiomegaly and pleural effusion."],
                     ["No acute cardiopulmonary abnormality."]]  # image 2's only finding is a hidden (proxy) class
    texts = training_texts(data, LS, hidden={nodule}, unit="sentence")
    assert texts[0] == ["Small round opacity in the lung.", "Normal heart size.", "Impression: nodule;", "no effusion."]
    assert texts[1] == ["Chest radiograph showing cardiomegaly.", "Chest radiograph showing pleural effusion."]
    assert "nodule" in label_sentence(targets[1], mask[1], LS.seen, set()).lower()
    flat = " ".join(t for ts in texts for t in ts).lower()
    assert all(name.lower() not in flat for name in LS.zeroshot)


def test_batch_texts_are_distinct_with_their_owners(tmp_path, monkeypatch):
    from client import zeroshot as zsmod

    monkeypatch.setattr(zsmod.SentenceCache, "encode",
                        lambda self, sentences: np.stack([np.full(384, len(s), np.float32) for s in sentences]))
    n, c = 3, len(LS.classes)
    data = SiteData(np.zeros((n, 8, 8), np.uint8), np.zeros(n, np.int64), np.zeros((n, c), np.float32),
                    np.ones((n, c), np.float32), ("A. B.", "B. C.", ""))
    texts = zsmod.training_text_features(data, tmp_path, LS, set(), "sentence")
    table, member = texts.batch(np.array([0, 1, 2]))
    assert table.shape == (4, 384)  # A., B., C., no finding: B. shared by images 0 and 1
    assert member.tolist() == [[True, True, False, False], [False, True, True, False], [False, False, False, True]]
    assert torch.allclose(texts.features[0], table[:2].mean(0))
    table, member = texts.batch(np.array([2, 1]))
    assert member.sum(1).tolist() == [1, 2] and table.shape[0] == 3


def test_synthetic_reports_never_name_held_out_classes():
    from client.synth.catalog import load_catalog
    from client.synth.reports import describe, write_report

    cat = load_catalog("cxrlt2026")
    rng = np.random.default_rng(0)
    held = [cat.by_name(n) for n in LS.zeroshot]
    for spec in held:
        report = write_report([spec, cat.by_name("Nodule")], rng, cat.held_out)
        text = " ".join(report.values()).lower()
        assert spec.name.lower() not in text, text
        assert "nodule" in text and describe(spec).lower() in text  # seen classes named, held-out described


def test_zero_shot_dp_gradients_equal_clipped_micro_batches():
    torch.manual_seed(0)
    model = build_model("tiny", LS.num_seen, image_size=32, dp_compatible=True,
                        zeroshot=ZeroShotSpec(image_encoder="separate"))
    head = model.zeroshot
    b, c = 4, LS.num_seen
    x, text, prompts = torch.randn(b, 1, 32, 32), torch.randn(b, 384), torch.randn(c, 384)
    y = (torch.rand(b, c) < 0.2).float()
    m = (torch.rand(b, c) < 0.8).float()
    clip = 0.5
    summed, losses, norms = clipped_zeroshot_sum(head, x, text, prompts, y, m, clip)
    expected = {k: torch.zeros_like(v) for k, v in head.named_parameters()}
    for i in range(b):
        head.zero_grad()
        img, txt = head(x[i:i + 1], torch.cat([text[i:i + 1], prompts]))
        logits = head.logit_scale.exp() * (torch.nn.functional.normalize(img, dim=-1)
                                           @ torch.nn.functional.normalize(txt, dim=-1).T)[0] + head.logit_bias
        z, w = torch.cat([torch.ones(1), 2 * y[i] - 1]), torch.cat([torch.ones(1), m[i]])
        loss = -(w * torch.nn.functional.logsigmoid(z * logits)).sum()
        loss.backward()
        assert float(losses[i]) == pytest.approx(float(loss.detach()), rel=1e-4)
        norm = math.sqrt(sum(float(p.grad.pow(2).sum()) for p in head.parameters()))
        assert float(norms[i]) == pytest.approx(norm, rel=1e-3)
        for k, p in head.named_parameters():
            expected[k] += p.grad * min(1.0, clip / (norm + 1e-6))
    for k, g in summed.items():
        assert torch.allclose(g, expected[k], atol=1e-5, rtol=1e-3), k


def test_bootstrap_interval_covers_and_tightens():
    spec = HistogramSpec()
    rng = np.random.default_rng(0)

    def hists(n):
        y = (rng.random((n, 3)) < 0.2).astype(float)
        p = 1 / (1 + np.exp(-(rng.normal(size=(n, 3)) + 1.0 * y - 1.5)))
        return spec.histograms(y, p), per_class_metrics(y, p)

    (pos, neg), exact = hists(300)
    ci = bootstrap_macro(pos, neg, spec, 400, seed=1)
    point = spec.metrics(pos, neg)
    assert ci["mAUC"][0] < np.nanmean(point["auroc"]) < ci["mAUC"][1]
    assert ci["mAP"][0] < np.nanmean(point["ap"]) < ci["mAP"][1]
    assert bootstrap_macro(pos, neg, spec, 400, seed=1) == ci  # seeded
    (pos4, neg4), _ = hists(3000)
    wide, narrow = ci["mAUC"][1] - ci["mAUC"][0], np.subtract(*bootstrap_macro(pos4, neg4, spec, 400)["mAUC"][::-1])
    assert narrow < wide
    # a perfect ranking stays perfect in every replicate
    y = np.array([[1.0], [1.0], [0.0], [0.0], [0.0]])
    pos, neg = spec.histograms(y, np.array([[0.9], [0.8], [0.2], [0.1], [0.3]]))
    assert bootstrap_macro(pos, neg, spec, 100)["mAUC"] == (1.0, 1.0)


def test_server_pools_zero_shot_summaries_like_one_site():
    from client.evaluation import evaluation_summary, merge_small_bins
    from server.zeroshot_eval import parse_zero_shot, proxy_score, zero_shot_round, zero_shot_sets

    spec = HistogramSpec()
    rng = np.random.default_rng(3)
    sets = zero_shot_sets(("A", "B"), ("P",))
    sites, ys, ps = {}, [], {}
    for s in ("s1", "s2"):
        n = 200
        y = (rng.random((n, 2)) < 0.3).astype(np.float32)
        proj = rng.integers(-1, 3, n)
        metrics = {}
        for name, classes in sets.items():
            yy = y[:, :len(classes)]
            p = 1 / (1 + np.exp(-(rng.normal(size=yy.shape) + yy)))
            ps.setdefault(name, []).append(p)
            part = evaluation_summary(p, yy, np.ones_like(yy), proj, spec, min_count=5)
            metrics.update({f"zs.{name}.{k}": v for k, v in part.items()})
        ys.append(y)
        sites[s] = parse_zero_shot(metrics, sets, spec)
    rows, summary = zero_shot_round(sites, sets, spec, replicates=200)
    y = np.concatenate(ys)
    for name, classes in sets.items():
        p = np.concatenate(ps[name])
        yy = y[:, :len(classes)]
        # the sum of what the sites released (bins merged under their small-count rule) ...
        released = [merge_small_bins(*spec.histograms(yk[:, :len(classes)], pk), 5) for yk, pk in zip(ys, ps[name])]
        pooled = spec.metrics(sum(r[0] for r in released), sum(r[1] for r in released))
        assert summary[name]["pooled"]["all"]["mAUC"] == pytest.approx(float(np.nanmean(pooled["auroc"])))
        direct = spec.metrics(*spec.histograms(yy, p))  # ... stays close to the pooled data's own figure
        assert summary[name]["pooled"]["all"]["mAUC"] == pytest.approx(float(np.nanmean(direct["auroc"])), abs=0.02)
        lo, hi = summary[name]["ci"]["mAUC"]
        assert lo <= summary[name]["pooled"]["all"]["mAUC"] <= hi
        for k, s in enumerate(("s1", "s2")):  # each site's own interval and positives, from what it released
            assert summary[name]["site_n_pos"][s] == dict(zip(classes, released[k][0].sum(1).tolist()))
            lo, hi = summary[name]["site_ci"][s]["mAUC"]
            assert lo < summary[name]["site_released"][s]["mAUC"] < hi
            own = spec.metrics(*released[k])  # the site's own figure from what it released
            assert summary[name]["site_released"][s]["mAUC"] == pytest.approx(float(np.nanmean(own["auroc"])))
            assert (s, "all", None, f"zs_{name}_mAUC_lo", lo, 200) in rows
        assert sum(sum(summary[name]["site_n_pos"][s].values()) for s in ("s1", "s2")) == sum(
            summary[name]["n_pos"].values())
    assert proxy_score(summary) == summary["proxy"]["pooled"]["all"]["mAUC"]
    names = {r[3] for r in rows}
    assert {"zs_descriptive_mAUC", "zs_descriptive_mAUC_lo", "zs_template_auroc", "zs_proxy_ap"} <= names
    # a site that released nothing (every class under its min_count) has no interval, and the pooled figures and
    # intervals are those of the other sites
    empty = {k: np.zeros_like(v) if "hist" in k else v for k, v in metrics.items()}
    alone = zero_shot_round({"s2": sites["s2"]}, sets, spec, replicates=200)[1]
    with_empty = zero_shot_round({"s2": sites["s2"], "s3": parse_zero_shot(empty, sets, spec)}, sets, spec, 200)[1]
    assert with_empty["descriptive"]["site_ci"]["s3"] == {}
    assert not any(with_empty["random"]["site_n_pos"]["s3"].values())
    assert with_empty["descriptive"]["ci"] == alone["descriptive"]["ci"]
