"""A stand-in for Flower's ``flwr-clientapp`` entry point in tests/test_warm.py: does what argv says."""

from __future__ import annotations

import os
import signal
import sys
import time


def main() -> None:
    action = sys.argv[1]
    if action == "echo":  # what the child received from the shim: argv, environment, directory, streams
        print(f"argv={sys.argv[1:]} env={os.environ.get('WARM_TEST_VALUE')} cwd={os.getcwd()} "
              f"preloaded={'tests.warm_preloaded' in sys.modules}", flush=True)
        print("to-stderr", file=sys.stderr, flush=True)
    elif action == "exit":
        sys.exit(int(sys.argv[2]))
    elif action == "raise":
        raise RuntimeError("task failed")
    elif action == "crash":
        os.kill(os.getpid(), signal.SIGSEGV)
    elif action == "wait":
        print("waiting", flush=True)
        time.sleep(120)
