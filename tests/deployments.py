"""Helpers for tests that run a real local deployment (consortium/deploy_local.py)."""

from __future__ import annotations

import threading

from consortium.deploy_local import LocalConsortium


def submit_in_background(c: LocalConsortium, config: dict, timeout: float) -> tuple[threading.Thread, dict]:
    """``c.submit(config)`` on a thread, so the test can act while the run goes on; the dict gets ``run`` (the
    Flower run id) or ``error`` (what ``submit`` raised, with the run's log) when it ends."""
    result: dict = {}

    def submit() -> None:
        try:
            result["run"] = c.submit(config, timeout=timeout)
        except Exception as exc:  # noqa: BLE001  (the test reports it)
            result["error"] = exc

    runner = threading.Thread(target=submit)
    runner.start()
    return runner, result

