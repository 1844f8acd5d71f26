"""The warm ClientApp's shim/worker protocol (client/warm): a real worker process and the shim as SuperExec would
run it, with a test entry point in place of Flower's; and the FAB check with Flower's own ClientApp loader."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from client.warm import SOCKET_ENV
from client.warm.site import install_shim, supernode_env, wait_ready

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def warm(tmp_path_factory):
    """A worker on a short socket path, preloading tests.warm_preloaded, running tests.warm_entry:main per task."""
    d = Path(os.environ.get("TMPDIR", "/tmp")) / f"fcw-{os.getpid()}"
    d.mkdir(exist_ok=True)
    sock = d / "w.sock"
    log = tmp_path_factory.mktemp("warm") / "worker.log"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with log.open("wb") as f:
        proc = subprocess.Popen([sys.executable, "-m", "client.warm.worker", "--socket", str(sock), "--preload",
                                 "tests.warm_preloaded", "--packages", "tests", "--no-fab-check",
                                 "--entry", "tests.warm_entry:main"], env=env, stdout=f, stderr=subprocess.STDOUT)
    try:
        wait_ready(sock, proc, log, timeout=120)
        shim = install_shim(d / "bin")
        yield {"sock": sock, "shim": shim, "proc": proc, "log": log, "env": supernode_env(env, shim.parent, sock)}
    finally:
        proc.terminate()
        proc.wait(30)
        for p in (sock, shim, shim.parent, d):
            if p.is_dir():
                p.rmdir()
            else:
                p.unlink(missing_ok=True)


def run_shim(warm, *args: str, env: dict | None = None, cwd: Path | None = None, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(warm["shim"]), *args], env=env or warm["env"], cwd=cwd, capture_output=True,
                          text=True, timeout=60, **kw)


def test_shim_runs_the_task_in_a_forked_child_with_its_argv_env_cwd_and_streams(warm, tmp_path):
    r = run_shim(warm, "echo", "--token", "t0", env={**warm["env"], "WARM_TEST_VALUE": "v1"}, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert f"argv=['echo', '--token', 't0'] env=v1 cwd={tmp_path} preloaded=True" in r.stdout
    assert "to-stderr" in r.stderr and "cold" not in r.stderr
    again = run_shim(warm, "echo", env={**warm["env"], "WARM_TEST_VALUE": "v2"})  # a second task, fresh env
    assert "env=v2" in again.stdout and warm["proc"].poll() is None


def test_exit_codes_failures_and_crashes_reach_the_shim_and_the_worker_survives(warm):
    assert run_shim(warm, "exit", "0").returncode == 0
    assert run_shim(warm, "exit", "23").returncode == 23
    failed = run_shim(warm, "raise")
    assert failed.returncode == 1 and "RuntimeError: task failed" in failed.stderr
    crashed = run_shim(warm, "crash")
    assert crashed.returncode == -signal.SIGSEGV  # the shim dies of the task's signal, as the task would have
    assert run_shim(warm, "exit", "7").returncode == 7  # still serving
    assert warm["proc"].poll() is None
    assert "killed by SIGSEGV" in warm["log"].read_text()


def test_sigterm_to_the_shim_reaches_the_task(warm):
    p = subprocess.Popen([str(warm["shim"]), "wait"], env=warm["env"], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "waiting"
    p.send_signal(signal.SIGTERM)
    assert p.wait(30) == -signal.SIGTERM
    assert warm["proc"].poll() is None


def test_a_shim_that_goes_away_takes_its_task_with_it(warm):
    p = subprocess.Popen([str(warm["shim"]), "wait"], env=warm["env"], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "waiting"
    p.kill()
    p.wait(10)
    deadline = time.monotonic() + 30
    while "went away" not in warm["log"].read_text() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert "task" in warm["log"].read_text() and "went away" in warm["log"].read_text()
    assert run_shim(warm, "exit", "3").returncode == 3


def fake_real_clientapp(folder: Path) -> Path:
    """A `flwr-clientapp` later on PATH than the shim: what the shim falls back to."""
    folder.mkdir()
    real = folder / "flwr-clientapp"
    real.write_text(f"#!{sys.executable}\nimport sys\nprint('real clientapp', sys.argv[1:])\nsys.exit(5)\n")
    real.chmod(0o755)
    return real


@pytest.mark.parametrize("case", ["unset", "no-socket", "stale"])
def test_without_a_worker_the_shim_runs_the_real_clientapp_and_says_so_once(tmp_path, case):
    shim = install_shim(tmp_path / "bin")
    real = fake_real_clientapp(tmp_path / "real")
    env = {k: v for k, v in os.environ.items() if k != SOCKET_ENV}
    env["PATH"] = f"{shim.parent}{os.pathsep}{real.parent}{os.pathsep}{env['PATH']}"
    if case != "unset":
        sock = tmp_path / "w.sock"
        env[SOCKET_ENV] = str(sock)
        if case == "stale":  # a socket file whose worker is gone
            import socket as s

            srv = s.socket(s.AF_UNIX, s.SOCK_STREAM)
            srv.bind(str(sock))
            srv.close()
    r = subprocess.run([str(shim), "--token", "abc"], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 5
    assert "real clientapp ['--token', 'abc']" in r.stdout
    lines = [x for x in r.stderr.splitlines() if "fedchest warm ClientApp" in x]
    assert len(lines) == 1 and "cold start" in lines[0], r.stderr


def test_a_second_worker_refuses_a_live_socket_and_replaces_a_stale_one(warm, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-m", "client.warm.worker", "--socket", str(warm["sock"]), "--preload", "json",
                        "--no-fab-check"], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "another warm worker is serving" in r.stderr


PROJECT = {
    "pyproject.toml": """
        [project]
        name = "warmfab"
        version = "1.0.0"
        [tool.flwr.app]
        publisher = "tests"
        [tool.flwr.app.components]
        serverapp = "warmpkg.app:app"
        clientapp = "warmpkg.app:app"
        """,
    "warmpkg/__init__.py": "",
    "warmpkg/app.py": """
        from flwr.clientapp import ClientApp
        from warmpkg import helper
        app = ClientApp()
        ORIGIN = helper.ORIGIN
        """,
    "warmpkg/helper.py": "ORIGIN = 'worker'\n",
}

CHECK = """
import sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
import warmpkg.app as preloaded
from client.warm.fabcheck import Preloaded, install_check
from flwr.supernode.runtime import run_clientapp as runtime
install_check(Preloaded.snapshot(["warmpkg"]))
load = runtime.get_load_client_app_fn(default_app_ref="", app_path=None, multi_app=True)
app = load("tests/warmfab", "1.0.0", sys.argv[2])
module = sys.modules["warmpkg.app"]
print("SAME" if module is preloaded else "REIMPORTED", module.ORIGIN, Path(module.__file__).parent.parent)
"""


def write_project(folder: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_text(textwrap.dedent(text).lstrip())


@pytest.mark.parametrize("change", [None, "module", "added"])
def test_fab_check_keeps_preloaded_code_only_when_the_fab_matches(tmp_path, change):
    worker_root, home = tmp_path / "worker", tmp_path / "flwr-home"
    write_project(worker_root, PROJECT)
    fab_hash = "ab" * 32
    env = {**os.environ, "PYTHONPATH": str(ROOT), "FLWR_HOME": str(home)}
    fab_dir = Path(subprocess.run([sys.executable, "-c", "from flwr.common.config import get_project_dir;"
                                   f"print(get_project_dir('tests/warmfab', '1.0.0', '{fab_hash}'))"],
                                  env=env, capture_output=True, text=True, check=True).stdout.strip())
    fab = dict(PROJECT)
    if change == "module":  # a lazily imported module differs: the worker's copy would be the wrong one
        fab["warmpkg/helper.py"] = "ORIGIN = 'fab'\n"
    elif change == "added":
        fab["warmpkg/extra.py"] = "X = 1\n"
    write_project(fab_dir, fab)
    r = subprocess.run([sys.executable, "-c", CHECK, str(worker_root), fab_hash], env=env, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    verdict = r.stdout.split()
    if change is None:
        assert verdict[:2] == ["SAME", "worker"] and "matches the preloaded code" in r.stderr
    else:
        assert verdict[0] == "REIMPORTED" and Path(verdict[2]) == fab_dir
        assert verdict[1] == ("fab" if change == "module" else "worker")
        assert "differs from the worker's preloaded code" in r.stderr
        assert ("warmpkg/helper.py (changed)" if change == "module" else "warmpkg/extra.py") in r.stderr
