import numpy as np
import pytest
from sklearn.metrics import average_precision_score, f1_score, roc_auc_score

from shared_models.metrics import (
    HistogramSpec,
    bootstrap_macro,
    constant_predictor_ap,
    per_class_metrics,
    prevalence,
    prevalence_groups,
    summarise,
)


def _sk(y, s):
    return average_precision_score(y, s), roc_auc_score(y, s), f1_score(y, s > 0.5, zero_division=0)


@pytest.mark.parametrize("seed", range(5))
def test_per_class_matches_sklearn_on_random_inputs(seed):
    rng = np.random.default_rng(seed)
    y = (rng.random((300, 6)) < rng.uniform(0.02, 0.5, 6)).astype(float)
    y[0, :] = 1  # every class has a positive
    y[1, :] = 0  # and a negative
    s = rng.random((300, 6))
    s[:, 1] = np.round(s[:, 1], 1)  # heavy ties
    s[:, 2] = 0.5  # constant scores exactly at the threshold
    s[:, 3] = np.clip(y[:, 3] * 0.3 + rng.random(300) * 0.7, 0, 1)  # informative
    pc = per_class_metrics(y, s)
    for j in range(6):
        ap, auc, f1 = _sk(y[:, j], s[:, j])
        assert abs(pc["ap"][j] - ap) < 1e-9
        assert abs(pc["auroc"][j] - auc) < 1e-9
        assert abs(pc["f1"][j] - f1) < 1e-9


def test_class_without_positives_is_undefined_and_skipped_by_means():
    y = np.array([[1, 0], [0, 0], [1, 0], [0, 0]], float)
    s = np.array([[0.9, 0.2], [0.1, 0.8], [0.7, 0.1], [0.4, 0.3]])
    pc = per_class_metrics(y, s)
    assert np.isnan(pc["ap"][1]) and np.isnan(pc["auroc"][1]) and np.isnan(pc["f1"][1])
    summary = summarise(pc)
    assert summary["mAP"] == pytest.approx(average_precision_score(y[:, 0], s[:, 0]))


def test_masked_entries_are_ignored():
    rng = np.random.default_rng(7)
    y = (rng.random((200, 3)) < 0.3).astype(float)
    s = rng.random((200, 3))
    mask = (rng.random((200, 3)) < 0.6).astype(float)
    pc = per_class_metrics(y, s, mask)
    for j in range(3):
        sel = mask[:, j] > 0
        ap, auc, f1 = _sk(y[sel, j], s[sel, j])
        assert pc["ap"][j] == pytest.approx(ap, abs=1e-9)
        assert pc["auroc"][j] == pytest.approx(auc, abs=1e-9)
        assert pc["f1"][j] == pytest.approx(f1, abs=1e-9)
        assert pc["n_pos"][j] == int(y[sel, j].sum())


def test_prevalence_groups_thresholds():
    groups = prevalence_groups(np.array([200, 50, 5, 0, 10]), np.array([1000, 1000, 1000, 0, 1000]))
    assert list(groups) == ["head", "medium", "tail", "", "medium"]


def test_group_means():
    pc = {"ap": np.array([0.9, 0.5, 0.1, np.nan]), "auroc": np.ones(4), "f1": np.zeros(4)}
    s = summarise(pc, np.array(["head", "medium", "tail", "tail"], dtype=object))
    assert s["head_mAP"] == pytest.approx(0.9) and s["tail_mAP"] == pytest.approx(0.1)
    assert s["mAP"] == pytest.approx(0.5)


def test_constant_predictor_ap_is_test_prevalence():
    rng = np.random.default_rng(3)
    y = (rng.random((500, 4)) < [0.3, 0.05, 0.01, 0.0]).astype(float)
    expected = [average_precision_score(y[:, j], np.full(500, 0.2)) for j in range(3)]
    got = constant_predictor_ap(y.sum(0), (1 - y).sum(0))
    np.testing.assert_allclose(got[:3], expected, atol=1e-12)
    assert np.isnan(got[3])


@pytest.mark.parametrize("seed", range(3))
def test_histogram_metrics_equal_sklearn_on_quantised_scores(seed):
    rng = np.random.default_rng(seed)
    spec = HistogramSpec()
    y = (rng.random((1000, 5)) < [0.4, 0.1, 0.03, 0.2, 0.01]).astype(float)
    y[0] = 1
    logits = rng.normal(-2.5, 2.0, (1000, 5)) + 2.5 * y
    p = 1 / (1 + np.exp(-logits))
    pos, neg = spec.histograms(y, p)
    hm = spec.metrics(pos, neg)
    q = spec.bin_index(p).astype(float)  # the quantised score
    for j in range(5):
        assert hm["ap"][j] == pytest.approx(average_precision_score(y[:, j], q[:, j]), abs=1e-9)
        assert hm["auroc"][j] == pytest.approx(roc_auc_score(y[:, j], q[:, j]), abs=1e-9)
        assert hm["f1"][j] == pytest.approx(f1_score(y[:, j], p[:, j] > 0.5), abs=1e-12)  # exact: edge at p=0.5
    # the documented binning error against exact pooled metrics on raw scores
    exact = per_class_metrics(y, p)
    assert np.max(np.abs(hm["ap"] - exact["ap"])) < 0.01
    assert np.max(np.abs(hm["auroc"] - exact["auroc"])) < 0.005


def test_pooled_histograms_are_sums_of_site_histograms():
    rng = np.random.default_rng(11)
    spec = HistogramSpec()
    ys = [(rng.random((n, 3)) < 0.2).astype(float) for n in (100, 250, 60)]
    ps = [rng.random(y.shape) for y in ys]
    summed = [sum(h) for h in zip(*(spec.histograms(y, p) for y, p in zip(ys, ps)))]
    direct = spec.histograms(np.concatenate(ys), np.concatenate(ps))
    np.testing.assert_array_equal(summed[0], direct[0])
    np.testing.assert_array_equal(summed[1], direct[1])


def test_histogram_spec_requires_even_bins():
    with pytest.raises(ValueError):
        HistogramSpec(bins=7)


def test_a_class_with_one_positive_has_ap_and_auroc():
    """One positive ranked second of four: AP = precision at its rank = 1/2, AUROC = 2 of 3 negatives below it;
    the same from the histograms."""
    y = np.array([[0], [1], [0], [0]], np.float32)
    s = np.array([[0.9], [0.8], [0.3], [0.1]])
    exact = per_class_metrics(y, s)
    assert exact["ap"][0] == pytest.approx(0.5) and exact["auroc"][0] == pytest.approx(2 / 3)
    assert exact["f1"][0] == pytest.approx(2 / 3)
    one_negative = per_class_metrics(np.array([[1], [0], [1]]), np.array([[0.9], [0.5], [0.2]]))
    assert one_negative["auroc"][0] == pytest.approx(0.5)  # 1 of 2 positives above the only negative
    assert constant_predictor_ap(np.array([1]), np.array([3])).tolist() == [0.25]
    assert prevalence(np.array([1]), np.array([1])).tolist() == [1.0]
    spec = HistogramSpec(240, 12.0)
    binned = spec.metrics(*spec.histograms(y, s))
    assert binned["ap"][0] == pytest.approx(0.5) and binned["auroc"][0] == pytest.approx(2 / 3)
    assert binned["f1"][0] == pytest.approx(2 / 3)  # threshold 0.5: tp 1, fp 1, fn 0


def _check_bootstrap_by_hand(pos, neg, spec, reps, got) -> None:
    """``got`` (bootstrap_macro at seed 4, level 0.95) against the same bootstrap written out with scikit-learn."""
    draw = np.random.default_rng(4)
    per = {k: np.zeros((reps, len(pos))) for k in ("mAP", "mAUC", "mF1")}
    bins = np.arange(spec.bins)
    for j in range(len(pos)):
        ps = draw.multinomial(pos[j].sum(), pos[j] / pos[j].sum(), size=reps)
        ns = draw.multinomial(neg[j].sum(), neg[j] / neg[j].sum(), size=reps)
        for r in range(reps):
            scores = np.concatenate([np.repeat(bins, ps[r]), np.repeat(bins, ns[r])])
            truth = np.concatenate([np.ones(ps[r].sum()), np.zeros(ns[r].sum())])
            per["mAUC"][r, j] = roc_auc_score(truth, scores)
            per["mAP"][r, j] = average_precision_score(truth, scores)
            per["mF1"][r, j] = f1_score(truth, scores >= spec.bins // 2)
    for k, v in per.items():
        macro = v.mean(1)
        assert got[k] == pytest.approx((np.quantile(macro, 0.025), np.quantile(macro, 0.975)), abs=1e-9), k


def test_bootstrap_macro_is_a_stratified_percentile_bootstrap_by_hand():
    """bootstrap_macro against the same bootstrap written out: per class,
    positives and negatives redrawn in their numbers from their own histograms (the generator's draws in the same
    order), AUROC / AP by scikit-learn on the bin indices, F1 at the middle edge, the macro mean per replicate, and
    the 2.5 / 97.5 percentiles."""
    spec = HistogramSpec(8, 4.0)
    rng = np.random.default_rng(3)
    y = (rng.random((60, 2)) < 0.4).astype(np.float32)
    p = np.clip(0.35 * y + 0.65 * rng.random((60, 2)), 0.01, 0.99)
    pos, neg = spec.histograms(y, p)
    reps = 200
    got = bootstrap_macro(pos, neg, spec, reps, seed=4, level=0.95)
    _check_bootstrap_by_hand(pos, neg, spec, reps, got)
    # a bin holding as many positives as negatives still counts as occupied (it would not if occupancy were
    # read from their difference)
    tied_pos, tied_neg = np.array([[0, 3, 0, 2, 0, 4, 1, 0]]), np.array([[2, 3, 5, 2, 1, 0, 1, 0]])
    _check_bootstrap_by_hand(tied_pos, tied_neg, spec, reps, bootstrap_macro(tied_pos, tied_neg, spec, reps, seed=4))
    narrow = bootstrap_macro(pos, neg, spec, reps, seed=4, level=0.5)
    assert got["mAUC"][0] < narrow["mAUC"][0] < narrow["mAUC"][1] < got["mAUC"][1]
    single = np.zeros((1, spec.bins), np.int64)
    single[0, 6] = 1  # a class with one positive has an interval too
    assert np.isfinite(bootstrap_macro(single, neg[:1], spec, 50)["mAUC"]).all()
    one = (pos[:1], neg[:1], spec)
    assert bootstrap_macro(*one) == bootstrap_macro(*one, 1000, seed=0, level=0.95)  # the defaults


def test_targets_and_scores_of_other_shapes_are_refused():
    with pytest.raises(ValueError, match=r"targets \(4, 2\) and scores \(4, 3\) must both be \(N, C\)"):
        per_class_metrics(np.zeros((4, 2)), np.zeros((4, 3)))
    with pytest.raises(ValueError, match="must both be"):
        per_class_metrics(np.zeros(4), np.zeros(4))


def test_counts_prevalence_boundaries_and_f1_without_positives():
    y = np.array([[1, 0], [0, 0], [1, 0]], np.float32)
    s = np.array([[0.9, 0.7], [0.2, 0.1], [0.4, 0.3]])
    exact = per_class_metrics(y, s)
    assert exact["n_pos"].tolist() == [2, 0] and exact["n_neg"].tolist() == [1, 3]
    assert exact["f1"][0] == pytest.approx(2 / 3) and np.isnan(exact["f1"][1])
    spec = HistogramSpec()
    binned = spec.metrics(*spec.histograms(y, s))
    assert binned["n_neg"].tolist() == [1, 3] and np.isnan(binned["f1"][1])  # no positives: F1 undefined
    assert prevalence(np.array([1, 0]), np.array([2, 0]), empty=0.0).tolist() == [0.5, 0.0]
    groups = prevalence_groups(np.array([100, 10, 9]), np.array([1000, 1000, 1000]))  # 0.10 and 0.01: medium
    assert list(groups) == ["medium", "medium", "tail"]
    with pytest.raises(ValueError):
        HistogramSpec(bins=9)


def test_histograms_leave_out_masked_entries():
    y = np.array([[1, 0], [0, 1], [1, 1]], np.float32)
    p = np.array([[0.9, 0.2], [0.3, 0.8], [0.6, 0.4]])
    mask = np.array([[1, 0], [1, 1], [0, 1]], np.float32)
    spec = HistogramSpec(8, 4.0)
    pos, neg = spec.histograms(y, p, mask)
    assert pos.sum(1).tolist() == [1, 2] and neg.sum(1).tolist() == [1, 0]
    whole = spec.histograms(y, p)
    assert whole[0].sum(1).tolist() == [2, 2] and whole[1].sum(1).tolist() == [1, 1]
