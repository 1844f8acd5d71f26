"""`make bench`: run the benchmarks and write benchmarks/results/latest.json and latest.md.

Each module under benchmarks/ named here has `run(work_dir) -> {benchmark key: record}`.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import tempfile
from pathlib import Path

from benchmarks.common import tree_changes, write_results
from consortium.simulation import quiet_flower_env

BENCHMARKS = {
    "accuracy": "benchmarks.bench_accuracy",
    "data_path": "benchmarks.bench_data_path",
    "experts": "benchmarks.bench_experts",
    "inference": "benchmarks.bench_inference",
    "dashboard": "benchmarks.bench_dashboard",
    "dp_cost": "benchmarks.bench_dp_cost",
    "deployment": "benchmarks.bench_deployment",
    "zeroshot": "benchmarks.bench_zeroshot",
    "box_latent": "benchmarks.bench_box_latent",
    "robust": "benchmarks.bench_robust",
    "scale": "benchmarks.bench_scale",
    "ct": "benchmarks.bench_ct",
    "trcgl": "benchmarks.bench_trcgl",
    "localizer": "benchmarks.bench_localizer",
    "privacy_audit": "benchmarks.bench_privacy_audit",
    "real_accuracy": "benchmarks.bench_real_accuracy",
}


def main() -> None:
    quiet_flower_env()
    p = argparse.ArgumentParser()
    p.add_argument("--only", choices=sorted(BENCHMARKS), action="append")
    p.add_argument("--work", help="scratch folder (default: a temporary one)")
    p.add_argument("--allow-dirty", action="store_true",
                   help="measure a tree with uncommitted changes (each record says tree_dirty = true)")
    p.add_argument("--seeds", type=int, nargs="+",
                   help="seeds for the benchmarks that take them (each record then has a mean and 95 %% interval)")
    p.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                   help="a parameter of the benchmark's run() (e.g. images=300), typed by its default; the record's "
                        "command names it")
    args = p.parse_args()
    changed = tree_changes()
    if changed and not args.allow_dirty:
        raise SystemExit(f"make bench: {len(changed)} tracked file(s) differ from the commit a record would name "
                         f"({', '.join(changed[:5])}); commit them, or pass --allow-dirty (recorded as tree_dirty)")
    work = Path(args.work or tempfile.mkdtemp(prefix="fedchest-bench-"))
    for name in args.only or BENCHMARKS:
        bench = importlib.import_module(BENCHMARKS[name]).run
        kwargs = {}
        if args.seeds:
            if "seeds" not in inspect.signature(bench).parameters:
                raise SystemExit(f"make bench: --seeds given but {BENCHMARKS[name]}.run takes no seeds")
            kwargs["seeds"] = tuple(args.seeds)
        kwargs.update(bench_params(bench, args.param))
        results = bench(work / name, **kwargs)
        print(f"{name}: wrote {write_results(results)}")


def bench_params(bench, items: list[str]) -> dict:
    """``--param NAME=VALUE`` items as keyword arguments of ``bench``, each cast to the type of its default."""
    params = inspect.signature(bench).parameters
    known = [n for n, q in params.items() if q.default is not inspect.Parameter.empty and n != "seeds"]
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or name not in known:
            raise SystemExit(f"make bench: --param {item!r}: expected NAME=VALUE with NAME one of {', '.join(known)}")
        default = params[name].default
        out[name] = (value.lower() in ("1", "true", "yes")) if isinstance(default, bool) else type(default)(value)
    return out


if __name__ == "__main__":
    main()
