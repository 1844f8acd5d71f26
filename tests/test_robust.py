"""Update validation before aggregation and the robust aggregation rules (issue 10): every kind of bad update is
rejected with its reason recorded and the global model untouched; each rule by hand and group-aware."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord, MetricRecord, RecordDict
from sqlalchemy import select
from sqlalchemy.orm import Session

from server.aggregation import SiteUpdate, aggregate
from server.records import from_record, to_record
from server.registry import Event, Registry
from server.robust import RobustRule, combine, krum_scores
from server.strategy import FedChestAvg
from server.validation import NormHistory
from shared_models.metrics import HistogramSpec
from tests.test_strategy import _reply

REF = {"router.w": torch.zeros(2, 3), "experts.PA.w": torch.zeros(4),
       "experts.PA.n": torch.zeros((), dtype=torch.int64)}


def _content(arrays: dict, metrics: dict | None = None, name: str = "alpha") -> RecordDict:
    m = {"num-examples": 10, "train_pos": [1, 0], "train_annotated": [10, 10],
         **{f"count.{g}": 10.0 for g in {k.rsplit(".", 1)[0] for k in arrays}}}
    return RecordDict({"arrays": to_record(arrays), "metrics": MetricRecord(metrics if metrics is not None else m),
                       "site": ConfigRecord({"name": name, "synthetic": True})})


def _strategy(tmp_path, **kw) -> tuple[FedChestAvg, Registry, str]:
    registry = Registry(f"sqlite:///{tmp_path / 'r.db'}")
    run = registry.create_run("t", "s", "h", "cxrlt2026", 1, {}, True)
    return FedChestAvg(registry=registry, run_id=run, classes=("A", "B"), spec=HistogramSpec(),
                       reference=to_record(REF), **kw), registry, run


def _events(registry: Registry) -> list[tuple[str, str, str]]:
    with Session(registry.engine) as s:
        return [(e.kind, e.site, e.message) for e in s.scalars(select(Event))]


def _good(value: float = 1.0) -> dict:
    return {"router.w": torch.full((2, 3), value), "experts.PA.w": torch.full((4,), value),
            "experts.PA.n": torch.tensor(3)}


BAD = {
    "nan": ({**_good(), "router.w": torch.full((2, 3), float("nan"))}, None, "non-finite"),
    "inf": ({**_good(), "experts.PA.w": torch.tensor([1.0, float("inf"), 0.0, 0.0])}, None, "non-finite"),
    "shape": ({**_good(), "router.w": torch.ones(3, 2)}, None, "shape (3, 2)"),
    "dtype": ({**_good(), "router.w": torch.ones(2, 3, dtype=torch.float64)}, None, "dtype float64"),
    "missing-group-part": ({"router.w": torch.ones(2, 3), "experts.PA.w": torch.ones(4)}, None, "incomplete"),
    "extra-group": ({**_good(), "experts.LAT.w": torch.ones(4)}, None, "unexpected parameter names"),
    "missing-metric": (_good(), {"num-examples": 10, "count.router": 10.0, "count.experts.PA": 10.0},
                       "lacks required keys ['train_pos', 'train_annotated']"),
    "missing-count": (_good(), {"num-examples": 10, "train_pos": [1, 0], "train_annotated": [10, 10],
                                "count.router": 10.0}, "count.experts.PA"),
    "wrong-length": (_good(), {"num-examples": 10, "train_pos": [1], "train_annotated": [10, 10],
                               "count.router": 10.0, "count.experts.PA": 10.0}, "must list 2 per-class counts"),
}


@pytest.mark.parametrize("kind", sorted(BAD))
def test_a_bad_update_is_rejected_with_its_reason_and_changes_nothing(tmp_path, kind):
    arrays, metrics, words = BAD[kind]
    strat, registry, _ = _strategy(tmp_path)
    new, _ = strat.aggregate_train(1, [_reply(1, _content(arrays, metrics, "bad")),
                                       _reply(2, _content(_good(2.0), name="ok"))])
    new = from_record(new)
    assert np.allclose(new["router.w"], 2.0) and np.allclose(new["experts.PA.w"], 2.0)
    (event,) = [e for e in _events(registry) if e[0] == "update_rejected"]
    assert event[1] == "bad" and words in event[2]


def test_extra_metric_keys_are_accepted_and_a_lone_bad_update_keeps_the_global_model(tmp_path):
    strat, registry, _ = _strategy(tmp_path)
    content = _content(_good(3.0))
    content["metrics"]["something-new"] = 1.5  # another fedchest version's metric
    new, _ = strat.aggregate_train(1, [_reply(1, content)])
    assert np.allclose(from_record(new)["router.w"], 3.0)
    (tmp_path / "b").mkdir()
    strat2, registry2, _ = _strategy(tmp_path / "b")
    assert strat2.aggregate_train(1, [_reply(1, _content(BAD["nan"][0]))]) == (None, None)
    assert ("round_skipped", None, "no valid update to aggregate") in _events(registry2)


def test_an_update_far_above_the_recent_norms_is_rejected(tmp_path):
    strat, registry, _ = _strategy(tmp_path, norm_bound=10.0)
    for rnd in range(1, 4):  # three rounds of ordinary updates: norms ~ 1 above the global model
        new, _ = strat.aggregate_train(rnd, [_reply(1, _content({k: v + 0.5 if v.is_floating_point() else v
                                                                  for k, v in strat_current(strat).items()}))])
        strat.current = from_record(new)
    before = strat_current(strat)
    huge = {k: v + 100.0 if v.is_floating_point() else v for k, v in before.items()}
    normal = {k: v + 0.5 if v.is_floating_point() else v for k, v in before.items()}
    new, _ = strat.aggregate_train(4, [_reply(3, _content(huge, name="big")), _reply(4, _content(normal, name="ok"))])
    assert np.allclose(from_record(new)["router.w"], before["router.w"].numpy() + 0.5)
    (event,) = [e for e in _events(registry) if e[0] == "update_rejected"]
    assert event[1] == "big" and "exceeds 10 x the median" in event[2]


def strat_current(strat: FedChestAvg) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(np.array(v)) for k, v in strat.current.items()}


def test_norm_history_needs_history_and_can_be_off():
    h = NormHistory(factor=2.0, min_history=2)
    assert h.check({"g": 1e9}) is None  # nothing known yet
    h.record({"g": 1.0})
    h.record({"g": 1.0})
    assert h.check({"g": 1.9}) is None and "exceeds 2 x" in h.check({"g": 2.1})
    assert NormHistory(factor=0).check({"g": 1e9}) is None


def test_rules_by_hand():
    d = np.array([[1.0, 10.0], [2.0, 20.0], [3.0, 30.0], [4.0, 40.0], [100.0, -100.0]])
    w = np.full(5, 0.2)
    assert np.allclose(combine(d, w, RobustRule("median"))[0], [3.0, 20.0])
    assert np.allclose(combine(d, w, RobustRule("trimmed-mean", trim=0.2))[0], [3.0, 20.0])  # drops 1 at each end
    assert np.allclose(combine(d, w, RobustRule("trimmed-mean", trim=0.0))[0], d.mean(0))
    scores = krum_scores(d, 1)  # n - f - 2 = 2 nearest neighbours
    assert np.argmax(scores) == 4
    upd, used, note = combine(d, w, RobustRule("krum", byzantine=1))
    assert note is None and used[4] == 0 and np.count_nonzero(used) == 1 and upd.tolist() in d[:4].tolist()
    upd, used, _ = combine(d, w, RobustRule("multi-krum", byzantine=1))
    assert used[4] == 0 and np.allclose(upd, d[:4].mean(0))
    clipped, _, _ = combine(d, w, RobustRule("norm-clip", clip=1.0))
    norms = np.linalg.norm(d, axis=1)
    bound = np.median(norms)
    assert np.allclose(clipped, (d * np.minimum(1, bound / norms)[:, None]).mean(0))
    upd, used, note = combine(d[:3], w[:3] / w[:3].sum(), RobustRule("krum", byzantine=1))
    assert np.allclose(upd, [2.0, 20.0]) and "needs at least 5 senders" in note
    with pytest.raises(ValueError, match="robust-aggregation = 'mean'"):
        RobustRule("mean")


def test_robust_aggregation_is_group_aware():
    """Five sites send the router, two send the PA expert: the router's attacker is outvoted; the PA group is
    too small for Krum, which says so and uses the median; the integer buffer keeps the weighted mean."""
    glob = {"router.w": np.zeros(2), "experts.PA.w": np.zeros(2), "experts.PA.n": np.array(0)}
    groups = {"router": ["router.w"], "experts.PA": ["experts.PA.w", "experts.PA.n"]}
    updates = [SiteUpdate(f"s{i}", {"router.w": np.array([1.0, 1.0]) * (1 + 0.01 * i)}, {"router": 10.0})
               for i in range(4)]
    updates.append(SiteUpdate("evil", {"router.w": np.array([-50.0, 50.0])}, {"router": 10.0}))
    updates[0].arrays.update({"experts.PA.w": np.array([1.0, 1.0]), "experts.PA.n": np.array(2)})
    updates[0].group_counts["experts.PA"] = 10.0
    updates[1].arrays.update({"experts.PA.w": np.array([3.0, 3.0]), "experts.PA.n": np.array(4)})
    updates[1].group_counts["experts.PA"] = 30.0
    notes: list[str] = []
    out, contributors = aggregate(glob, updates, groups, robust=RobustRule("multi-krum", byzantine=1), notes=notes)
    assert "evil" not in contributors["router"] and np.all(out["router.w"] > 0.9) and np.all(out["router.w"] < 1.1)
    assert np.allclose(out["experts.PA.w"], [2.0, 2.0])  # the median of two
    assert int(out["experts.PA.n"]) == round(0.25 * 2 + 0.75 * 4)
    assert notes == ["group experts.PA: multi-krum needs at least 5 senders for f = 1; 2 sent this group, so it used "
                     "the coordinate median"]
    plain, _ = aggregate(glob, updates, groups)
    assert np.abs(plain["router.w"] - 1).max() > 5  # FedAvg follows the attacker
