"""The server folds each update in as it is pulled (issue 10, scale): it holds the global model, one accumulator
and the update in flight, not every site's copy, and the result is the exact count-weighted mean."""

from __future__ import annotations

import tracemalloc

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from server.registry import Registry
from server.robust import RobustRule
from server.strategy import FedChestAvg
from shared_models.metrics import HistogramSpec
from tests.test_strategy import _reply

N_SITES, SIZE = 12, 1_000_000  # a 4 MB float32 model


def _strategy(tmp_path, robust: RobustRule | None = None) -> FedChestAvg:
    registry = Registry(f"sqlite:///{tmp_path / 'r.db'}")
    run = registry.create_run("t", "s", "h", "cxrlt2026", 1, {}, True)
    ref = ArrayRecord({"router.w": torch.zeros(SIZE), "router.n": torch.zeros((), dtype=torch.int64)})
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
    payloads = [ArrayRecord({"router.w": torch.from_numpy(x), "router.n": torch.tensor(i, dtype=torch.int64)})
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
    # the accumulator (1x) and the new record (1x, made as the accumulator is released), plus small temporaries
    assert peak < 2.3 * model and peak < 1.1 * few, f"peak {peak / model:.2f} x the model (3 sites: {few / model:.2f})"
    xs = _payloads()
    want = sum(c * xs[i % 3].astype(np.float64) for i, c in enumerate(counts)) / sum(counts)
    got = arrays["router.w"].numpy()
    assert got.dtype == np.float32 and np.abs(got - want).max() < 1e-6 * np.abs(want).max()
    n = arrays["router.n"].numpy()
    assert n.shape == () and int(n) == round(sum(c * (i % 3) for i, c in enumerate(counts)) / sum(counts))


def test_robust_rules_need_every_update_and_say_so_in_memory(tmp_path):
    _, peak = _peak(_strategy(tmp_path, RobustRule("median")), [10] * N_SITES)
    assert peak > N_SITES * SIZE * 8  # every sender's float64 delta is held at once: documented
