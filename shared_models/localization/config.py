"""The prompt localiser's run configuration: one parser for the keys the ServerApp sends and the sites read.

With ``localizer = true`` the run's global model carries a prompt-driven localiser (keys under ``loc.``) next to
the radiograph model. Every radiograph site trains it on its own images: with box supervision for the classes
it has boxes for, weakly (image labels only) for the others; it is averaged over the sites that trained it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

DEFAULTS: dict[str, Any] = {
    "localizer": False,  # train the prompt-driven localiser (ChEX-style) at the radiograph sites
    "loc-preset": "loc-tiny",  # shared_models/localization/model.py LOC_PRESETS
    "loc-regions": 3,  # region queries per prompt (ChEX: 3)
    "loc-lr": 0.001,
    "loc-batch-size": 32,
    "loc-epochs": 0,  # local epochs of the localiser per round (0: the run's local-epochs)
}


class LocConfigError(ValueError):
    pass


@dataclass(frozen=True)
class LocRunSpec:
    preset: str = "loc-tiny"
    regions: int = 3
    lr: float = 1e-3
    batch_size: int = 32
    epochs: int = 0


def loc_spec(config: Mapping[str, Any]) -> LocRunSpec | None:
    """The spec when the run config turns the localiser on, else None; every key checked with a clear message."""
    from shared_models.localization.model import LOC_PRESETS

    cfg = {**DEFAULTS, **{k: v for k, v in config.items() if k in DEFAULTS}}
    if not bool(cfg["localizer"]):
        return None
    if str(cfg["loc-preset"]) not in LOC_PRESETS:
        raise LocConfigError(f"run config loc-preset = {cfg['loc-preset']!r}; expected one of {', '.join(LOC_PRESETS)}")
    checks = (("loc-regions", int, 1), ("loc-batch-size", int, 1), ("loc-epochs", int, 0))
    for key, kind, low in checks:
        try:
            ok = kind(cfg[key]) >= low and float(cfg[key]) == kind(cfg[key])
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise LocConfigError(f"run config {key} = {cfg[key]!r}; expected an integer >= {low}")
    try:
        lr = float(cfg["loc-lr"])
    except (TypeError, ValueError):
        lr = -1.0
    if not lr > 0:
        raise LocConfigError(f"run config loc-lr = {cfg['loc-lr']!r}; expected a positive number")
    return LocRunSpec(str(cfg["loc-preset"]), int(cfg["loc-regions"]), lr, int(cfg["loc-batch-size"]),
                      int(cfg["loc-epochs"]))


def spec_config(spec: LocRunSpec | None) -> dict[str, Any]:
    """The run-config keys that rebuild ``spec`` (written into checkpoints for ``fedchest-site localize``)."""
    if spec is None:
        return {"localizer": False}
    return {"localizer": True, "loc-preset": spec.preset, "loc-regions": spec.regions, "loc-lr": spec.lr,
            "loc-batch-size": spec.batch_size, "loc-epochs": spec.epochs}
