"""Run the fedchest ServerApp and ClientApp under Flower's simulation runtime, in this process.

The apps are loaded by reference (``server.server_app:app``, ``client.client_app:app``) so the
coordinator package never imports the site package. The run config reaches the ServerApp through its
Context; the ServerApp forwards what sites need (``sim-sites-dir``) in the message config.
"""

from __future__ import annotations

import logging
import os
from typing import Any

SERVER_APP = "server.server_app:app"
CLIENT_APP = "client.client_app:app"


QUIET_FLOWER_ENV = {  # no telemetry, no update checks, no runtime installs, offline Hugging Face
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "RAY_DEDUP_LOGS": "0",
    "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0",
    # Ray's driver gives its GCS 60 s to answer and then ends the process; on a 2-core machine running two test
    # workers (or a demo beside other jobs) its start took longer once ("Failed to connect to GCS within 60 s")
    "RAY_gcs_rpc_server_reconnect_timeout_s": "300",
}


def quiet_flower_env() -> None:
    """``QUIET_FLOWER_ENV`` where not set already (before importing flwr)."""
    for key, value in QUIET_FLOWER_ENV.items():
        os.environ.setdefault(key, value)


SECAGG_APPS = ("server.secagg_app:app", "client.secagg_app:app")


def run_in_process(run_config: dict[str, Any], num_supernodes: int, cpus_per_client: float = 1.0,
                   verbose: bool = False, apps: tuple[str, str] = (SERVER_APP, CLIENT_APP)) -> None:
    quiet_flower_env()
    os.environ.setdefault("FEDCHEST_THREADS", str(max(1, int(cpus_per_client))))
    from flwr.app import Context, RecordDict
    from flwr.supercore.telemetry import EventType
    from flwr.simulation.run_simulation import _run_simulation

    if not verbose:  # the demo prints its own per-round table; Flower's INFO lines are for --verbose
        logging.getLogger("flwr").setLevel(logging.WARNING)
    run_config = dict(run_config)
    if "deadline-floor" not in run_config:
        # Simulated sites share this machine and one message queue: a per-site deadline shorter than the round
        # timeout would turn the machine's own queueing (another process busy, say) into dropped rounds, and the
        # engine keeps computing the abandoned replies, so the next round starts behind and misses too (seen in
        # `make demo` on a busy machine). Stragglers are a deployment matter; a simulation waits up to round-timeout.
        from server.server_app import DEFAULTS

        run_config["deadline-floor"] = float(run_config.get("round-timeout", DEFAULTS["round-timeout"]))
    context = Context(run_id=0, node_id=0, node_config={}, state=RecordDict(), run_config=run_config)
    _run_simulation(
        num_supernodes=num_supernodes,
        exit_event=EventType.PYTHON_API_RUN_SIMULATION_LEAVE,
        server_app_attr=apps[0],
        client_app_attr=apps[1],
        server_app_context=context,
        backend_name="ray",
        backend_config={
            "client_resources": {"num_cpus": cpus_per_client, "num_gpus": 0.0},
            "init_args": {"num_cpus": os.cpu_count() or 1, "include_dashboard": False},
        },
        app_dir=".",
        verbose_logging=verbose,
    )
