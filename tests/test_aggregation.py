import numpy as np
import pytest

from server.aggregation import SiteUpdate, aggregate

GROUPS = {"experts.PA": ["experts.PA.w", "experts.PA.fc.weight", "experts.PA.n"], "experts.LAT": ["experts.LAT.w"]}
CLASSIFIERS = {"experts.PA": ["experts.PA.fc.weight"], "experts.LAT": []}


def _global():
    return {"experts.PA.w": np.zeros(2, np.float32), "experts.PA.fc.weight": np.zeros((3, 2), np.float32),
            "experts.PA.n": np.array(0, np.int64), "experts.LAT.w": np.full(2, 7.0, np.float32)}


def test_group_wise_weighted_average_by_hand():
    a = SiteUpdate("a", {"experts.PA.w": np.array([1.0, 2.0]), "experts.PA.fc.weight": np.ones((3, 2)),
                         "experts.PA.n": np.array(10), "experts.LAT.w": np.array([3.0, 3.0])},
                   {"experts.PA": 30, "experts.LAT": 10})
    b = SiteUpdate("b", {"experts.PA.w": np.array([5.0, 6.0]), "experts.PA.fc.weight": 3 * np.ones((3, 2)),
                         "experts.PA.n": np.array(20)}, {"experts.PA": 10})
    new, who = aggregate(_global(), [a, b], GROUPS, CLASSIFIERS, "projection")
    np.testing.assert_allclose(new["experts.PA.w"], [0.75 * 1 + 0.25 * 5, 0.75 * 2 + 0.25 * 6])
    np.testing.assert_allclose(new["experts.PA.fc.weight"], 1.5)
    assert new["experts.PA.n"] == 12 and new["experts.PA.n"].dtype == np.int64  # 0.75*10 + 0.25*20 = 12.5 -> 12
    np.testing.assert_allclose(new["experts.LAT.w"], [3.0, 3.0])  # only site a had laterals
    assert who == {"experts.PA": ["a", "b"], "experts.LAT": ["a"]}
    assert new["experts.PA.w"].dtype == np.float32


def test_a_group_nobody_sent_keeps_the_global_value():
    b = SiteUpdate("b", {k: np.ones_like(v) for k, v in _global().items() if k.startswith("experts.PA")},
                   {"experts.PA": 5})
    new, who = aggregate(_global(), [b], GROUPS, CLASSIFIERS, "projection")
    np.testing.assert_array_equal(new["experts.LAT.w"], [7.0, 7.0])
    assert who["experts.LAT"] == []


def test_class_aware_rows_follow_positive_counts():
    fc_a, fc_b = np.ones((3, 2)), 3 * np.ones((3, 2))
    base = {"experts.PA.w": np.zeros(2), "experts.PA.n": np.array(0)}
    a = SiteUpdate("a", {**base, "experts.PA.fc.weight": fc_a}, {"experts.PA": 30},
                   {"experts.PA": np.array([9.0, 0.0, 0.0])})
    b = SiteUpdate("b", {**base, "experts.PA.fc.weight": fc_b}, {"experts.PA": 10},
                   {"experts.PA": np.array([1.0, 4.0, 0.0])})
    new, _ = aggregate(_global(), [a, b], GROUPS, CLASSIFIERS, "projection+class")
    fc = new["experts.PA.fc.weight"]
    np.testing.assert_allclose(fc[0], 0.9 * 1 + 0.1 * 3)  # class 0: positives 9 vs 1
    np.testing.assert_allclose(fc[1], 3.0)  # class 1: only site b has positives
    np.testing.assert_allclose(fc[2], 0.75 * 1 + 0.25 * 3)  # class 2: nobody -> sample weights
    plain, _ = aggregate(_global(), [a, b], GROUPS, CLASSIFIERS, "projection")
    np.testing.assert_allclose(plain["experts.PA.fc.weight"], 1.5)


def test_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="aggregation mode"):
        aggregate(_global(), [], GROUPS, CLASSIFIERS, "median-of-means")


def test_site_without_laterals_does_not_send_the_lateral_expert():
    from client.client_app import group_statistics
    from client.index import SiteData

    proj = np.array([0, 0, 1, 1, 0])  # PA and AP only
    targets = np.zeros((5, 4), np.float32)
    targets[[0, 2], 1] = 1
    data = SiteData(np.zeros((5, 8, 8), np.uint8), proj, targets, np.ones_like(targets))
    counts, pos = group_statistics(data, 4)
    assert counts == {"experts.PA": 3.0, "experts.AP": 2.0, "experts.LAT": 0.0, "router": 5.0, "generalist": 5.0}
    np.testing.assert_allclose(pos["experts.PA"], [0, 1, 0, 0])
    data.projection[4] = -1  # an image of unknown projection trains every expert: a third each
    counts, _ = group_statistics(data, 4)
    assert counts["experts.LAT"] == pytest.approx(1 / 3)


def test_fedadam_step_by_hand_and_untouched_groups():
    from server.aggregation import ServerOptimizer

    current = {"experts.PA.w": np.array([1.0, 1.0], np.float32), "experts.PA.n": np.array(3, np.int64),
               "experts.LAT.w": np.array([5.0], np.float32)}
    aggregated = {"experts.PA.w": np.array([2.0, 0.0], np.float32), "experts.PA.n": np.array(4, np.int64),
                  "experts.LAT.w": np.array([5.0], np.float32)}
    groups = {"experts.PA": ["experts.PA.w", "experts.PA.n"], "experts.LAT": ["experts.LAT.w"]}
    opt = ServerOptimizer("fedadam", eta=0.1, beta_1=0.9, beta_2=0.99, tau=1e-3)
    new = opt.step(current, aggregated, {"experts.PA": ["a"], "experts.LAT": []}, groups)
    delta = np.array([1.0, -1.0])
    m = 0.1 * delta
    v = 0.99 * 1e-6 + 0.01 * delta**2
    np.testing.assert_allclose(new["experts.PA.w"], 1.0 + 0.1 * m / (np.sqrt(v) + 1e-3), rtol=1e-5)
    assert new["experts.PA.n"] == 4  # integer buffers take the aggregate as is
    np.testing.assert_array_equal(new["experts.LAT.w"], [5.0])  # nobody sent LAT: no step
    with pytest.raises(ValueError):
        ServerOptimizer("sgd")


def test_fedyogi_two_steps_by_hand():
    """Yogi's second moment moves by (1 - beta_2) * delta^2 towards delta^2 with the sign of (delta^2 - v), not by
    Adam's exponential average: after a large then a small pseudo-gradient the two differ, and Yogi's is exact."""
    from server.aggregation import ServerOptimizer

    groups = {"experts.PA": ["experts.PA.w"]}
    who = {"experts.PA": ["a"]}
    eta, b1, b2, tau = 0.1, 0.9, 0.99, 1e-3
    yogi, adam = ServerOptimizer("fedyogi", eta, b1, b2, tau), ServerOptimizer("fedadam", eta, b1, b2, tau)
    cur = {"experts.PA.w": np.array([1.0, 1.0], np.float32)}
    m, v = np.zeros(2), np.full(2, tau**2)
    expected = cur["experts.PA.w"].astype(np.float64)
    for step in ([1.0, -1.0], [0.01, 0.5]):  # coordinate 0: delta^2 falls below v, so v shrinks; 1: v grows
        agg = {"experts.PA.w": (cur["experts.PA.w"] + np.array(step)).astype(np.float32)}
        delta = agg["experts.PA.w"].astype(np.float64) - cur["experts.PA.w"].astype(np.float64)
        m = b1 * m + (1 - b1) * delta
        v = v + np.where(delta**2 > v, 1, -1) * (1 - b2) * delta**2
        expected = cur["experts.PA.w"] + eta * m / (np.sqrt(v) + tau)
        a = adam.step(cur, agg, who, groups)
        cur = yogi.step(cur, agg, who, groups)
        np.testing.assert_allclose(cur["experts.PA.w"], expected, rtol=1e-6)
    np.testing.assert_allclose(v, [0.010001 - 0.01 * 1e-4, 0.010001 + 0.01 * 0.25], rtol=1e-3)
    assert np.abs(a["experts.PA.w"] - cur["experts.PA.w"]).max() > 1e-4  # Adam's average is not Yogi's step


def test_add_scaled_adds_arrays_torch_cannot_wrap():
    """acc += w * x also for a big-endian or strided x (the NumPy path, chunk by chunk)."""
    from server import aggregation

    x = np.arange(10, dtype=">f4")  # non-native byte order: torch cannot wrap it
    acc = np.ones(10)
    aggregation.add_scaled(acc, 0.5, x)
    np.testing.assert_array_equal(acc, 1 + 0.5 * np.arange(10))
    strided = np.arange(20, dtype=np.float32)[::2]
    aggregation.add_scaled(acc, 2.0, strided)
    np.testing.assert_array_equal(acc, 1 + 0.5 * np.arange(10) + 2 * np.arange(0, 20, 2))
    n = aggregation.CHUNK + 1000  # more than one chunk on both paths
    for dtype in (np.float32, ">f4"):
        big = np.arange(1, n + 1).astype(dtype)
        acc = np.full(n, 2.0)
        aggregation.add_scaled(acc, 3.0, big)
        np.testing.assert_array_equal(acc, 2.0 + 3.0 * np.arange(1, n + 1))


def test_robust_median_over_a_group_of_several_tensors_away_from_zero():
    """A robust rule combines each group's updates relative to the current global values and writes every tensor
    of the group back in place: with the coordinate median, the new value is the senders' median per coordinate."""
    from server.robust import RobustRule

    glob = {"g.a": np.array([10.0, -4.0], np.float32), "g.b": np.array([[3.0]], np.float32),
            "g.n": np.array(5, np.int64)}
    groups = {"g": ["g.a", "g.b", "g.n"]}
    values = [([11.0, -4.0], 1.0, 4), ([13.0, -1.0], 7.0, 8), ([9.0, -2.0], 2.0, 6)]
    ups = [SiteUpdate(f"s{i}", {"g.a": np.array(a, np.float32), "g.b": np.array([[b]], np.float32),
                                "g.n": np.array(n)}, {"g": 1}) for i, (a, b, n) in enumerate(values)]
    idle = SiteUpdate("idle", {"g.a": np.full(2, 99.0, np.float32), "g.b": np.array([[99.0]], np.float32),
                               "g.n": np.array(99)}, {"g": 0})  # sent the group with no samples: not a sender
    uncounted = SiteUpdate("uncounted", idle.arrays, {})
    new, who = aggregate(glob, [*ups, idle, uncounted], groups, mode="projection", robust=RobustRule("median"))
    np.testing.assert_allclose(new["g.a"], [11.0, -2.0])
    np.testing.assert_allclose(new["g.b"], [[2.0]])
    assert new["g.n"] == 6 and who["g"] == ["s0", "s1", "s2"]  # integer buffers: the weighted mean


def test_server_optimizer_defaults_are_reddi_et_al_s():
    """eta 1e-2, beta_1 0.9, beta_2 0.99, tau 1e-3 (the run config sets only server-lr = eta)."""
    from server.aggregation import ServerOptimizer

    groups = {"g": ["g.w"]}
    cur = {"g.w": np.array([1.0, 2.0], np.float32)}
    for kind in ("fedadam", "fedyogi"):
        default, explicit = ServerOptimizer(kind), ServerOptimizer(kind, 1e-2, 0.9, 0.99, 1e-3)
        for agg in ({"g.w": np.array([1.5, 1.0], np.float32)}, {"g.w": np.array([0.5, 2.5], np.float32)}):
            a, b = default.step(cur, agg, {"g": ["s"]}, groups), explicit.step(cur, agg, {"g": ["s"]}, groups)
            np.testing.assert_array_equal(a["g.w"], b["g.w"])
    adam = ServerOptimizer("fedadam", eta=0.1)  # a pseudo-gradient away from +-1, so delta^2 != |delta|
    delta = np.array([0.5, -0.25])
    new = adam.step(cur, {"g.w": (cur["g.w"] + delta).astype(np.float32)}, {"g": ["s"]}, groups)
    m, v = 0.1 * delta, 0.99 * 1e-6 + 0.01 * delta**2
    np.testing.assert_allclose(new["g.w"], cur["g.w"] + 0.1 * m / (np.sqrt(v) + 1e-3), rtol=1e-6)
    with pytest.raises(ValueError):
        ServerOptimizer("none")  # "none" means no optimiser object at all


def test_running_mean_counts_edge_cases_and_class_rows_of_a_bias():
    """A group sent with 0 samples does not contribute; 1 sample does. projection+class weighs a 1-D classifier
    bias per class too, and falls back to sample weights for the group when one sender gave no class counts."""
    glob = {"e.fc.weight": np.zeros((2, 1), np.float32), "e.fc.bias": np.zeros(2, np.float32)}
    groups, heads = {"e": ["e.fc.weight", "e.fc.bias"]}, {"e": ["e.fc.weight", "e.fc.bias"]}

    def site(name, value, count, pos=None):
        arrays = {"e.fc.weight": np.full((2, 1), value), "e.fc.bias": np.full(2, value)}
        return SiteUpdate(name, arrays, {"e": count}, {} if pos is None else {"e": np.array(pos)})

    uncounted = SiteUpdate("c", site("c", 9.0, 1).arrays, {})  # arrays without a count: not averaged in
    new, who = aggregate(glob, [site("a", 1.0, 0), site("b", 4.0, 1), uncounted], groups, heads, "projection")
    assert who["e"] == ["b"] and np.allclose(new["e.fc.bias"], 4.0)
    a, b = site("a", 1.0, 3, [1.0, 0.0]), site("b", 5.0, 1, [1.0, 1.0])
    new, _ = aggregate(glob, [a, b], groups, heads, "projection+class")
    np.testing.assert_allclose(new["e.fc.bias"], [3.0, 5.0])  # class 0: 1 vs 1 positives; class 1: b's one
    np.testing.assert_allclose(new["e.fc.weight"][:, 0], [3.0, 5.0])
    new, _ = aggregate(glob, [a, site("b", 5.0, 1)], groups, heads, "projection+class")
    np.testing.assert_allclose(new["e.fc.bias"], [2.0, 2.0])  # b sent no class counts: 3:1 sample weights
