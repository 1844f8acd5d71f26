"""Randomness for DP mechanisms: drawn from the operating system's CSPRNG, never from the run's seed.

A DP guarantee holds only if nobody but the site can predict the noise. The run config (seed, round), the number
of examples, the batch size and the parameter shapes are all known to the coordinator, so a generator seeded from
them lets the coordinator rebuild every noise draw and subtract it. Every DP step therefore takes fresh generators
seeded with 128 bits from ``secrets`` (``os.urandom``): Gaussian noise, Poisson sampling, augmentation inside the
step and any dropout run under it. The seeds are never logged, stored or returned.

Non-DP training keeps its seeded generators (client/training.py): it releases no privacy claim, and its runs stay
bit-for-bit reproducible.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch


def secure_seed() -> int:
    """A 63-bit seed from the OS CSPRNG (torch generators take seeds below 2**63)."""
    return secrets.randbits(63)


def secure_torch_generator() -> torch.Generator:
    """A fresh torch CPU generator seeded from the OS CSPRNG."""
    return torch.Generator().manual_seed(secure_seed())


def secure_numpy_generator() -> np.random.Generator:
    """A fresh NumPy generator seeded with 128 bits from the OS CSPRNG."""
    return np.random.default_rng(secrets.randbits(128))


class SecureStream:
    """Per-step generators for a DP-SGD loop: each call of ``step()`` re-seeds both generators from the OS CSPRNG,
    so no step's draws can be predicted from another's. ``torch``: noise and augmentation; ``numpy``: sampling."""

    def __init__(self) -> None:
        self.torch = secure_torch_generator()
        self.numpy = secure_numpy_generator()

    def step(self) -> "SecureStream":
        self.torch.manual_seed(secure_seed())
        self.numpy = secure_numpy_generator()
        return self


def secure_poisson_batches(n: int, sample_rate: float, steps: int, stream: SecureStream) -> Iterator[np.ndarray]:
    """``steps`` Poisson batches (each example independently with probability ``sample_rate``), the coins of each
    step drawn from a freshly re-seeded stream."""
    for _ in range(steps):
        yield np.flatnonzero(stream.step().numpy.random(n) < sample_rate)


@contextmanager
def secure_global_rng() -> Iterator[None]:
    """Torch's global generator (dropout, anything drawing without an explicit generator) re-seeded from the OS
    CSPRNG for the block, and restored afterwards so the caller's seeded state is unchanged."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(secure_seed())
        yield
