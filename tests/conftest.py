"""Shared fixtures: tiny synthetic sites built on the fly, and the real sample files when present."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
REAL_DATA = Path(os.environ.get("FEDCHEST_REAL_DATA", REPO.parent / "shared" / "data" / "real"))

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
if os.environ.get("PYTEST_XDIST_WORKER"):  # `make test` runs two workers on two cores: one torch thread each (and
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # in the processes a test starts), not two spinning against two
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def real_data() -> Path:
    if not REAL_DATA.is_dir():
        pytest.skip(f"real sample files not found at {REAL_DATA} (set FEDCHEST_REAL_DATA to their folder)")
    return REAL_DATA


@pytest.fixture(scope="session")
def synth_sites(tmp_path_factory) -> dict[str, Path]:
    """One small synthetic site per format (80 images, 32 px), written once per test session."""
    from client.synth import synthesize_site

    root = tmp_path_factory.mktemp("sites")
    return {fmt: synthesize_site(root / fmt, fmt, f"site-{fmt}", n_images=80, image_size=32, seed=1)
            for fmt in ("padchest", "mimic", "openi", "dicom")}


@pytest.fixture
def padchest_site(synth_sites, tmp_path):
    """The PadChest synthetic site (it carries report text), indexed into this test's own work dir."""
    import dataclasses

    from client.index import prepare_site
    from client.site_config import load_site_config

    cfg = dataclasses.replace(load_site_config(synth_sites["padchest"]), work_dir=tmp_path / "work")
    prepare_site(cfg)
    return cfg


def once_per_session(tmp_path_factory, name: str, build: Callable[[Path], Any]) -> Any:
    """``build(folder)``'s result (JSON values), made once per test session: under pytest-xdist the first worker
    that asks builds it under a file lock, the others wait and read it back (a federated run made on each worker
    takes a core for minutes)."""
    import json

    from filelock import FileLock

    if os.environ.get("PYTEST_XDIST_WORKER") is None:
        return build(tmp_path_factory.mktemp(name))
    root = tmp_path_factory.getbasetemp().parent / name  # the session's folder, shared by its workers
    root.mkdir(exist_ok=True)
    stamp = root / "result.json"
    with FileLock(str(root / "build.lock")):
        if not stamp.exists():
            stamp.write_text(json.dumps(build(root)))
    return json.loads(stamp.read_text())


def _tiny_run_with_references(out: Path) -> list:
    import json
    import subprocess
    import sys

    from server.registry import Registry

    r = subprocess.run([sys.executable, "-m", "consortium.cli", "demo", "--out", str(out), "--rounds", "2",
                        "--images-per-site", "90", "--image-size", "32", "--preset", "tiny", "--local-epochs", "1",
                        "--seed", "5"], capture_output=True, text=True, cwd=REPO, timeout=900)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    url, run_id, sites = summary["db_url"], summary["run_id"], summary["sites"]
    Registry(url).add_references(
        run_id, [(f"local-only:{a}", b, "all", "mAP", 0.1 + 0.1 * (a == b)) for a in sites for b in sites]
        + [("pooled", None, "all", "mAP", 0.3)])
    return [url, run_id, sites]


@pytest.fixture(scope="session")
def demo_box_run(demo_registry) -> dict:
    """The box-latent run of the demo registry (tests/demo_registry.py): `make demo`'s --box-latent, two rounds of
    the head on the first run's frozen experts, in the same registry. Its summary plus ``out`` (the make-demo
    folder) and ``stdout`` (the demo's printout)."""
    import json

    out = Path(demo_registry.main_out)
    summary = json.loads((out / "box-latent" / "summary.json").read_text())
    return {**summary, "out": out, "stdout": demo_registry.main_log}


@pytest.fixture(scope="session")
def tiny_run_with_references(tmp_path_factory) -> tuple[str, str, list[str]]:
    """A real federated run (the demo CLI: 3 synthetic sites, 2 rounds, tiny preset, 32 px) and its registry, with
    the local-only and pooled references a benchmark records next to its run: (URL, run id, site names). Made once
    per session."""
    url, run_id, sites = once_per_session(tmp_path_factory, "tiny-run", _tiny_run_with_references)
    return url, run_id, sites


@pytest.fixture(scope="session")
def demo_registry(tmp_path_factory):
    """A registry made like `make demo`'s plus a DP run (tests/demo_registry.py), built once per session."""
    from tests import demo_registry

    return demo_registry.shared(tmp_path_factory)


@pytest.fixture(scope="session")
def postgres(tmp_path_factory):
    """A PostgreSQL server for this test session, or a skip that says why there is none."""
    from tests.pg import PostgresUnavailable, TempPostgres

    import importlib.util

    if importlib.util.find_spec("psycopg") is None:
        pytest.skip("psycopg is not installed (it is a fedchest dependency: reinstall with `make venv`)")
    root = Path(f"/tmp/fedchest-pg-{os.getpid()}")
    try:
        pg = TempPostgres(root)
        pg.start()
    except PostgresUnavailable as exc:
        pytest.skip(f"PostgreSQL cannot start here: {exc}")
    try:
        yield pg
    finally:
        pg.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    """An empty registry database on each backend."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'registry.db'}"
    pg = request.getfixturevalue("postgres")
    return pg.create_database("reg_" + uuid.uuid4().hex[:12])
