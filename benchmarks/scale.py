"""Many-site simulations and aggregation throughput (issue 10, scale); used by ``bench_scale`` and the 50-site test.

``simulate(work, n_sites)`` runs the fedchest apps under Flower's simulation runtime with ``n_sites`` synthetic sites
(the tiny preset; on this 2-core machine the sites take turns) and measures, per round and stage, the ServerApp's
own processing seconds (the time in the strategy's configure and aggregate calls minus the time spent waiting for
the next reply) and the peak of traced allocations above the level at the start of each aggregate call. In
simulation the link's message store lives in the same process, so that peak includes replies that arrived while
the server was busy.

``aggregation(arrays, n_sites)`` times the server's aggregation of ``n_sites`` updates of a given model against
Flower's ``aggregate_arrayrecords`` and a plain memory copy, with the traced peak of each. Times are of a second
call (the steady state: the allocator hands back the memory the last round freed; the first round's, which pays
the page faults of fresh memory, is reported too).
"""

from __future__ import annotations

import json
import time
import tracemalloc
from contextlib import contextmanager
from pathlib import Path

import numpy as np

FORMATS = ("padchest", "mimic", "openi", "dicom")


def make_many_sites(root: Path, n_sites: int, images: int = 12, image_size: int = 32, seed: int = 0) -> Path:
    """``n_sites`` small synthetic sites (formats in turn), written in this process (the CLI costs seconds each)."""
    from client.synth import synthesize_site

    sites = root / "sites"
    stamp = sites / "params.json"
    params = {"n": n_sites, "images": images, "size": image_size, "seed": seed}
    if stamp.exists() and json.loads(stamp.read_text()) == params:
        return sites
    for i in range(n_sites):
        fmt = FORMATS[i % len(FORMATS)]
        synthesize_site(sites / f"{i:03d}-site{i:03d}", fmt, f"site{i:03d}", n_images=images, image_size=image_size,
                        seed=seed * 1000 + i)
    stamp.write_text(json.dumps(params))
    return sites


@contextmanager
def server_probe(memory: bool = False):
    """Wraps FedChestAvg's round calls while active; yields the list of per-call records it fills. With ``memory``
    allocations are traced (which slows the whole process: take times from a run without it)."""
    from server.strategy import FedChestAvg

    calls: list[dict] = []
    originals = {name: getattr(FedChestAvg, name) for name in
                 ("configure_train", "aggregate_train", "configure_evaluate", "aggregate_evaluate")}

    def wrap(name, fn):
        def timed_iter(it, waited):
            it = iter(it)
            while True:
                t0 = time.perf_counter()
                try:
                    msg = next(it)
                except StopIteration:
                    waited[0] += time.perf_counter() - t0
                    return
                waited[0] += time.perf_counter() - t0
                yield msg

        def call(self, server_round, *args):
            waited = [0.0]
            if name.startswith("aggregate"):
                args = (timed_iter(args[0], waited),)
            if memory:
                tracemalloc.reset_peak()
            base = tracemalloc.get_traced_memory()[0] if memory else 0
            t0 = time.perf_counter()
            out = fn(self, server_round, *args)
            if name.startswith("configure"):
                out = list(out)
            total = time.perf_counter() - t0
            calls.append({"round": server_round, "call": name, "server_s": total - waited[0], "wait_s": waited[0],
                          "peak_MB": (tracemalloc.get_traced_memory()[1] - base) / 1e6 if memory else None})
            return out
        return call

    started = memory and not tracemalloc.is_tracing()
    if started:
        tracemalloc.start()
    for name, fn in originals.items():
        setattr(FedChestAvg, name, wrap(name, fn))
    try:
        yield calls
    finally:
        for name, fn in originals.items():
            setattr(FedChestAvg, name, fn)
        if started:
            tracemalloc.stop()


def simulate(work: Path, n_sites: int, rounds: int = 2, images: int = 12, preset: str = "tiny",
             probe: bool = True, memory: bool = False) -> dict:
    """A federated run of ``n_sites`` synthetic sites; its summary and, with ``probe``, the server's figures."""
    from consortium.simulation import run_in_process

    sites = make_many_sites(work / f"sites{n_sites}", n_sites, images)
    out = work / f"run{n_sites}{'-memory' if memory else ''}"
    cfg = {"num-server-rounds": rounds, "local-epochs": 1, "lr": 1e-3, "batch-size": 16, "model-preset": preset,
           "image-size": 32, "min-nodes": n_sites, "out-dir": str(out), "sim-sites-dir": str(sites),
           "round-timeout": 1800.0}
    t0 = time.perf_counter()
    if probe:
        with server_probe(memory) as calls:
            run_in_process(cfg, num_supernodes=n_sites)
    else:
        calls = []
        run_in_process(cfg, num_supernodes=n_sites)
    wall = time.perf_counter() - t0
    summary = json.loads((out / "summary.json").read_text())
    per_round = []
    for rnd in range(1, rounds + 1):
        mine = [c for c in calls if c["round"] == rnd]
        per_round.append({"round": rnd, "server_s": sum(c["server_s"] for c in mine),
                          "wait_s": sum(c["wait_s"] for c in mine),
                          "peak_MB": max((c["peak_MB"] for c in mine if c["peak_MB"] is not None), default=None)})
    return {"summary": summary, "wall_s": wall, "rounds": per_round, "calls": calls}


def _records(arrays: dict[str, np.ndarray], n: int, distinct: bool, packed: bool = True):
    """Flower RecordDicts as train replies carry them (count-weighted), made lazily: in fedchest's packed wire
    format, or (``packed=False``, for Flower's own helper) one Array per tensor."""
    from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

    from server.records import to_record
    from shared_models.npy import npy_fields

    def record(state: dict[str, np.ndarray]) -> ArrayRecord:
        return to_record(state) if packed else ArrayRecord({k: Array(**npy_fields(v)) for k, v in state.items()})

    base = record(arrays)
    for i in range(n):
        rec = base
        if distinct:  # its own bytes, as a real reply has
            rec = record({k: v + np.asarray(i, v.dtype) if np.issubdtype(v.dtype, np.floating) else v
                          for k, v in arrays.items()})
        yield RecordDict({"arrays": rec, "metrics": MetricRecord({"num-examples": 10 + i, "count.all": 10.0 + i,
                                                                  "train_pos": [1], "train_annotated": [10]}),
                          "site": ConfigRecord({"name": f"s{i}"})})


def copy_bandwidth(nbytes: int = 256 << 20, repeats: int = 5) -> float:
    """GB/s of a plain memory copy of ``nbytes`` (bytes copied per second): the best of NumPy's ``copyto`` (one
    thread) and torch's ``copy_`` (all threads), each the best of ``repeats``."""
    import torch

    src = np.ones(nbytes // 4, np.float32)
    dst = np.empty_like(src)
    tsrc, tdst = torch.from_numpy(src), torch.from_numpy(dst)
    best = float("inf")
    for copy in (lambda: np.copyto(dst, src), lambda: tdst.copy_(tsrc)):
        for _ in range(repeats):
            t0 = time.perf_counter()
            copy()
            best = min(best, time.perf_counter() - t0)
    return nbytes / best / 1e9


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _traced(fn) -> int:
    """Peak traced allocation above the starting level while ``fn`` runs (timed separately: tracing is slow)."""
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        fn()
        return tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()


def aggregation(arrays: dict[str, np.ndarray], n_sites: int, flower: bool = True, flower_distinct: bool = True
                ) -> dict:
    """Seconds, GB/s of updates and traced peak (in model sizes) of: the fedchest server's whole train aggregation
    (validation, norms, the running mean, the new record), the running mean alone, and Flower's helper."""
    import tempfile

    from flwr.app import Message, Metadata
    from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords

    from server.aggregation import RunningMean, SiteUpdate
    from server.registry import Registry
    from server.strategy import FedChestAvg
    from server.records import from_record, to_record
    from shared_models.metrics import HistogramSpec

    model_bytes = sum(v.nbytes for v in arrays.values())
    arrays = {f"all.{k}": v for k, v in arrays.items()}  # one parameter group, as FedAvg sends the whole model
    ref = to_record(arrays)
    out: dict = {"model_MB": model_bytes / 1e6, "sites": n_sites}

    def replies():
        for i, rd in enumerate(_records(arrays, n_sites, distinct=False)):
            meta = Metadata(run_id=1, message_id=f"m{i}", src_node_id=i + 1, dst_node_id=0, reply_to_message_id="x",
                            group_id="1", created_at=time.time(), ttl=60.0, message_type="train")
            yield Message(content=rd, metadata=meta)

    with tempfile.TemporaryDirectory() as tmp:
        registry = Registry(f"sqlite:///{tmp}/r.db")
        run = registry.create_run("bench", "s", "h", "cxrlt2026", 1, {}, True)

        def server():
            return FedChestAvg(registry=registry, run_id=run, classes=("A",), spec=HistogramSpec(), reference=ref,
                               norm_bound=0.0)
        strat = server()
        first = _timed(lambda: strat.aggregate_train(1, replies()))  # fresh process memory: page faults
        took = _timed(lambda: strat.aggregate_train(2, replies()))  # the steady state: the allocator reuses it
        strat = None
        peak = _traced(lambda: server().aggregate_train(1, replies()))
        registry.engine.dispose()
    out["fedchest_first_round_s"], out["fedchest_s"] = first, took
    out["fedchest_GBps"] = n_sites * model_bytes / took / 1e9
    out["fedchest_peak_x_model"] = peak / model_bytes

    payload = next(_records(arrays, 1, distinct=False))["arrays"]
    local = from_record(payload)
    def fold():
        acc = RunningMean(local, {"all": list(arrays)})
        for i in range(n_sites):
            acc.add(SiteUpdate(f"s{i}", local, {"all": 10.0 + i}))
        return acc.result()
    fold()
    took, peak = _timed(fold), _traced(fold)
    out["running_mean_s"], out["running_mean_GBps"] = took, n_sites * model_bytes / took / 1e9
    out["running_mean_peak_x_model"] = peak / model_bytes

    if flower:
        if flower_distinct:  # memory: every reply held at once, as Flower's send_and_receive returns them
            peak = _traced(lambda: aggregate_arrayrecords(list(_records(arrays, n_sites, True, packed=False)),
                                                          "num-examples"))
            out["flower_peak_x_model"] = peak / model_bytes
        shared = list(_records(arrays, n_sites, distinct=False, packed=False))
        aggregate_arrayrecords(shared, "num-examples")
        took = _timed(lambda: aggregate_arrayrecords(shared, "num-examples"))  # its second call, as ours
        out["flower_s"], out["flower_GBps"] = took, n_sites * model_bytes / took / 1e9
    return out
