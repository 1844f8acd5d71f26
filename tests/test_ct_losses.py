"""The CT model's losses against their formulas and its metrics against brute-force references (issue 11)."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score

from shared_models.ct.losses import depth_targets, localisation_loss, pos_weights, prompt_disease_loss
from shared_models.ct.metrics import localisation_mae_mm, per_class_youden, recall_at_k, youden
from shared_models.zeroshot.losses import siglip_loss


def _cos(a, b):
    return float(a @ b / (a.norm() * b.norm()))


def test_prompt_disease_loss_is_the_masked_weighted_bce_of_the_prompt_logit_difference():
    g = torch.Generator().manual_seed(0)
    v, p, n = torch.randn(4, 8, generator=g), torch.randn(3, 8, generator=g), torch.randn(3, 8, generator=g)
    y = torch.tensor([[1, 0, 1], [0, 0, 1], [1, 1, 0], [0, 1, 0]], dtype=torch.float32)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1], [0, 1, 1], [1, 1, 1]], dtype=torch.float32)
    t, w = torch.tensor(math.log(10.0)), torch.tensor([2.0, 1.0, 20.0])
    total, count = 0.0, 0
    for i in range(4):
        for c in range(3):
            if not mask[i, c]:
                continue
            z = 10.0 * (_cos(v[i], p[c]) - _cos(v[i], n[c]))
            sig = 1 / (1 + math.exp(-z))
            total += -(w[c] * y[i, c] * math.log(sig) + (1 - y[i, c]) * math.log(1 - sig))
            count += 1
    got = prompt_disease_loss(v, p, n, t, y, mask, w)
    assert abs(float(got) - total / count) < 1e-5
    np.testing.assert_allclose(pos_weights(torch.tensor([2, 0, 1]), torch.tensor([10, 5, 100])), [4.0, 1.0, 20.0])


def test_siglip_on_volume_report_pairs_matches_the_sum_of_its_pair_terms():
    g = torch.Generator().manual_seed(1)
    v, r = torch.randn(5, 6, generator=g), torch.randn(5, 6, generator=g)
    t, b = torch.tensor(math.log(10.0)), torch.tensor(-10.0)
    ref = 0.0
    for i in range(5):
        for j in range(5):
            z = 1.0 if i == j else -1.0
            ref += -math.log(1 / (1 + math.exp(-z * (10.0 * _cos(v[i], r[j]) - 10.0))))
    assert abs(float(siglip_loss(v, r, t, b)) - ref / 5) < 1e-4


def test_depth_targets_are_renormalised_gaussians_on_valid_depths():
    valid = torch.tensor([[1, 1, 1, 1, 1, 1, 0, 0]], dtype=torch.bool)
    q = depth_targets(torch.tensor([4]), valid, sigma=2.0)[0]
    raw = torch.tensor([math.exp(-((z - 4) ** 2) / 8) if z < 6 else 0.0 for z in range(8)])
    torch.testing.assert_close(q, raw / raw.sum())
    assert float(q.sum()) == 1.0 or abs(float(q.sum()) - 1) < 1e-6


def test_localisation_loss_is_soft_cross_entropy_at_tau():
    g = torch.Generator().manual_seed(2)
    slices, snip = torch.randn(2, 6, 4, generator=g), torch.randn(2, 4, generator=g)
    valid = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]], dtype=torch.bool)
    pos = torch.tensor([2, 1])
    ref = 0.0
    for i in range(2):
        zs = [z for z in range(6) if valid[i, z]]
        logits = torch.tensor([_cos(slices[i, z], snip[i]) / 0.1 for z in zs])
        logp = torch.log_softmax(logits, 0)
        q = torch.tensor([math.exp(-((z - int(pos[i])) ** 2) / 8) for z in zs])
        q = q / q.sum()
        ref += float(-(q * logp).sum())
    assert abs(float(localisation_loss(slices, snip, pos, valid)) - ref / 2) < 1e-4
    # a slice that points at the snippet at the right depth costs less than at the wrong one
    s = F.normalize(torch.randn(1, 10, 16, generator=g), dim=-1)
    right = localisation_loss(s, s[:, 7], torch.tensor([7]), torch.ones(1, 10, dtype=torch.bool))
    wrong = localisation_loss(s, s[:, 7], torch.tensor([1]), torch.ones(1, 10, dtype=torch.bool))
    assert float(right) < float(wrong)


def test_recall_at_k_matches_a_loop():
    rng = np.random.default_rng(3)
    t, v = rng.normal(size=(30, 8)), rng.normal(size=(30, 8))
    v[:10] = t[:10] + 0.1 * rng.normal(size=(10, 8))  # ten reports close to their volumes
    got = recall_at_k(t, v, (1, 5, 10))
    for k in (1, 5, 10):
        hits = 0
        for i in range(30):
            sims = [_cos(torch.tensor(t[i]), torch.tensor(v[j])) for j in range(30)]
            hits += sum(s > sims[i] for s in sims) < k
        assert got[k] == hits / 30
    assert got[1] >= 10 / 30


def test_youden_threshold_and_f1_match_brute_force():
    rng = np.random.default_rng(4)
    y = rng.random(60) < 0.3
    s = np.round(rng.normal(size=60) + 1.2 * y, 1)  # rounded: ties
    auroc, thr, f1 = youden(s, y)
    assert abs(auroc - roc_auc_score(y, s)) < 1e-12
    best = max(np.unique(s), key=lambda th: ((s >= th) & y).sum() / y.sum() - ((s >= th) & ~y).sum() / (~y).sum())
    pred = s >= best
    tp, fp, fn = (pred & y).sum(), (pred & ~y).sum(), (~pred & y).sum()
    j = lambda th: ((s >= th) & y).sum() / y.sum() - ((s >= th) & ~y).sum() / (~y).sum()  # noqa: E731
    assert abs(j(thr) - j(best)) < 1e-12 and abs(f1 - 2 * tp / (2 * tp + fp + fn)) < 1e-12
    out = per_class_youden(np.c_[s, s], np.c_[y, np.zeros(60)], np.ones((60, 2)))
    assert abs(out["auroc"][0] - auroc) < 1e-12 and np.isnan(out["auroc"][1])  # no positives: undefined


def test_localisation_mae_in_mm():
    assert localisation_mae_mm(np.array([3, 5, 10]), np.array([3, 7, 6]), 12.0) == 24.0
    assert np.isnan(localisation_mae_mm(np.array([]), np.array([]), 12.0))


def test_youden_from_histograms_equals_brute_force_on_quantised_scores():
    from shared_models.ct.metrics import youden, youden_from_histograms
    from shared_models.metrics import HistogramSpec

    rng = np.random.default_rng(3)
    spec = HistogramSpec(bins=40, limit=6.0)
    y = (rng.random((300, 4)) < [0.1, 0.3, 0.5, 0.0]).astype(np.float32)
    probs = 1 / (1 + np.exp(-(rng.normal(size=(300, 4)) + 1.5 * y)))
    pos, neg = spec.histograms(y, probs)
    got = youden_from_histograms(pos, neg)
    q = spec.bin_index(probs).astype(float)  # the quantised score is the bin index
    for c in range(3):
        _, threshold, f1 = youden(q[:, c], y[:, c])
        assert got["bin"][c] == threshold and np.isclose(got["f1"][c], f1)
    assert np.isnan(got["f1"][3])  # no positives


def test_retrieval_hits_pool_to_the_recall_over_all_queries():
    from shared_models.ct.metrics import recall_at_k, retrieval_hits

    rng = np.random.default_rng(4)
    t, v = rng.normal(size=(30, 8)), rng.normal(size=(30, 8))
    hits = retrieval_hits(t, v)
    assert hits == {k: int(round(r * 30)) for k, r in recall_at_k(t, v).items()}
    assert retrieval_hits(t[:0], v[:0]) == {1: 0, 5: 0, 10: 0}
