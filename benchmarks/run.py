"""`make bench`: run the benchmarks and write benchmarks/results/latest.json and latest.md."""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from benchmarks.common import write_results
from server.simulation import quiet_flower_env

BENCHMARKS = ("accuracy",)


def main() -> None:
    quiet_flower_env()
    p = argparse.ArgumentParser()
    p.add_argument("--only", choices=BENCHMARKS, action="append")
    p.add_argument("--work", help="scratch folder (default: a temporary one)")
    args = p.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="fedchest-bench-"))
    for name in args.only or BENCHMARKS:
        if name == "accuracy":
            from benchmarks import bench_accuracy

            results = bench_accuracy.run(work / "accuracy")
        path = write_results(results, "make bench")
        print(f"{name}: wrote {path}")
    os.environ.get("CI")


if __name__ == "__main__":
    main()
