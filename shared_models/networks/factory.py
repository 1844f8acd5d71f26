"""One factory: architectures and sizes are names in configuration (presets.toml), never code."""

from __future__ import annotations

import tomllib
from functools import lru_cache
from importlib import resources
from typing import Any

import timm

from shared_models.networks.experts import PROJECTIONS, RoutedExperts


@lru_cache(maxsize=None)
def _presets() -> dict[str, Any]:
    return tomllib.loads(resources.files("shared_models.networks").joinpath("presets.toml").read_text("utf-8"))


def available_presets() -> list[str]:
    return sorted(_presets())


def load_preset(name: str) -> dict[str, Any]:
    try:
        return _presets()[name]
    except KeyError:
        raise KeyError(f"unknown model preset {name!r}; available: {', '.join(available_presets())}") from None


def _timm(entry: dict, num_classes: int):
    args = {k: tuple(v) if isinstance(v, list) else v for k, v in entry.get("args", {}).items()}
    return timm.create_model(entry["arch"], pretrained=False, in_chans=1, num_classes=num_classes, **args)


def build_model(preset: str, num_classes: int, routing: str = "soft") -> RoutedExperts:
    """Routed experts (and the router, when the preset has one) with randomly initialised timm backbones
    (``in_chans=1``); no weights are downloaded."""
    spec = load_preset(preset)
    experts = {proj: _timm(spec["experts"][proj], num_classes) for proj in PROJECTIONS}
    router = _timm(spec["router"], len(PROJECTIONS)) if "router" in spec else None
    generalist = _timm(spec["generalist"], num_classes) if "generalist" in spec else None
    return RoutedExperts(experts, num_classes, router, routing, generalist)


def parameter_group(key: str) -> str:
    """The parameter group a state-dict key belongs to (``experts.PA``, ...), the unit of aggregation."""
    parts = key.split(".")
    return ".".join(parts[:2]) if parts[0] == "experts" else parts[0]


def group_keys(keys) -> dict[str, list[str]]:
    """State-dict keys by parameter group, in order."""
    out: dict[str, list[str]] = {}
    for k in keys:
        out.setdefault(parameter_group(k), []).append(k)
    return out


def classifier_keys(model: RoutedExperts) -> dict[str, list[str]]:
    """Per expert group (and the generalist), the state-dict keys of its final classifier, whose first axis
    is the class."""
    members = {f"experts.{p}": e for p, e in model.experts.items()}
    if model.generalist is not None:
        members["generalist"] = model.generalist
    out = {}
    for group, net in members.items():
        head = net.get_classifier()
        prefix = next(name for name, module in net.named_modules() if module is head)
        out[group] = [f"{group}.{prefix}.{name}" for name, _ in head.named_parameters()]
    return out
