#!/usr/bin/env python3
"""``flwr-clientapp`` shim: hands this ClientApp task to the site's warm worker (client/warm/worker.py).

Standard library only: ``install_shim`` copies this file, with the site's interpreter on its first line, as
``flwr-clientapp`` into a folder put first on the SuperNode's PATH. It sends the worker its argv, environment and
working directory, with its stdin/stdout/stderr as file descriptors, waits, and exits with the task's exit code (or
dies of the task's signal). SIGTERM / SIGINT / SIGHUP are forwarded to the task. Without a reachable worker
(``FEDCHEST_WARM_SOCKET`` unset, no socket, a stale one) it logs one line saying so and runs the real
``flwr-clientapp`` (the next one on PATH) in its place.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import sys

SOCKET_ENV = "FEDCHEST_WARM_SOCKET"
REAL_COMMAND = "flwr-clientapp"
_HEADER = struct.Struct("!I")
MAX_MESSAGE = 16 << 20  # an environment of 16 MiB is not an environment


class ProtocolError(RuntimeError):
    """The other end broke the shim/worker protocol or went away mid-message."""


class ConnectionClosed(ProtocolError):
    """The other end closed the connection before a message began (a readiness probe, or a peer that left)."""


class GoCold(RuntimeError):
    """The worker declined the task before starting it (the reason is the message): the shim runs it cold."""


def send_message(sock: socket.socket, payload: dict, fds: list[int] | None = None) -> None:
    """One length-prefixed JSON message, with file descriptors attached to its first byte when given."""
    data = json.dumps(payload).encode()
    frame = _HEADER.pack(len(data)) + data
    if fds:
        sent = socket.send_fds(sock, [frame], fds)
        frame = frame[sent:]
    if frame:
        sock.sendall(frame)


def _read_exact(sock: socket.socket, n: int, fds: list[int], want_fds: int, first: bool = False) -> bytes:
    buf = b""
    while len(buf) < n:
        if want_fds and not fds:
            chunk, got, _flags, _addr = socket.recv_fds(sock, n - len(buf), want_fds)
            fds.extend(got)
        else:
            chunk = sock.recv(n - len(buf))
        if not chunk:
            if first and not buf:
                raise ConnectionClosed("connection closed")
            raise ProtocolError(f"connection closed after {len(buf)} of {n} bytes")
        buf += chunk
    return buf


def recv_message(sock: socket.socket, want_fds: int = 0) -> tuple[dict, list[int]]:
    """The next message and the file descriptors that came with it; ProtocolError on EOF or a malformed frame."""
    fds: list[int] = []
    (size,) = _HEADER.unpack(_read_exact(sock, _HEADER.size, fds, want_fds, first=True))
    if size > MAX_MESSAGE:
        raise ProtocolError(f"message of {size} bytes announced; at most {MAX_MESSAGE}")
    try:
        payload = json.loads(_read_exact(sock, size, fds, want_fds))
    except ValueError as exc:
        raise ProtocolError(f"message is not JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise ProtocolError(f"message is a {type(payload).__name__}, expected an object")
    return payload, fds


def real_clientapp(path: str | None = None) -> str | None:
    """The first ``flwr-clientapp`` on PATH that is not this shim."""
    me = os.path.realpath(sys.argv[0])
    for folder in (path if path is not None else os.environ.get("PATH", "")).split(os.pathsep):
        candidate = os.path.join(folder or ".", REAL_COMMAND)
        if os.access(candidate, os.X_OK) and os.path.realpath(candidate) != me:
            return candidate
    return None


def run_cold(reason: str) -> int:
    """The per-message path Flower uses without a worker: said in one line, then the real entry point."""
    print(f"WARNING : fedchest warm ClientApp: {reason}; running this task in a new flwr-clientapp process "
          "(cold start: torch and the app are imported again)", file=sys.stderr, flush=True)
    real = real_clientapp()
    if real is not None:
        os.execv(real, [real, *sys.argv[1:]])
    import site

    site.main()  # the shim runs with -S (no site-packages): Flower needs them
    from flwr.supernode.cli.flwr_clientapp import flwr_clientapp  # what the real console script runs

    flwr_clientapp()
    return 0


def connect(path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
    except OSError:
        sock.close()
        raise
    return sock


def forward(sock: socket.socket) -> int:
    """Hand the task over, forward signals while it runs, and return its exit code (negative: killed by -code)."""
    send_message(sock, {"argv": sys.argv, "env": dict(os.environ), "cwd": os.getcwd()}, [0, 1, 2])

    def relay(signum: int, _frame: object) -> None:
        try:
            send_message(sock, {"signal": signum})
        except OSError:
            pass

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, relay)
    while True:
        try:
            reply, _ = recv_message(sock)
        except InterruptedError:
            continue
        if "exit" in reply:
            return int(reply["exit"])
        if "cold" in reply:
            raise GoCold(str(reply["cold"]))
        raise ProtocolError(f"unexpected reply {sorted(reply)}")


def main() -> int:
    path = os.environ.get(SOCKET_ENV, "")
    if not path:
        return run_cold(f"{SOCKET_ENV} is not set")
    try:
        sock = connect(path)
    except OSError as exc:
        return run_cold(f"no warm worker at {path} ({exc.strerror or exc})")
    try:
        code = forward(sock)
    except GoCold as exc:
        sock.close()
        return run_cold(f"the warm worker at {path} declined the task: {exc}")
    except (ProtocolError, OSError) as exc:
        print(f"ERROR : fedchest warm ClientApp: the worker at {path} failed this task: {exc}", file=sys.stderr,
              flush=True)
        return 1
    finally:
        sock.close()
    if code < 0:  # the task died of a signal: so does the shim, as the real process would have
        signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
        return 128 - code
    return code


if __name__ == "__main__":
    sys.exit(main())
