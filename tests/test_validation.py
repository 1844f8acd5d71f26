"""server/validation.py on its own: the per-update checks (on updates read from the wire format), the
train-metrics check, norms and the norm history (written to kill the mutants docs/testing/mutation-report.md lists)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from server import validation
from server.records import from_record, to_record
from server.validation import (NormHistory, check_train_metrics, nonfinite_reason, squared_distance, update_norms,
                               validate_update)


def _wire(state: dict) -> dict[str, np.ndarray]:
    """``state`` as the server reads it from a train reply: packed, then unpacked into views."""
    return from_record(to_record(state))


def test_validate_update_reasons():
    ref = {"g.a": ((2,), "float32"), "g.b": ((3,), "float32"), "h.c": ((1,), "float32")}
    groups = {"g": ["g.a", "g.b"], "h": ["h.c"]}
    ok = _wire({"g.a": np.zeros(2, np.float32), "g.b": np.zeros(3, np.float32)})
    assert validate_update(ok, ref, groups) is None
    assert "parameter names differ" in validate_update(ok, ref)  # without groups every key must be there
    half = _wire({"g.a": np.zeros(2, np.float32)})
    assert validate_update(half, ref, groups) == "group g is incomplete (1 of 2 tensors)"
    assert validate_update(_wire({}), ref, groups) == "empty update"
    extra = _wire({"x": np.zeros(1, np.float32)})
    assert validate_update(extra, ref, groups) == "unexpected parameter names ['x']"
    wrong = _wire({"h.c": np.zeros(2, np.float32)})
    assert validate_update(wrong, ref, groups) == "h.c: shape (2,) dtype float32, expected (1,) float32"
    nan = _wire({"h.c": np.array([np.nan], np.float32)})
    assert validate_update(nan, ref, groups) == "h.c: non-finite values"
    assert validate_update(nan, ref, groups, values=False) is None  # left to update_norms + nonfinite_reason


def test_train_metrics_need_counts_for_the_label_sets_of_the_groups_sent():
    good = {"num-examples": 4, "count.experts.PA": 4, "train_pos": [1, 0], "train_annotated": [4, 4]}
    assert check_train_metrics(good, {"experts.PA"}, 2) is None
    assert "count.experts.AP" in check_train_metrics(good, {"experts.PA", "experts.AP"}, 2)
    assert check_train_metrics({**good, "train_pos": [1]}, {"experts.PA"}, 2) == \
        "metric train_pos must list 2 per-class counts"
    assert check_train_metrics({**good, "train_pos": 1}, {"experts.PA"}, 2) == \
        "metric train_pos must list 2 per-class counts"
    no_counts = {"num-examples": 4}
    assert "train_pos" in check_train_metrics(no_counts, set(), 2)  # no groups at all: radiograph counts asked
    ct = {"num-examples": 4, "count.ct.encoder": 4, "ct_train_pos": [0, 1, 1], "ct_train_annotated": [4, 4, 4]}
    assert check_train_metrics(ct, {"ct.encoder"}, 2, 3) is None  # a CT site owes no radiograph counts
    assert "ct_train_pos" in check_train_metrics(good, {"experts.PA", "ct.encoder"}, 2, 3)


def test_squared_distance_norms_and_nonfinite_reasons(monkeypatch):
    monkeypatch.setattr(validation, "TORCH_CHUNK", 4)  # several chunks on the torch path
    a, b = np.arange(10, dtype=np.float32), np.ones(10, np.float32)
    want = float(((np.arange(10) - 1.0) ** 2).sum())
    assert squared_distance(a, b) == want
    assert squared_distance(a.astype(">f4"), b) == want  # the NumPy path
    assert squared_distance(a, b.astype(np.float64)) == want  # dtypes differ: the NumPy path
    current = {"g.w": b, "g.n": np.array(3, np.int64), "h.w": np.zeros(2, np.float32)}
    groups = {"g": ["g.w", "g.n"], "h": ["h.w"]}
    norms = update_norms({"g.w": a, "g.n": np.array(9, np.int64)}, current, groups)
    assert norms == {"g": pytest.approx(math.sqrt(want))}  # integer buffers do not count; h was not sent
    bad = {"g.w": np.where(np.arange(10) == 4, np.inf, a).astype(np.float32), "g.n": np.array(3, np.int64)}
    bad_norms = update_norms(bad, current, groups)
    assert not math.isfinite(bad_norms["g"])
    assert nonfinite_reason(bad, bad_norms, groups) == "g.w: non-finite values"
    huge = {"g.w": np.full(10, 3e38, np.float32), "g.n": np.array(3, np.int64)}
    assert nonfinite_reason(huge, {"g": math.inf}, groups) == "group g: the update's norm overflows"
    assert nonfinite_reason({"g.w": a}, {"g": 1.0}, groups) is None


def test_norm_history_keeps_a_window_and_compares_with_its_median():
    h = NormHistory(factor=2.0, window=3, min_history=3)
    for norm in (1.0, 2.0):
        h.record({"g": norm})
    assert h.check({"g": 100.0}) is None  # fewer than min_history norms: no bound yet
    h.record({"g": 3.0})
    assert h.check({"g": 4.0}) is None  # 2 x median 2.0 = 4.0: at the bound is accepted
    assert "exceeds 2 x the median" in h.check({"g": 4.01})
    h.record({"g": 10.0})
    h.record({"g": 10.0})
    assert h.history["g"] == [3.0, 10.0, 10.0]  # the window keeps the last 3
    assert h.check({"g": 19.0}) is None and h.check({"g": 21.0}) is not None  # median 10 now
    assert NormHistory(factor=-1.0).check({"g": 1e9}) is None
    off = NormHistory(factor=0.0, min_history=1)
    off.record({"g": 1.0})
    assert off.check({"g": 1e9}) is None  # factor 0: the check is off, whatever the history
    tight = NormHistory(factor=0.5, min_history=1)  # a factor below 1 is a (strict) bound, not "off"
    tight.record({"g": 4.0})
    assert tight.check({"g": 2.0}) is None and tight.check({"g": 2.5}) is not None
    default = NormHistory()
    assert (default.factor, default.window, default.min_history) == (10.0, 50, 3)
