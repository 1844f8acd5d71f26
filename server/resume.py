"""Resuming a run after the ServerApp or the SuperLink died (Flower has no resume of its own).

Every round's checkpoint (``server/checkpoints.py``) is written after the round's federated evaluation is in the
registry, and carries what the next round needs besides the model: the server optimiser's moments and the
consortium class counts sent to sites as ``class-prevalence``. ``fedchest run resume RUN_ID`` starts a new Flower
run whose ServerApp (run config ``resume-run``) takes the run's stored configuration, removes whatever the
registry holds after the last checkpointed round k (a half-finished round k+1), loads checkpoint k and continues at
round k+1 under the same registry run: every round is recorded exactly once. Sites see the true round numbers, so
seeds derived from them repeat those of an uninterrupted run.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from server.checkpoints import load_checkpoint
from server.registry import Registry


class ResumeError(RuntimeError):
    """The run cannot be resumed (the message says why)."""


@dataclass
class ResumePoint:
    run_id: str
    round: int
    config: dict[str, Any]
    state_dict: dict[str, torch.Tensor]
    strategy_state: dict[str, Any]


def strategy_state(strategy) -> dict[str, Any]:
    """What FedChestAvg carries from round to round besides the model, as checkpointable tensors."""
    state: dict[str, Any] = {"train_pos": torch.from_numpy(strategy.train_pos.astype(np.int64)),
                             "train_annotated": torch.from_numpy(strategy.train_annotated.astype(np.int64))}
    opt = strategy.server_optimizer
    if opt is not None:
        state["server_optimizer"] = {"kind": opt.kind,
                                     "m": {k: torch.from_numpy(v) for k, v in opt.m.items()},
                                     "v": {k: torch.from_numpy(v) for k, v in opt.v.items()}}
    if strategy.best_proxy is not None:  # zero-shot model selection so far: (round, proxy mAUC)
        state["best_proxy"] = [int(strategy.best_proxy[0]), float(strategy.best_proxy[1])]
    return state


def restore_strategy_state(strategy, state: dict[str, Any]) -> None:
    strategy.train_pos = state["train_pos"].numpy().astype(np.int64)
    strategy.train_annotated = state["train_annotated"].numpy().astype(np.int64)
    saved = state.get("server_optimizer")
    opt = strategy.server_optimizer
    if (saved is None) != (opt is None) or (saved and saved["kind"] != opt.kind):
        raise ResumeError("the checkpoint's server optimiser does not match the run's configuration")
    if opt is not None:
        opt.m = {k: v.numpy() for k, v in saved["m"].items()}
        opt.v = {k: v.numpy() for k, v in saved["v"].items()}
    if "best_proxy" in state:
        strategy.best_proxy = (int(state["best_proxy"][0]), float(state["best_proxy"][1]))


def resume_point(registry: Registry, run_id: str) -> ResumePoint:
    """The last round whose checkpoint is on disk and intact; the registry is cut back to it."""
    run = registry.get_run(run_id)
    if run is None:
        raise ResumeError(f"run {run_id} is not in the registry {registry.url}")
    if run["status"] == "completed":
        raise ResumeError(f"run {run_id} is already completed ({run['num_rounds']} rounds)")
    config = json.loads(run["config_json"])
    for rnd, path, digest in registry.checkpoints(run_id):  # newest first
        p = Path(path)
        if p.exists() and hashlib.sha256(p.read_bytes()).hexdigest() == digest:
            ckpt = load_checkpoint(p)
            if "strategy_state" not in ckpt:
                raise ResumeError(f"{p}: written before checkpoints kept the strategy state; cannot resume")
            registry.truncate_after(run_id, rnd)
            return ResumePoint(run_id, rnd, config, ckpt["state_dict"], ckpt["strategy_state"])
    raise ResumeError(f"run {run_id} has no intact checkpoint to resume from (none was completed, or the files "
                      "were moved)")
