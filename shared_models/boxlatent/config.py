"""The box-latent run configuration: one parser for the keys the ServerApp sends and the sites read."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

DEFAULTS: dict[str, Any] = {
    "box-latent": False,  # train a box head on the frozen routed experts instead of training the experts
    "box-backbone-weights": "",  # a fedchest checkpoint (or a state dict) on the SuperLink host for the backbone
    "box-latent-dim": 64,
    "box-loss": "bce",  # classification on the samples: "bce" (masked) or "asl" (the experts' loss; inflates p)
    "box-samples": 8,  # BL-TTA: latents averaged per image at test time (N = 1 and 32 are reported alongside)
    "box-train-samples": 4,  # latents drawn per image in training
    "box-volume-weight": 0.01,
    "box-target-log-radius": -2.0,  # the volume regulariser's target mean log radius
    "box-invariance-weight": 0.1,  # overlap of the boxes of two device-shifted views of one image
    "box-bootstrap": 1000,  # bootstrap replicates for the confidence intervals
}
REPORTED_SAMPLES = (1, 8, 32)
LOSSES = ("bce", "asl")


class BoxConfigError(ValueError):
    pass


@dataclass(frozen=True)
class BoxSpec:
    latent_dim: int = 64
    samples: int = 8
    train_samples: int = 4
    volume_weight: float = 0.01
    target_log_radius: float = -2.0
    invariance_weight: float = 0.1
    bootstrap: int = 1000
    loss: str = "bce"

    @property
    def reported_samples(self) -> tuple[int, ...]:
        return tuple(sorted({*REPORTED_SAMPLES, self.samples}))


def box_spec(config: Mapping[str, Any]) -> BoxSpec | None:
    """The spec when the run config turns the box head on, else None; each key checked with a clear message."""
    cfg = {**DEFAULTS, **{k: v for k, v in config.items() if k in DEFAULTS}}
    if not bool(cfg["box-latent"]):
        return None
    for key in ("box-latent-dim", "box-samples", "box-train-samples"):
        if int(cfg[key]) < 1:
            raise BoxConfigError(f"run config {key} = {cfg[key]!r}; expected a positive whole number")
    if cfg["box-loss"] not in LOSSES:
        raise BoxConfigError(f"run config box-loss = {cfg['box-loss']!r}; expected one of {', '.join(LOSSES)}")
    for key in ("box-volume-weight", "box-invariance-weight"):
        if float(cfg[key]) < 0:
            raise BoxConfigError(f"run config {key} = {cfg[key]!r}; expected a weight >= 0")
    return BoxSpec(int(cfg["box-latent-dim"]), int(cfg["box-samples"]), int(cfg["box-train-samples"]),
                   float(cfg["box-volume-weight"]), float(cfg["box-target-log-radius"]),
                   float(cfg["box-invariance-weight"]), int(cfg["box-bootstrap"]), str(cfg["box-loss"]))


def spec_config(spec: BoxSpec | None) -> dict[str, Any]:
    """The run-config keys that rebuild ``spec`` (what the sites and checkpoints receive)."""
    if spec is None:
        return {"box-latent": False}
    names = {"latent_dim": "box-latent-dim", "samples": "box-samples", "train_samples": "box-train-samples",
             "volume_weight": "box-volume-weight", "target_log_radius": "box-target-log-radius",
             "invariance_weight": "box-invariance-weight", "bootstrap": "box-bootstrap", "loss": "box-loss"}
    return {"box-latent": True, **{names[k]: v for k, v in asdict(spec).items()}}
