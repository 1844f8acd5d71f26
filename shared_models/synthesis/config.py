"""Tail-class synthesis's run configuration: one parser for the keys the ServerApp sends and the sites read."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

DEFAULTS: dict[str, Any] = {
    "tail-synthesis": False,  # each site trains a text-conditioned diffusion model and adds tail-class images
    "tail-synthesis-per-class": 32,  # synthetic images per tail class at each site
    "tail-synthesis-steps": 800,  # generator training steps (batch 32), once per run at each site
    "tail-synthesis-size": 32,  # generator resolution (px; divisible by 4); images are resized to the run's size
    "tail-synthesis-guidance": 2.0,  # classifier-free guidance scale
    "tail-synthesis-min-positives": 5,  # a tail class needs this many positives at the site to be synthesised
}


class SynthesisConfigError(ValueError):
    pass


@dataclass(frozen=True)
class SynthesisSpec:
    per_class: int = 32
    steps: int = 800
    size: int = 32
    guidance: float = 2.0
    min_positives: int = 5


def synthesis_spec(config: Mapping[str, Any]) -> SynthesisSpec | None:
    cfg = {**DEFAULTS, **{k: v for k, v in config.items() if k in DEFAULTS}}
    if not bool(cfg["tail-synthesis"]):
        return None
    try:
        spec = SynthesisSpec(int(cfg["tail-synthesis-per-class"]), int(cfg["tail-synthesis-steps"]),
                             int(cfg["tail-synthesis-size"]), float(cfg["tail-synthesis-guidance"]),
                             int(cfg["tail-synthesis-min-positives"]))
    except (TypeError, ValueError) as exc:
        raise SynthesisConfigError(f"run config tail-synthesis-*: a value of the wrong type ({exc})") from None
    if spec.per_class < 1 or spec.steps < 1 or spec.size < 8 or spec.size % 4 or spec.min_positives < 1:
        raise SynthesisConfigError("run config tail-synthesis: per-class, steps and min-positives must be >= 1 and "
                                   f"size a multiple of 4 of at least 8 (got {spec})")
    return spec


def spec_config(spec: SynthesisSpec | None) -> dict[str, Any]:
    if spec is None:
        return {"tail-synthesis": False}
    return {"tail-synthesis": True, "tail-synthesis-per-class": spec.per_class, "tail-synthesis-steps": spec.steps,
            "tail-synthesis-size": spec.size, "tail-synthesis-guidance": spec.guidance,
            "tail-synthesis-min-positives": spec.min_positives}


def check_synthesis_run(config: Mapping[str, Any]) -> None:
    """Refuse, before any site trains, what tail synthesis cannot run with."""
    if synthesis_spec(config) is None:
        return
    if bool(config.get("dp", False)):
        raise SynthesisConfigError("run config: tail-synthesis trains its generator without DP, so images it makes "
                                   "would carry the site's data past DP-SGD's guarantee; set dp = false or "
                                   "tail-synthesis = false")
    if bool(config.get("box-latent", False)) or bool(config.get("zeroshot", False)):
        raise SynthesisConfigError("run config: tail-synthesis adds images to the routed experts' training only; it "
                                   "cannot be combined with box-latent or zeroshot yet")
