"""``fedchest-supernode`` (client/deploy/supernode.py): Flower's SuperNode with its waits capped, refused on a
Flower it was not made for, and with bad settings refused before it connects. The deployment tests run it
against a real SuperLink."""

from __future__ import annotations

import functools
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
from flwr.supercore.inflatable import inflatable_utils
from flwr.supercore.inflatable.inflatable_utils import ObjectUnavailableError
from flwr.supernode import start_client_internal as sic

from client.deploy import supernode

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def restore_flower(monkeypatch):
    """The patched module's globals and the environment, as they were, after the test."""
    monkeypatch.setattr(sic, "time", sic.time)
    monkeypatch.setattr(sic, "pull_objects", sic.pull_objects)
    monkeypatch.delenv(supernode.POLL_ENV, raising=False)
    monkeypatch.delenv(supernode.SUPEREXEC_POLL_ENV, raising=False)
    return monkeypatch


def test_the_poll_comes_from_the_environment_and_bad_values_are_refused(restore_flower):
    assert supernode.poll_seconds() == supernode.DEFAULT_POLL_S
    restore_flower.setenv(supernode.POLL_ENV, "0.25")
    assert supernode.poll_seconds() == 0.25
    for bad in ("soon", "", "0", "-1", "nan", "inf", "3.5"):
        restore_flower.setenv(supernode.POLL_ENV, bad)
        with pytest.raises(SystemExit, match=f"FEDCHEST_NODE_POLL_S = {bad!r}: expected a number of seconds"):
            supernode.poll_seconds()


def test_flowers_supernode_waits_are_capped_at_the_poll(restore_flower):
    """Flower 1.41's loop sleeps 3 s after an empty pull and 0.5 s between reply checks: each becomes the poll."""
    assert supernode.sleep_calls(sic) == supernode.EXPECTED_SLEEPS
    slept = []
    restore_flower.setattr(supernode.time, "sleep", slept.append)  # the real module's sleep, as the cap calls it
    supernode.patch(0.1)
    sic.time.sleep(3)
    sic.time.sleep(0.5)
    sic.time.sleep(0.02)
    assert slept == [0.1, 0.1, 0.02]
    assert sic.time.monotonic is supernode.time.monotonic  # everything else is the time module's


def test_object_pulls_back_off_from_half_the_poll_to_the_poll_within_flowers_time_budget(restore_flower):
    from flwr.supercore.constant import PULL_MAX_TIME

    supernode.patch(0.2)
    pull = sic.pull_objects
    assert isinstance(pull, functools.partial) and pull.func is inflatable_utils.pull_objects
    assert pull.keywords == {"initial_backoff": 0.1, "backoff_cap": 0.2, "max_tries_per_object": None,
                             "max_time": PULL_MAX_TIME}
    waits, real_wait = [], inflatable_utils.threading.Event.wait

    def wait(event, timeout=None):  # the back-off waits on an Event with a timeout: recorded, not waited
        if timeout is None:
            return real_wait(event)
        waits.append(timeout)
        return event.is_set()

    restore_flower.setattr(inflatable_utils.threading.Event, "wait", wait)
    missing = {"a": 4}  # object "a" is missing for its first 4 pulls (still being pushed)

    def pull_object(obj_id: str) -> bytes:
        if missing.get(obj_id, 0) > 0:
            missing[obj_id] -= 1
            raise ObjectUnavailableError(obj_id)
        return obj_id.encode()

    assert pull(["a", "b"], pull_object_fn=pull_object) == {"a": b"a", "b": b"b"}
    assert len(waits) == 4 and all(w <= 0.2 * 1.2 for w in waits), waits  # Flower's own: 1, 2, 4, 8 s (+-20 %)


def _fake_flower_module(tmp_path: Path, body: str):
    path = tmp_path / "fake_start_client_internal.py"
    path.write_text(body)
    spec = importlib.util.spec_from_file_location("fake_start_client_internal", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_supernode_loop_shaped_otherwise_is_refused(tmp_path):
    header = "import time\nfrom flwr.supercore.inflatable.inflatable_utils import pull_objects\n"
    other_sleeps = _fake_flower_module(tmp_path, header + "def start_client_internal():\n    time.sleep(1)\n")
    found = r"waits with time.sleep at \[\('start_client_internal', 1.0\)\]"
    with pytest.raises(supernode.FlowerShapeError, match=found):
        supernode.check_shape(other_sleeps)
    same = ("def start_client_internal():\n    time.sleep(3)\n"
            "def _push_messages():\n    time.sleep(0.5)\n    def yield_object_contents():\n        time.sleep(0.5)\n")
    assert supernode.sleep_calls(_fake_flower_module(tmp_path, header + same)) == supernode.EXPECTED_SLEEPS
    other_pull = _fake_flower_module(tmp_path, "import time\npull_objects = print\n" + same)
    with pytest.raises(supernode.FlowerShapeError, match="does not pull objects"):
        supernode.check_shape(other_pull)
    variable = _fake_flower_module(tmp_path, header + same.replace("time.sleep(3)", "time.sleep(WAIT)"))
    with pytest.raises(supernode.FlowerShapeError, match="nan"):
        supernode.check_shape(variable)


def test_main_refuses_an_unknown_flower_before_starting_the_supernode(restore_flower):
    restore_flower.setattr(supernode, "EXPECTED_SLEEPS", [("start_client_internal", 2.0)])
    with pytest.raises(SystemExit, match="fedchest-supernode: flwr .*run flower-supernode instead"):
        supernode.main()
    assert sic.time is supernode.time  # nothing was patched


def test_the_superexec_polls_at_the_poll_unless_set_and_a_bad_value_is_refused(restore_flower):
    supernode.superexec_poll(0.1)
    assert os.environ[supernode.SUPEREXEC_POLL_ENV] == "0.1"
    restore_flower.setenv(supernode.SUPEREXEC_POLL_ENV, "0.5")
    supernode.superexec_poll(0.1)
    assert os.environ[supernode.SUPEREXEC_POLL_ENV] == "0.5"
    restore_flower.setenv(supernode.SUPEREXEC_POLL_ENV, "often")
    with pytest.raises(SystemExit, match="FLWR_SUPEREXEC_TASK_POLL_INTERVAL must be"):
        supernode.superexec_poll(0.1)


def _run(code_or_args: list[str], **env: str) -> subprocess.CompletedProcess:
    full = {**os.environ, "PYTHONPATH": str(ROOT), "FLWR_TELEMETRY_ENABLED": "0", **env}
    return subprocess.run([sys.executable, *code_or_args], capture_output=True, text=True, env=full, timeout=120,
                          cwd=ROOT)


def test_the_wrapper_runs_flowers_supernode_cli_without_torch_or_fedchests_models():
    r = _run(["-m", "client.deploy.supernode", "--help"])
    assert r.returncode == 0, r.stderr
    assert "--auth-supernode-private-key" in r.stdout and "flower-supernode" in r.stdout  # Flower's own options
    probe = ("import sys; from client.deploy import supernode; supernode.patch(0.1); "
             "import flwr.supernode.cli; print(sorted({m.split('.')[0] for m in sys.modules} & "
             "{'torch', 'timm', 'torchvision', 'shared_models', 'server'}))")
    r = _run(["-c", probe])
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stdout + r.stderr


def test_the_wrapper_stops_on_a_bad_poll_before_connecting():
    r = _run(["-m", "client.deploy.supernode", "--insecure", "--superlink", "127.0.0.1:1"],
             FEDCHEST_NODE_POLL_S="fast")
    assert r.returncode != 0
    assert "FEDCHEST_NODE_POLL_S = 'fast': expected a number of seconds between 0.01 and 3" in r.stderr
