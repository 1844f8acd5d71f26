"""Per-round checkpoints of the global model (state dict + the run facts needed to rebuild it)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch


def save_checkpoint(directory: Path, rnd: int, state_dict: dict[str, torch.Tensor],
                    meta: dict[str, Any]) -> tuple[Path, str, int]:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"round-{rnd:03d}.pt"
    tmp = path.with_suffix(".tmp")
    torch.save({"state_dict": state_dict, "round": rnd, **meta}, tmp)
    tmp.replace(path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return path, digest, path.stat().st_size


def load_checkpoint(path: Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=True)
