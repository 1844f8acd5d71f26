"""Running the warm ClientApp beside a SuperNode: the shim put first on PATH, the worker started and awaited.

``install_shim(folder)`` writes ``folder/flwr-clientapp`` (a copy of ``shim.py`` run by this interpreter);
``worker_command`` and ``wait_ready`` start a worker and wait for its socket; ``supernode_env`` is the environment
a SuperNode needs so its SuperExec's ``flwr-clientapp`` reaches the worker. ``python -m client.warm.site --socket
PATH -- flower-supernode ...`` does all of it in a container (deploy/Dockerfile, ``site`` stage): it starts the
worker, runs the SuperNode, forwards SIGTERM / SIGINT to it, and stops the worker when the SuperNode ends.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from client.warm import SOCKET_ENV
from client.warm import shim

SHIM_NAME = shim.REAL_COMMAND


class WarmStartError(RuntimeError):
    """The worker did not come up; the message names its log."""


def install_shim(folder: Path) -> Path:
    """``folder/flwr-clientapp``: the shim, run by this interpreter. Returns its path."""
    folder.mkdir(parents=True, exist_ok=True)
    source = Path(shim.__file__).read_text(encoding="utf-8").split("\n", 1)[1]  # without its generic shebang
    target = folder / SHIM_NAME
    target.write_text(f"#!{sys.executable} -S\n{source}", encoding="utf-8")  # -S: stdlib only, no site scan
    target.chmod(0o755)
    return target


def worker_command(socket_path: Path) -> list[str]:
    return [sys.executable, "-m", "client.warm.worker", "--socket", str(socket_path)]


def supernode_env(env: dict[str, str], shim_dir: Path, socket_path: Path) -> dict[str, str]:
    """``env`` with the shim first on PATH and the worker's socket named."""
    return {**env, "PATH": f"{shim_dir}{os.pathsep}{env.get('PATH', '')}", SOCKET_ENV: str(socket_path)}


def wait_ready(socket_path: Path, proc: subprocess.Popen, log: Path | None = None, timeout: float = 600.0) -> None:
    """Return once the worker accepts connections; WarmStartError if it exits or takes longer than ``timeout``."""
    end = time.monotonic() + timeout
    where = f"; see {log}" if log else ""
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise WarmStartError(f"the warm ClientApp worker exited with code {proc.returncode} before it was "
                                 f"ready{where}")
        if socket_path.exists():
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
                try:
                    probe.connect(str(socket_path))
                    return
                except OSError:
                    pass
        time.sleep(0.2)
    raise WarmStartError(f"the warm ClientApp worker was not ready on {socket_path} within {timeout:.0f} s{where}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m client.warm.site",
                                     description="Start a warm ClientApp worker, then run the SuperNode command.")
    parser.add_argument("--socket", default=os.environ.get(SOCKET_ENV, "/tmp/fedchest-warm/worker.sock"))
    parser.add_argument("--shim-dir", default=None, help="where to write the shim (default: beside the socket)")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- flower-supernode ARGS...")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the SuperNode command after --")
    socket_path = Path(args.socket)
    shim_dir = Path(args.shim_dir) if args.shim_dir else socket_path.parent / "bin"
    install_shim(shim_dir)
    worker = subprocess.Popen(worker_command(socket_path), env={**os.environ, SOCKET_ENV: str(socket_path)})
    try:
        wait_ready(socket_path, worker)
        node = subprocess.Popen(command, env=supernode_env(dict(os.environ), shim_dir, socket_path))
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda signum, _frame: node.send_signal(signum))
        return node.wait()
    finally:
        if worker.poll() is None:
            worker.terminate()
            try:
                worker.wait(20)
            except subprocess.TimeoutExpired:
                worker.kill()


if __name__ == "__main__":
    sys.exit(main())
