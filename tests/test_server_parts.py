import numpy as np
import pytest
import torch
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from server.federated_eval import parse_site_eval, round_metrics
from server.records import from_record, to_record
from server.registry import Metric, Registry, resolve_db_url
from server.validation import reference_of, validate_update
from shared_models.metrics import HistogramSpec, per_class_metrics


def _wire(state: dict) -> dict:
    return from_record(to_record(state))


def test_update_validation():
    reference = reference_of(_wire({"w": torch.zeros(2, 3), "b": torch.zeros(3)}))
    assert validate_update(_wire({"w": torch.ones(2, 3), "b": torch.ones(3)}), reference) is None
    assert "non-finite" in validate_update(_wire({"w": torch.full((2, 3), float("nan")),
                                                  "b": torch.ones(3)}), reference)
    assert "shape" in validate_update(_wire({"w": torch.ones(3, 2), "b": torch.ones(3)}), reference)
    assert "names" in validate_update(_wire({"w": torch.ones(2, 3)}), reference)


def test_db_url_override(monkeypatch, tmp_path):
    monkeypatch.delenv("FEDCHEST_DB_URL", raising=False)
    assert resolve_db_url(str(tmp_path / "r.db")) == f"sqlite:///{tmp_path / 'r.db'}"
    monkeypatch.setenv("FEDCHEST_DB_URL", "sqlite:///elsewhere.db")
    assert resolve_db_url(str(tmp_path / "r.db")) == "sqlite:///elsewhere.db"


def _site_summary(y, p, proj, spec):
    from client.evaluation import evaluation_summary

    return evaluation_summary(p, y, np.ones_like(y), proj, spec)


def test_round_metrics_per_site_exact_and_pooled_from_histograms(tmp_path):
    rng = np.random.default_rng(0)
    spec = HistogramSpec()
    classes = ("a", "b", "c")
    sites = {}
    ys, ps = [], []
    for name, n in (("s1", 120), ("s2", 200)):
        y = (rng.random((n, 3)) < [0.3, 0.1, 0.05]).astype(np.float32)
        p = 1 / (1 + np.exp(-(rng.normal(-2, 1.5, (n, 3)) + 2 * y)))
        proj = rng.integers(-1, 3, n)
        sites[name] = parse_site_eval(_site_summary(y, p, proj, spec), 3, spec)
        ys.append(y)
        ps.append(p)
        exact = per_class_metrics(y, p)
        np.testing.assert_allclose(sites[name]["all"].per_class["ap"], exact["ap"], equal_nan=True)
    groups = np.array(["head", "medium", "tail"], dtype=object)
    rows, summary = round_metrics(sites, groups, classes, spec)
    y, p = np.concatenate(ys), np.concatenate(ps)
    q = spec.bin_index(p).astype(float)
    from sklearn.metrics import average_precision_score

    pooled_ap = np.mean([average_precision_score(y[:, j], q[:, j]) for j in range(3)])
    assert summary["pooled"]["mAP"] == pytest.approx(pooled_ap, abs=1e-9)
    pbp = summary["pooled_by_projection"]
    assert summary["frontal_lateral_gap"]["pooled"] == pytest.approx(
        (pbp["PA"]["mAP"] + pbp["AP"]["mAP"]) / 2 - pbp["LAT"]["mAP"])
    assert set(summary["frontal_lateral_gap"]) == {"s1", "s2", "pooled"}
    assert summary["baseline"]["prevalence_mAP"] == pytest.approx(y.astype(np.float64).mean(0).mean(), abs=1e-9)
    # a row per (site or pooled) x scope x class x metric (ap, auroc, f1, eval_prevalence), plus aggregates
    per_class_rows = [r for r in rows if r[2] is not None]
    assert len(per_class_rows) == 3 * 4 * 3 * 4
    prev = {(r[0], r[1], r[2]): (r[4], r[5]) for r in per_class_rows if r[3] == "eval_prevalence"}
    value, annotated = prev[("s1", "all", prev_class := next(iter(prev))[2])]
    assert annotated > 0 and 0 <= value <= 1, prev_class
    reg = Registry(f"sqlite:///{tmp_path / 'reg.db'}")
    run = reg.create_run("t", "FedChestAvg", "routed-experts", "x", 1, {}, True)
    reg.add_metrics(run, 1, rows)
    with Session(reg.engine) as s:
        assert s.scalar(select(func.count()).select_from(Metric)) == len(rows)
    assert "pooled_ci" not in summary  # intervals only when asked (run config pooled-ci-replicates)
    _, with_ci = round_metrics(sites, groups, classes, spec, ci_replicates=200, seed=1)
    for key in ("mAP", "mAUC", "mF1"):
        lo, hi = with_ci["pooled_ci"][key]
        assert lo < with_ci["pooled"][key] < hi


def test_small_counts_never_leave_evaluation():
    """A class with fewer than k positives (or negatives) in a scope sends no histogram and no local metric; a
    scope with fewer than k images sends nothing; the server records how many classes were withheld."""
    from client.evaluation import evaluation_summary
    from server.federated_eval import parse_site_eval, round_metrics

    rng = np.random.default_rng(1)
    spec = HistogramSpec()
    n = 60
    y = np.zeros((n, 3), np.float32)
    y[:3, 0] = 1  # 3 positives: below k = 5
    y[:30, 1] = 1  # 30 positives, 30 negatives: kept
    y[:57, 2] = 1  # 3 negatives: below k
    proj = np.zeros(n, np.int64)
    proj[:4] = 2  # 4 lateral images: the LAT scope is below k
    p = rng.random((n, 3))
    out = evaluation_summary(p, y, np.ones_like(y), proj, spec, min_count=5)
    pos = np.asarray(out["hist_pos.all"]).reshape(3, spec.bins)
    neg = np.asarray(out["hist_neg.all"]).reshape(3, spec.bins)
    assert pos[0].sum() == neg[0].sum() == 0 and pos[2].sum() == neg[2].sum() == 0
    assert pos[1].sum() == 30 and neg[1].sum() == 30
    assert np.isnan(out["ap.all"][0]) and np.isnan(out["auroc.all"][2]) and not np.isnan(out["ap.all"][1])
    assert out["withheld.all"] == 2 and out["n.all"] == n
    assert out["n.LAT"] == 0 and sum(out["hist_pos.LAT"]) + sum(out["hist_neg.LAT"]) == 0
    assert out["n.PA"] == 56
    unfiltered = evaluation_summary(p, y, np.ones_like(y), proj, spec)
    assert unfiltered["withheld.all"] == 0 and sum(unfiltered["hist_pos.all"]) == 3 + 30 + 57

    rows, _ = round_metrics({"s1": parse_site_eval(out, 3, spec)}, np.array(["head"] * 3), ("a", "b", "c"), spec)
    assert ("s1", "all", None, "withheld_classes", 2.0, None) in rows
