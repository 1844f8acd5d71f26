"""The zero-shot branch's run configuration: one parser for the keys the ServerApp sends and the sites read."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from shared_models.ontology import LabelSet
from shared_models.zeroshot.model import CONTRASTIVE_LOSSES, IMAGE_ENCODERS

TEXT_DIM = 384  # MiniLM sentence embeddings (text_encoder.MiniLMTextEncoder.dim)

DEFAULTS: dict[str, Any] = {
    "zeroshot": False,  # train and evaluate the image-text branch next to the routed experts
    "zeroshot-image-encoder": "experts",  # "experts" (the routed experts' backbones) or "separate"
    "zeroshot-image-grad": True,  # False: the contrastive loss trains projections only, never the image backbone
    "zeroshot-embed-dim": 128,
    "zeroshot-loss": "siglip",  # "siglip" (t0 = ln 10, b0 = -10) or "clip"
    "zeroshot-text-adapter": False,  # a small trainable residual adapter on the frozen text embeddings
    "zeroshot-text-unit": "sentence",  # "sentence": each report sentence a positive of its image; "report": whole
    "zeroshot-weight": 0.1,  # lambda: loss = ASL + lambda * contrastive (1.0 cost seen-class mAP: benchmarks zeroshot)
    "zeroshot-fusion": 0.0,  # alpha: seen-class p = (1 - alpha) ASL + alpha zero-shot
    "zeroshot-proxy-classes": "",  # seen classes hidden from the ASL branch, scored zero-shot for model selection
    "zeroshot-bootstrap": 1000,  # bootstrap replicates for the confidence intervals
}


class ZeroShotConfigError(ValueError):
    pass


@dataclass(frozen=True)
class ZeroShotSpec:
    image_encoder: str = "experts"
    embed_dim: int = 128
    loss: str = "siglip"
    text_adapter: bool = False
    weight: float = 0.1
    fusion: float = 0.0
    proxy_classes: tuple[str, ...] = ()
    bootstrap: int = 1000
    text_unit: str = "sentence"
    image_grad: bool = True

    def proxy_indices(self, label_set: LabelSet) -> list[int]:
        return [label_set.seen.index(c) for c in self.proxy_classes]


def zeroshot_spec(config: Mapping[str, Any], label_set: LabelSet) -> ZeroShotSpec | None:
    """The spec when the run config turns the branch on, else None; every key checked with a clear message."""
    cfg = {**DEFAULTS, **{k: v for k, v in config.items() if k in DEFAULTS}}
    if not bool(cfg["zeroshot"]):
        return None
    if cfg["zeroshot-image-encoder"] not in IMAGE_ENCODERS:
        raise ZeroShotConfigError(f"run config zeroshot-image-encoder = {cfg['zeroshot-image-encoder']!r}; expected "
                                  f"one of {', '.join(IMAGE_ENCODERS)}")
    if cfg["zeroshot-loss"] not in CONTRASTIVE_LOSSES:
        raise ZeroShotConfigError(f"run config zeroshot-loss = {cfg['zeroshot-loss']!r}; expected one of "
                                  f"{', '.join(CONTRASTIVE_LOSSES)}")
    if cfg["zeroshot-text-unit"] not in ("sentence", "report"):
        raise ZeroShotConfigError(f"run config zeroshot-text-unit = {cfg['zeroshot-text-unit']!r}; expected "
                                  "sentence or report")
    fusion = float(cfg["zeroshot-fusion"])
    if not 0.0 <= fusion <= 1.0:
        raise ZeroShotConfigError(f"run config zeroshot-fusion = {fusion}; expected a weight in [0, 1]")
    if not label_set.zeroshot:
        raise ZeroShotConfigError(f"label set {label_set.name!r} has no held-out (zero-shot) classes")
    by_key = {c.lower(): c for c in label_set.seen}
    proxy = []
    for name in filter(None, (p.strip() for p in str(cfg["zeroshot-proxy-classes"]).split(","))):
        if name.lower() not in by_key:
            raise ZeroShotConfigError(f"run config zeroshot-proxy-classes: {name!r} is not a seen class of "
                                      f"{label_set.name!r}")
        proxy.append(by_key[name.lower()])
    return ZeroShotSpec(str(cfg["zeroshot-image-encoder"]), int(cfg["zeroshot-embed-dim"]), str(cfg["zeroshot-loss"]),
                        bool(cfg["zeroshot-text-adapter"]), float(cfg["zeroshot-weight"]), fusion, tuple(proxy),
                        int(cfg["zeroshot-bootstrap"]), str(cfg["zeroshot-text-unit"]),
                        bool(cfg["zeroshot-image-grad"]))


def spec_config(spec: ZeroShotSpec | None) -> dict[str, Any]:
    """The run-config keys that reproduce ``spec`` (what the ServerApp sends to sites)."""
    if spec is None:
        return {"zeroshot": False}
    return {"zeroshot": True, "zeroshot-image-encoder": spec.image_encoder, "zeroshot-embed-dim": spec.embed_dim,
            "zeroshot-loss": spec.loss, "zeroshot-text-adapter": spec.text_adapter, "zeroshot-weight": spec.weight,
            "zeroshot-fusion": spec.fusion, "zeroshot-proxy-classes": ",".join(spec.proxy_classes),
            "zeroshot-bootstrap": spec.bootstrap, "zeroshot-text-unit": spec.text_unit,
            "zeroshot-image-grad": spec.image_grad}
