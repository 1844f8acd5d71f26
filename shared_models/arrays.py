"""NumPy arrays as torch tensors without a copy, for bandwidth-bound passes over model-sized data."""

from __future__ import annotations

import warnings

import numpy as np
import torch


def with_prefix(state, prefix: str) -> dict:
    """A model's state dict under ``prefix``: how a side model (the CT model, the prompt localiser) sits in a run's
    global state next to the radiograph model."""
    return {prefix + k: v for k, v in state.items()}


def under_prefix(state, prefix: str) -> dict:
    """The entries of a global state dict under ``prefix``, as the side model's own state dict."""
    return {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}


def as_tensor(x: np.ndarray) -> torch.Tensor | None:
    """A tensor sharing ``x``'s memory (also for read-only views on message bytes: the caller must not write to
    it), or None for what torch cannot wrap (non-native byte order, unsupported dtypes, non-contiguous)."""
    if not x.flags.c_contiguous or not x.dtype.isnative:
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "not writable": these tensors are only read
            return torch.from_numpy(x)
    except TypeError:
        return None
