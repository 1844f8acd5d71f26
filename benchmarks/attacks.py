"""A misbehaving site, for the robust-aggregation benchmark and tests only (never deployed): the fedchest ClientApp
plus a mod that corrupts the train replies of one virtual node. ``FEDCHEST_ATTACK="kind:partition:scale"`` in the
environment of the simulation (Ray's workers inherit it) chooses it:

- ``sign-flip``: sends global - scale x (its honest update), the update turned against the consortium;
- ``noise``: sends global + Gaussian noise with scale x the standard deviation of its honest update, per tensor.
"""

from __future__ import annotations

import os

import numpy as np
import torch
from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from client import client_app
from client.audit import outbound_guard
from client.records import from_record, to_record

ATTACKS = ("sign-flip", "noise")


def parse_attack(text: str) -> tuple[str, int, float] | None:
    if not text:
        return None
    kind, partition, scale = text.split(":")
    if kind not in ATTACKS:
        raise ValueError(f"FEDCHEST_ATTACK kind {kind!r}; expected one of {ATTACKS}")
    return kind, int(partition), float(scale)


def corrupt_update(global_state: dict[str, torch.Tensor], local: dict[str, torch.Tensor], kind: str, scale: float,
                   seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for k, v in local.items():
        if not v.is_floating_point():
            out[k] = v
            continue
        delta = v - global_state[k]
        if kind == "sign-flip":
            out[k] = global_state[k] - scale * delta
        else:
            out[k] = global_state[k] + scale * float(delta.std() if delta.numel() > 1 else delta.abs().mean()) * \
                torch.randn(v.shape, generator=gen)
    return out


def as_tensors(record) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(np.array(v)) for k, v in from_record(record).items()}


def attack_mod(msg: Message, context: Context, call_next) -> Message:
    reply = call_next(msg, context)
    attack = parse_attack(os.environ.get("FEDCHEST_ATTACK", ""))
    if attack is None or reply.has_error() or msg.metadata.message_type != "train":
        return reply
    kind, partition, scale = attack
    if int(context.node_config.get("partition-id", -1)) != partition:
        return reply
    glob, local = (as_tensors(m.content["arrays"]) for m in (msg, reply))
    reply.content["arrays"] = to_record(corrupt_update(glob, local, kind, scale,
                                                       int(msg.content["config"]["server-round"])))
    return reply


app = ClientApp(mods=[outbound_guard, attack_mod])
app.train()(client_app.train)
app.evaluate()(client_app.evaluate)
