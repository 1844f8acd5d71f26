"""The one place that decides where tensors live and how many CPU threads torch may use."""

from __future__ import annotations

import os

import torch


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
