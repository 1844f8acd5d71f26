"""The warm ClientApp worker: one per SuperNode, long-lived, forks a child per ClientApp task.

Start-up imports torch, timm, Flower's ``flwr-clientapp`` runtime and the project's ClientApp (the 9-26 s a cold
``flwr-clientapp`` spends per message), records the preloaded project files (``fabcheck``), then listens on a Unix
socket (mode 0600). For each task a shim (``shim.py``) sends argv, environment, working directory and its standard
streams; the worker forks, and the child takes those streams, environment, directory and argv and runs Flower's own
``flwr-clientapp`` entry point, so the task's protocol with the SuperNode, its error replies and exit codes are
Flower's. The child's exit code (or signal) goes back to the shim.

Fork safety: the worker runs no torch op, starts no Python thread and opens no gRPC channel or HTTP client before
forking (the runtime connection is made in the child); a fork is refused (the shim then runs the task cold, logged)
if a Python thread or a new native thread exists. ``GRPC_ENABLE_FORK_SUPPORT`` is set to false: no channel exists to
carry across a fork. Children are reaped through pidfds; a crashed child is an exit code, never a dead worker.
"""

from __future__ import annotations

import argparse
import importlib
import os
import selectors
import signal
import socket
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

from client.warm import SOCKET_ENV
from client.warm.shim import ConnectionClosed, ProtocolError, recv_message, send_message

DEFAULT_PRELOAD = ("torch", "timm", "flwr.supernode.cli.flwr_clientapp", "client.client_app")
DEFAULT_PACKAGES = ("client", "shared_models")
FLOWER_ENTRY = "flwr.supernode.cli.flwr_clientapp:flwr_clientapp"  # what the real `flwr-clientapp` script calls


def log(message: str) -> None:
    print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} fedchest warm worker [{os.getpid()}]: {message}", file=sys.stderr,
          flush=True)


def native_threads() -> int:
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return threading.active_count()


class Stop(Exception):
    """SIGTERM / SIGINT: the worker stops serving."""


@dataclass
class Task:
    conn: socket.socket
    pid: int = 0
    pidfd: int = -1
    started: float = 0.0


class Worker:
    def __init__(self, socket_path: Path, preload: tuple[str, ...] = DEFAULT_PRELOAD,
                 packages: tuple[str, ...] = DEFAULT_PACKAGES, check_fab: bool = True,
                 entry: str = FLOWER_ENTRY) -> None:
        self.socket_path = Path(socket_path)
        self.entry = entry
        self.preload_modules = preload
        self.packages = packages
        self.check_fab = check_fab
        self.preloaded = None
        self.baseline_threads = 0
        self.listener: socket.socket | None = None
        self.selector = selectors.DefaultSelector()
        self.tasks: dict[int, Task] = {}  # by pid
        self.served = 0

    # ------------------------------------------------------------------ start-up
    def preload(self) -> float:
        os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
        t0 = time.perf_counter()
        for name in (*self.preload_modules, self.entry.partition(":")[0]):
            importlib.import_module(name)
        from client.warm.runtime import prepare

        prepare()  # prompt object pulls, installed FABs reused: inherited by every task
        if self.check_fab:
            from client.warm.fabcheck import Preloaded

            self.preloaded = Preloaded.snapshot([p for p in self.packages if p in sys.modules])
        self.baseline_threads = native_threads()
        return time.perf_counter() - t0

    def bind(self) -> None:
        path = self.socket_path
        if path.exists() or path.is_symlink():
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                probe.connect(str(path))
            except OSError:
                path.unlink()  # stale: its worker is gone
                log(f"removed the stale socket {path}")
            else:
                raise RuntimeError(f"{path}: another warm worker is serving this socket")
            finally:
                probe.close()
        path.parent.mkdir(parents=True, exist_ok=True)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            listener.bind(str(path))
        finally:
            os.umask(old)
        listener.listen(64)
        listener.setblocking(False)
        self.listener = listener
        self.selector.register(listener, selectors.EVENT_READ, ("accept", None))

    # ------------------------------------------------------------------ serving
    def serve(self, max_tasks: int | None = None) -> None:
        """Serve until SIGTERM / SIGINT (or ``max_tasks`` tasks have finished, for tests)."""
        def stop(signum: int, _frame: object) -> None:
            raise Stop(signal.Signals(signum).name)

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        try:
            while max_tasks is None or self.served < max_tasks or self.tasks:
                for key, _ in self.selector.select(timeout=1.0):
                    kind, task = key.data
                    if kind == "accept":
                        self._accept()
                    elif kind == "request":
                        self._request(task)
                    elif kind == "shim":
                        self._from_shim(task)
                    elif kind == "exit":
                        self._exited(task)
        except Stop as why:
            log(f"{why}: stopping ({len(self.tasks)} task(s) running)")
        finally:
            self.close()

    def _accept(self) -> None:
        try:
            conn, _ = self.listener.accept()
        except BlockingIOError:
            return
        conn.settimeout(10.0)  # a shim sends its request at once
        self.selector.register(conn, selectors.EVENT_READ, ("request", Task(conn)))

    def _drop(self, task: Task) -> None:
        self.selector.unregister(task.conn)
        task.conn.close()

    def _request(self, task: Task) -> None:
        try:
            request, fds = recv_message(task.conn, want_fds=3)
        except ConnectionClosed:  # a readiness probe (fedchest deploy local, client.warm.site)
            self._drop(task)
            return
        except (ProtocolError, OSError) as exc:
            log(f"bad request from a shim ({exc}); connection dropped")
            self._drop(task)
            return
        try:
            if len(fds) != 3 or not isinstance(request.get("argv"), list) or not isinstance(request.get("env"), dict):
                raise ProtocolError(f"expected argv, env, cwd and 3 file descriptors, got {sorted(request)} and "
                                    f"{len(fds)} descriptor(s)")
            why = self._unsafe_to_fork()
            if why:
                log(f"declining a task: {why}")
                send_message(task.conn, {"cold": why})
                self._drop(task)
                return
            self._fork(task, request, fds)
        except (ProtocolError, OSError) as exc:
            log(f"bad request from a shim ({exc}); connection dropped")
            self._drop(task)
        finally:
            for fd in fds:
                os.close(fd)

    def _unsafe_to_fork(self) -> str:
        if threading.active_count() != 1:
            return f"the worker runs {threading.active_count()} Python threads; forking it is not safe"
        if native_threads() > self.baseline_threads:
            return (f"the worker runs {native_threads()} native threads, {self.baseline_threads} after preloading; "
                    "forking it is not safe")
        return ""

    def _fork(self, task: Task, request: dict, fds: list[int]) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # the child: never returns
            self._child(request, fds)
        task.pid, task.started = pid, time.monotonic()
        task.pidfd = os.pidfd_open(pid)
        task.conn.setblocking(True)
        self.tasks[pid] = task
        self.selector.modify(task.conn, selectors.EVENT_READ, ("shim", task))
        self.selector.register(task.pidfd, selectors.EVENT_READ, ("exit", task))

    def _child(self, request: dict, fds: list[int]) -> None:
        code = 1
        try:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD):
                signal.signal(sig, signal.SIG_DFL)
            for key in list(self.selector.get_map().values()):  # the listener, other shims, other tasks' pidfds
                os.close(key.fd)
            for i, fd in enumerate(fds):
                os.dup2(fd, i)
                os.close(fd)
            os.environ.clear()
            os.environ.update({str(k): str(v) for k, v in request["env"].items()})
            os.chdir(str(request.get("cwd") or "/"))
            sys.argv = [str(a) for a in request["argv"]]
            if os.environ.get("FEDCHEST_THREADS"):  # the handlers cap torch's threads again (shared_models.device)
                import torch

                torch.set_num_threads(max(1, int(os.environ["FEDCHEST_THREADS"])))
            if self.preloaded is not None:
                from client.warm.fabcheck import install_check

                install_check(self.preloaded)
            module, _, function = self.entry.partition(":")
            getattr(importlib.import_module(module), function)()
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except BaseException:  # noqa: BLE001 - the child reports any failure as its exit code
            traceback.print_exc()
        finally:
            for stream in (sys.stdout, sys.stderr):
                try:
                    stream.flush()
                except Exception:  # noqa: BLE001
                    pass
            os._exit(code)

    def _from_shim(self, task: Task) -> None:
        try:
            message, _ = recv_message(task.conn)
        except (ProtocolError, OSError):
            log(f"the shim of task {task.pid} went away; terminating the task")
            self.selector.unregister(task.conn)
            task.conn.close()
            task.conn = None
            self._signal(task, signal.SIGTERM)
            return
        if "signal" in message:
            self._signal(task, int(message["signal"]))

    def _signal(self, task: Task, signum: int) -> None:
        try:
            os.kill(task.pid, signum)
        except ProcessLookupError:
            pass

    def _exited(self, task: Task) -> None:
        _, status = os.waitpid(task.pid, 0)
        code = os.waitstatus_to_exitcode(status)
        self.selector.unregister(task.pidfd)
        os.close(task.pidfd)
        del self.tasks[task.pid]
        self.served += 1
        seconds = time.monotonic() - task.started
        if code < 0:
            log(f"task {task.pid} was killed by {signal.Signals(-code).name} after {seconds:.1f}s")
        else:
            log(f"task {task.pid} exited with code {code} after {seconds:.1f}s")
        if task.conn is not None:
            try:
                send_message(task.conn, {"exit": code})
            except OSError as exc:
                log(f"task {task.pid}'s shim could not be told its exit code {code}: {exc}")
            self._drop(task)

    # ------------------------------------------------------------------ shutdown
    def close(self, grace: float = 10.0) -> None:
        for task in list(self.tasks.values()):
            self._signal(task, signal.SIGTERM)
        end = time.monotonic() + grace
        while self.tasks and time.monotonic() < end:
            for key, _ in self.selector.select(timeout=0.2):
                if key.data[0] == "exit":
                    self._exited(key.data[1])
        for task in list(self.tasks.values()):
            self._signal(task, signal.SIGKILL)
            self._exited(task)
        if self.listener is not None:
            self.selector.unregister(self.listener)
            self.listener.close()
            self.listener = None
            self.socket_path.unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m client.warm.worker", description=__doc__.splitlines()[0])
    parser.add_argument("--socket", default=os.environ.get(SOCKET_ENV),
                        help=f"Unix socket path (default ${SOCKET_ENV})")
    parser.add_argument("--preload", nargs="+", default=list(DEFAULT_PRELOAD), help="modules imported at start-up")
    parser.add_argument("--packages", nargs="+", default=list(DEFAULT_PACKAGES),
                        help="the project's top-level packages, checked against each task's FAB")
    parser.add_argument("--no-fab-check", action="store_true",
                        help="run every task on the preloaded code whatever FAB it ships (tests only)")
    parser.add_argument("--shim-dir", default=None,
                        help="write the flwr-clientapp shim here first (the folder to put first on the "
                             "SuperNode's PATH)")
    parser.add_argument("--entry", default=FLOWER_ENTRY, help="module:function a child runs (tests only)")
    args = parser.parse_args(argv)
    if not args.socket:
        parser.error(f"--socket or ${SOCKET_ENV} is required")
    if args.shim_dir:
        from client.warm.site import install_shim

        install_shim(Path(args.shim_dir))
    worker = Worker(Path(args.socket), tuple(args.preload), tuple(args.packages), check_fab=not args.no_fab_check,
                    entry=args.entry)
    from client.deploy.supernode import FlowerShapeError

    try:
        seconds = worker.preload()
    except FlowerShapeError as exc:  # another Flower's ClientApp runtime (client/warm/runtime.py)
        log(f"cannot start: {exc}; this worker is made for Flower 1.41's ClientApp runtime")
        return 2
    worker.bind()
    log(f"ready on {worker.socket_path}: preloaded {', '.join(worker.preload_modules)} in {seconds:.1f}s "
        f"({worker.baseline_threads} native threads)")
    worker.serve()
    log(f"stopped after {worker.served} task(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
