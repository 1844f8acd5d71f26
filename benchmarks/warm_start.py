"""Per-task start-up of a ClientApp, cold against warm (client/warm): seconds from launching ``flwr-clientapp``
(the real entry's imports: Flower's ClientApp runtime and client.client_app) or the warm shim (forwarded to a
worker, forked, environment set up) until the ClientApp's module is importable and the entry point is running.

    PYTHONPATH=$PWD python -m benchmarks.warm_start [N]

Prints one JSON line per launch and a summary; no SuperNode is involved (the measured part ends where Flower's
pulls would begin, the same point in both paths).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COLD = ("import time, flwr.supernode.cli.flwr_clientapp, client.client_app; "
        "print(json.dumps({'ready': time.time()}))")


def entry() -> None:
    """What a warm child runs in place of Flower's entry point here: the same imports (already loaded)."""
    import flwr.supernode.cli.flwr_clientapp  # noqa: F401
    import client.client_app  # noqa: F401

    print(json.dumps({"ready": time.time()}), flush=True)


def launch(cmd: list[str], env: dict[str, str]) -> float:
    t0 = time.time()
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True, timeout=600).stdout
    return json.loads(out.strip().splitlines()[-1])["ready"] - t0


def main() -> int:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with tempfile.TemporaryDirectory(prefix="fcw-bench-") as d:
        sock, shim_dir = Path(d) / "w.sock", Path(d) / "bin"
        worker = subprocess.Popen([sys.executable, "-m", "client.warm.worker", "--socket", str(sock), "--shim-dir",
                                   str(shim_dir), "--entry", "benchmarks.warm_start:entry"], env=env)
        try:
            while not sock.exists():
                if worker.poll() is not None:
                    raise SystemExit(f"the worker exited with code {worker.returncode}")
                time.sleep(0.2)
            warm_env = {**env, "FEDCHEST_WARM_SOCKET": str(sock)}
            times: dict[str, list[float]] = {"cold": [], "warm": []}
            for i in range(n):
                times["cold"].append(launch([sys.executable, "-c", "import json; " + COLD], env))
                times["warm"].append(launch([str(shim_dir / "flwr-clientapp")], warm_env))
                print(json.dumps({"launch": i, "cold_s": round(times["cold"][-1], 3),
                                  "warm_s": round(times["warm"][-1], 3)}), flush=True)
        finally:
            worker.terminate()
            worker.wait(30)
    print(json.dumps({k: {"median_s": round(statistics.median(v), 3), "best_s": round(min(v), 3)}
                      for k, v in times.items()} | {"launches": n, "load_average": os.getloadavg()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
