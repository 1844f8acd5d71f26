"""The server folds each update in as it is pulled (issue 10, scale): it holds the global model, one accumulator
and the update in flight, not every site's copy, and the result is the exact count-weighted mean."""

from __future__ import annotations

import tracemalloc

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from server.records import from_record, to_record
from server.registry import Registry
from server.robust import RobustRule
from server.strategy import FedChestAvg
from shared_models.metrics import HistogramSpec
from tests.test_strategy import _reply

N_SITES, SIZE, PARTS = 12, 1_000_000, 8  # a 4 MB float32 model in eight tensors


def _strategy(tmp_path, robust: RobustRule | None = None) -> FedChestAvg:
    registry = Registry(f"sqlite:///{tmp_path / 'r.db'}")
    run = registry.create_run("t", "s", "h", "cxrlt2026", 1, {}, True)
    ref = to_record({**{f"router.w{j}": torch.zeros(SIZE // PARTS) for j in range(PARTS)},
                       "router.n": torch.zeros((), dtype=torch.int64)})
    return FedChestAvg(registry=registry, run_id=run, classes=("A", "B"), spec=HistogramSpec(), reference=ref,
                       robust=robust, norm_bound=1e9)


def _payloads() -> list[np.ndarray]:
    return [np.random.default_rng(i).standard_normal(SIZE).astype(np.float32) * 0.01 for i in range(3)]


def _replies(counts: list[int], payloads: list[ArrayRecord]):
    """One reply per site, made as the grid pulls it; the array bytes are made beforehand (three payloads shared
    round-robin), so what is measured is what the server allocates."""
    for i, n in enumerate(counts):
        content = RecordDict({
            "arrays": payloads[i % len(payloads)],
            "metrics": MetricRecord({"num-examples": n, "count.router": float(n), "train_pos": [1, 0],
                                     "train_annotated": [n, n]}),
            "site": ConfigRecord({"name": f"site{i}", "synthetic": True}),
        })
        yield _reply(i + 1, content)


def _peak(strat: FedChestAvg, counts: list[int]) -> tuple[ArrayRecord, int]:
    payloads = [to_record({**{f"router.w{j}": torch.from_numpy(part) for j, part in enumerate(np.split(x, PARTS))},
                             "router.n": torch.tensor(i, dtype=torch.int64)})
                for i, x in enumerate(_payloads())]
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        arrays, _ = strat.aggregate_train(1, _replies(counts, payloads))
        return arrays, tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()


def test_mean_aggregation_allocates_the_same_for_3_or_12_sites(tmp_path):
    model = SIZE * 4
    _, few = _peak(_strategy(tmp_path / "few"), [7, 9, 11])
    counts = [5 + 3 * i for i in range(N_SITES)]
    arrays, peak = _peak(_strategy(tmp_path), counts)
    # the float64 accumulator (2x), released tensor by tensor as the new values (1x) and then the new record (1x)
    # are made, plus small temporaries: never a copy per site
    assert peak < 2.4 * model and peak < 1.1 * few, f"peak {peak / model:.2f} x the model (3 sites: {few / model:.2f})"
    xs = _payloads()
    want = sum(c * xs[i % 3].astype(np.float64) for i, c in enumerate(counts)) / sum(counts)
    arrays = from_record(arrays)
    got = np.concatenate([arrays[f"router.w{j}"] for j in range(PARTS)])
    assert got.dtype == np.float32 and np.array_equal(got, want.astype(np.float32))  # float64 sums: exact to float32
    n = arrays["router.n"]
    assert n.shape == () and int(n) == round(sum(c * (i % 3) for i, c in enumerate(counts)) / sum(counts))


def test_the_arrival_order_does_not_change_the_result(tmp_path):
    counts = [5 + 3 * i for i in range(N_SITES)]
    a, _ = _peak(_strategy(tmp_path / "a"), counts)
    strat = _strategy(tmp_path / "b")
    payloads = [to_record({**{f"router.w{j}": torch.from_numpy(part) for j, part in enumerate(np.split(x, PARTS))},
                             "router.n": torch.tensor(i, dtype=torch.int64)}) for i, x in enumerate(_payloads())]
    order = list(reversed(list(_replies(counts, payloads))))
    b, _ = strat.aggregate_train(1, order)
    a, b = from_record(a), from_record(b)
    assert list(a) == list(b) and all(np.array_equal(a[k], b[k]) for k in a)


def test_robust_rules_need_every_update_and_say_so_in_memory(tmp_path):
    _, peak = _peak(_strategy(tmp_path, RobustRule("median")), [10] * N_SITES)
    assert peak > N_SITES * SIZE * 8  # every sender's float64 delta is held at once: documented


def test_two_senders_mean_is_the_same_in_either_order_with_fractional_counts():
    """Counts are fractional (an image of unknown view counts a third towards each expert) and some coordinates
    nearly cancel: a fused multiply-add made the two arrival orders differ there (seen as a resumed run drifting
    from the uninterrupted one); rounded products do not."""
    from server.aggregation import RunningMean, SiteUpdate

    rng = np.random.default_rng(0)
    wa, wb = 43.0 + 1 / 3, 37.0 + 2 / 3
    a = rng.standard_normal(300_000).astype(np.float32)
    b = (-a * (wa / wb) * (1 + 1e-6 * rng.standard_normal(a.size))).astype(np.float32)
    ua, ub = SiteUpdate("a", {"router.w": a}, {"router": wa}), SiteUpdate("b", {"router.w": b}, {"router": wb})
    results = []
    for order in ((ua, ub), (ub, ua)):
        mean = RunningMean({"router.w": np.zeros(a.size, np.float32)}, {"router": ["router.w"]})
        for u in order:
            mean.add(u)
        results.append(mean.result()[0]["router.w"])
    assert np.array_equal(results[0], results[1])
