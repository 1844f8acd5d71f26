"""The chest-CT model's run configuration: one parser for the keys the ServerApp sends and the CT sites read.

With ``ct = true`` the run's global model carries the CT vision-language model (keys under ``ct.``) next to the
radiograph model; CT sites train and evaluate it, radiograph sites train theirs, and each parameter group is
averaged over the sites that trained it (aggregation ``projection``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from shared_models.ct.model import CT_PRESETS

CT_LABEL_SET = "ctrate18"  # CT-RATE's 18 classes (shared_models/ontology); every CT site labels with it

DEFAULTS: dict[str, Any] = {
    "ct": False,  # train the CT vision-language model at the consortium's CT sites
    "ct-preset": "ct-tiny",
    "ct-spacing": "6,6,6",  # the run's CT grid: z, y, x mm (every CT site resamples to it)
    "ct-size": "32,32,32",  # z, y, x voxels (centre crop or pad)
    "ct-lr": 0.001,
    "ct-batch-size": 8,
    "ct-disease-weight": 1.0,  # loss = SigLIP + w_d x prompt disease loss + w_l x snippet localisation loss
    "ct-loc-weight": 1.0,  # 1 / 1 / 1: on the synthetic sites 0.5 / 0.1 left the depth error at baseline
}


class CTConfigError(ValueError):
    pass


@dataclass(frozen=True)
class CTRunSpec:
    preset: str = "ct-tiny"
    spacing: tuple[float, float, float] = (6.0, 6.0, 6.0)
    size: tuple[int, int, int] = (32, 32, 32)
    lr: float = 1e-3
    batch_size: int = 8
    disease_weight: float = 1.0
    loc_weight: float = 1.0


def _triple(cfg: Mapping[str, Any], key: str, kind: type) -> tuple:
    raw = cfg[key]
    try:
        parts = tuple(kind(v) for v in (raw.split(",") if isinstance(raw, str) else raw))
    except (TypeError, ValueError):
        parts = ()
    if len(parts) != 3 or any(not v > 0 for v in parts):
        raise CTConfigError(f"run config {key} = {raw!r}; expected three positive {kind.__name__} values "
                            "\"z,y,x\"")
    return parts


def ct_spec(config: Mapping[str, Any]) -> CTRunSpec | None:
    """The spec when the run config turns the CT model on, else None; every key checked with a clear message."""
    cfg = {**DEFAULTS, **{k: v for k, v in config.items() if k in DEFAULTS}}
    if not bool(cfg["ct"]):
        return None
    if cfg["ct-preset"] not in CT_PRESETS:
        raise CTConfigError(f"run config ct-preset = {cfg['ct-preset']!r}; expected one of {', '.join(CT_PRESETS)}")
    for key in ("ct-lr", "ct-batch-size"):
        if not float(cfg[key]) > 0:
            raise CTConfigError(f"run config {key} = {cfg[key]!r}; expected a positive number")
    for key in ("ct-disease-weight", "ct-loc-weight"):
        if float(cfg[key]) < 0:
            raise CTConfigError(f"run config {key} = {cfg[key]!r}; expected a weight >= 0")
    size = _triple(cfg, "ct-size", int)
    if min(size) < 4:
        raise CTConfigError(f"run config ct-size = {cfg['ct-size']!r}; expected at least 4 voxels per axis")
    return CTRunSpec(str(cfg["ct-preset"]), _triple(cfg, "ct-spacing", float), size, float(cfg["ct-lr"]),
                     int(cfg["ct-batch-size"]), float(cfg["ct-disease-weight"]), float(cfg["ct-loc-weight"]))


def spec_config(spec: CTRunSpec | None) -> dict[str, Any]:
    """The run-config keys that rebuild ``spec`` at a site (nothing when the CT model is off)."""
    if spec is None:
        return {}
    return {"ct": True, "ct-preset": spec.preset, "ct-spacing": ",".join(f"{v:g}" for v in spec.spacing),
            "ct-size": ",".join(str(v) for v in spec.size), "ct-lr": spec.lr, "ct-batch-size": spec.batch_size,
            "ct-disease-weight": spec.disease_weight, "ct-loc-weight": spec.loc_weight}
