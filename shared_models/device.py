"""The one place that decides where tensors live and how many CPU threads torch may use."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch

SERVER_THREADS_ENV = "FEDCHEST_SERVER_THREADS"


def select_device(prefer: str | None = None) -> torch.device:
    """CUDA when present (or when asked for), else CPU. ``FEDCHEST_DEVICE`` overrides."""
    choice = prefer or os.environ.get("FEDCHEST_DEVICE", "auto")
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if choice.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"FEDCHEST_DEVICE={choice!r} asked for CUDA but no CUDA device is available")
    return torch.device(choice)


def limit_threads(n: int | None = None) -> int:
    """Cap torch's intra-op threads (``FEDCHEST_THREADS`` or ``n``); returns the value in force."""
    env = os.environ.get("FEDCHEST_THREADS")
    if n is None and env:
        n = int(env)
    if n:
        torch.set_num_threads(max(1, int(n)))
    return torch.get_num_threads()


@contextmanager
def server_threads() -> Iterator[int]:
    """torch's intra-op threads while the ServerApp runs: ``FEDCHEST_SERVER_THREADS``, default 1; the previous
    count is restored after (a simulation runs the ServerApp in the caller's process).

    The server's torch work is elementwise passes over the model (update norms, running sums of the updates):
    memory-bound, where a second thread buys little and, on a host whose cores the sites' training also uses,
    spins against them. Measured for the tiny preset (368 tensors, 1.0 M values) with other work on both cores:
    norms plus one site's running-sum step 6 + 9 ms with one thread, 60-270 + 80-220 ms with two; inside
    ``fedchest deploy local`` (3 sites training on the same 2 cores) the same two steps took 1.15 s per reply."""
    env = os.environ.get(SERVER_THREADS_ENV, "1")
    try:
        n = int(env)
        if n < 1:
            raise ValueError
    except ValueError:
        raise ValueError(f"{SERVER_THREADS_ENV} = {env!r}: expected a whole number of threads >= 1") from None
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield n
    finally:
        torch.set_num_threads(before)
