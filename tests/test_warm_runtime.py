"""What a warm worker changes in Flower's ClientApp runtime (client/warm/runtime.py): a task's object pulls back
off at the SuperNode's poll interval, and an installed FAB is not extracted again."""

from __future__ import annotations

import threading
import types
import zipfile
from pathlib import Path

import pytest
from flwr.cli import install
from flwr.cli.build import build_fab_from_disk
from flwr.supercore.constant import PULL_MAX_TIME
from flwr.supercore.inflatable import inflatable_utils
from flwr.supercore.inflatable.inflatable_utils import ObjectUnavailableError
from flwr.supernode.runtime import run_clientapp

from client.deploy.supernode import FlowerShapeError
from client.warm import runtime
from tests.test_warm import PROJECT, write_project


@pytest.fixture
def flower(monkeypatch, tmp_path):
    """Flower's runtime module as it was, restored after the test; Flower's home in tmp_path."""
    for name in ("pull_and_inflate_object_from_tree", "install_from_fab"):
        monkeypatch.setattr(run_clientapp, name, getattr(run_clientapp, name))
    monkeypatch.setenv("FLWR_HOME", str(tmp_path / "flwr-home"))
    return run_clientapp


def test_a_task_pull_backs_off_from_half_the_node_poll_to_the_poll(flower, monkeypatch):
    monkeypatch.setenv("FEDCHEST_NODE_POLL_S", "0.2")
    runtime.prepare()
    runtime.prepare()  # idempotent
    waits: list[float] = []

    class Event(threading.Event):
        def wait(self, timeout=None):
            waits.append(timeout)
            return super().wait(0)

    monkeypatch.setattr(inflatable_utils, "threading", types.SimpleNamespace(Event=Event, Lock=threading.Lock))
    monkeypatch.setattr(inflatable_utils.random, "uniform", lambda a, b: 0.0)  # no jitter
    tries = {"n": 0}

    def pull(object_id: str) -> bytes:
        tries["n"] += 1
        if tries["n"] <= 3:  # the SuperNode has not pulled the object from the link yet
            raise ObjectUnavailableError(object_id)
        return b"content"

    patched = flower.pull_and_inflate_object_from_tree
    assert patched.keywords["max_time"] == PULL_MAX_TIME and patched.keywords["max_tries_per_object"] is None
    contents = inflatable_utils.pull_objects(["x"], pull, **{k: v for k, v in patched.keywords.items()})
    assert contents == {"x": b"content"}
    assert waits == [0.1, 0.2, 0.2]  # Flower's own: 1, 2, 4 s


def test_another_flower_runtime_is_refused(flower):
    flower.pull_and_inflate_object_from_tree = lambda *a, **k: None
    with pytest.raises(FlowerShapeError, match="pull_and_inflate_object_from_tree"):
        runtime.prepare()


def _fab(tmp_path: Path, name: str, **changes: str) -> bytes:
    write_project(tmp_path / name, {**PROJECT, **changes})
    return build_fab_from_disk(tmp_path / name)


def test_an_installed_fab_is_not_extracted_again_and_another_fab_is(flower, monkeypatch, tmp_path):
    runtime.reuse_installed_fabs()
    fab, other = _fab(tmp_path, "a"), _fab(tmp_path, "b", **{"warmpkg/helper.py": "ORIGIN = 'other'\n"})
    opened = []
    real_zip = zipfile.ZipFile
    monkeypatch.setattr(install.zipfile, "ZipFile", lambda *a, **k: opened.append(1) or real_zip(*a, **k))
    first = flower.install_from_fab(fab, skip_prompt=True)
    assert (first / "pyproject.toml").is_file() and len(opened) == 1
    assert flower.install_from_fab(fab, skip_prompt=True) == first and len(opened) == 1  # reused, not extracted
    second = flower.install_from_fab(other, skip_prompt=True)
    assert second != first and len(opened) == 2
    assert (second / "warmpkg" / "helper.py").read_text() == "ORIGIN = 'other'\n"


def test_a_folder_flower_installed_alone_or_a_wrong_marker_is_installed_by_flower(flower, monkeypatch, tmp_path):
    fab = _fab(tmp_path, "a")
    folder = install.install_from_fab(fab, skip_prompt=True)  # Flower alone: no marker
    runtime.reuse_installed_fabs()
    opened = []
    real_zip = zipfile.ZipFile
    monkeypatch.setattr(install.zipfile, "ZipFile", lambda *a, **k: opened.append(1) or real_zip(*a, **k))
    assert flower.install_from_fab(fab, skip_prompt=True) == folder and len(opened) == 1
    (folder / runtime.MARKER).write_text("0" * 64)  # a digest that is not this FAB's
    assert flower.install_from_fab(fab, skip_prompt=True) == folder and len(opened) == 2
    assert flower.install_from_fab(fab, skip_prompt=True) == folder and len(opened) == 2
