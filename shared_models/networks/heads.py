"""TRCGL-Net's options on the experts (issue 12): squeeze-and-excitation on the backbone's feature map, CSRA
class-aware attention in place of average pooling + linear, and a label co-occurrence graph (ML-GCN) that
produces the classifier. One parser for the run-config keys; ``TRCGLExpert`` wraps a timm CNN backbone and keeps
timm's interface (``forward_features``, ``forward_head``, ``get_classifier``, ``num_features``), so the zero-shot
and box-latent heads use it as they use a plain expert.

The graph's label embeddings (MiniLM on the class descriptions) and normalised adjacency are persistent buffers
that the server writes into the global model (server/label_graph.py): the adjacency from the co-occurrence counts
the sites send each round, summed; a checkpoint therefore carries the graph it was trained with.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from shared_models.labelgraph import GraphClassifier
from shared_models.networks.attention import CSRA, CSRA_TEMPERATURES, SqueezeExcite

DEFAULTS: dict[str, Any] = {
    "se": False,  # squeeze-and-excitation (r = 16) on each expert's last feature map
    "csra-heads": 0,  # CSRA class-aware attention heads (0: average pooling + linear; 1, 2, 4, 6 or 8)
    "csra-lambda": 0.1,
    "label-graph": False,  # ML-GCN classifier over the consortium's label co-occurrence
    "label-graph-noise": 0.0,  # > 0: sites release their pair counts with Gaussian noise (client/cooccurrence.py)
    "label-graph-max-labels": 6,  # with noise: positives per image that count (bounds one image's contribution)
}
TEXT_DIM = 384  # MiniLM sentence embeddings


class HeadConfigError(ValueError):
    pass


def label_graph_release(config: Mapping[str, Any]) -> dict[str, Any]:
    """The run-config keys that tell label-graph sites how to release their counts, checked."""
    cfg = {**DEFAULTS, **{k: v for k, v in config.items() if k in DEFAULTS}}
    try:
        noise, max_labels = float(cfg["label-graph-noise"]), int(cfg["label-graph-max-labels"])
    except (TypeError, ValueError):
        noise, max_labels = -1.0, 0
    if noise < 0 or max_labels < 2:
        raise HeadConfigError(f"run config label-graph-noise = {cfg['label-graph-noise']!r} and label-graph-max-labels"
                              f" = {cfg['label-graph-max-labels']!r}; expected a noise multiplier >= 0 and at least 2 "
                              "labels per image")
    return {"label-graph-noise": noise, "label-graph-max-labels": max_labels}


@dataclass(frozen=True)
class HeadSpec:
    se: bool = False
    csra_heads: int = 0
    csra_lambda: float = 0.1
    label_graph: bool = False

    @property
    def plain(self) -> bool:
        return not (self.se or self.csra_heads or self.label_graph)


def head_spec(config: Mapping[str, Any]) -> HeadSpec | None:
    """The spec when the run config turns any option on, else None; every key checked."""
    cfg = {**DEFAULTS, **{k: v for k, v in config.items() if k in DEFAULTS}}
    heads = int(cfg["csra-heads"])
    if heads and heads not in CSRA_TEMPERATURES:
        raise HeadConfigError(f"run config csra-heads = {heads}; expected 0 (off) or one of "
                              f"{', '.join(map(str, CSRA_TEMPERATURES))}")
    spec = HeadSpec(bool(cfg["se"]), heads, float(cfg["csra-lambda"]), bool(cfg["label-graph"]))
    return None if spec.plain else spec


def spec_config(spec: HeadSpec | None) -> dict[str, Any]:
    if spec is None:
        return {}
    return {"se": spec.se, "csra-heads": spec.csra_heads, "csra-lambda": spec.csra_lambda,
            "label-graph": spec.label_graph}


class ClassBias(nn.Module):
    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(num_classes))


class TRCGLExpert(nn.Module):
    """A timm CNN backbone (built without a classifier) -> [SE] -> CSRA or average pooling -> logits, the class
    weights either the head's own or the label graph's."""

    def __init__(self, backbone: nn.Module, num_classes: int, spec: HeadSpec) -> None:
        super().__init__()
        self.backbone, self.spec = backbone, spec
        c = int(backbone.num_features)
        self.num_features = self.head_hidden_size = c
        self.se = SqueezeExcite(c) if spec.se else None
        self.graph = GraphClassifier(num_classes, TEXT_DIM, c) if spec.label_graph else None
        self.csra = CSRA(c, num_classes, spec.csra_heads, spec.csra_lambda, own_weights=self.graph is None) \
            if spec.csra_heads else None
        self.fc = nn.Linear(c, num_classes) if self.csra is None and self.graph is None else None
        self.class_bias = ClassBias(num_classes) if self.graph is not None else None

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        f = self.backbone.forward_features(x)
        if f.ndim != 4:
            raise ValueError(f"squeeze-and-excitation, CSRA and the label graph need a CNN feature map (B, C, H, W); "
                             f"{type(self.backbone).__name__} gives shape {tuple(f.shape)}")
        return self.se(f) if self.se is not None else f

    def forward_head(self, f: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if pre_logits:
            return f.mean((2, 3))
        w = self.graph() if self.graph is not None else None
        if self.csra is not None:
            out = self.csra(f, w)
        elif w is not None:
            out = f.mean((2, 3)) @ w.T
        else:
            return self.fc(f.mean((2, 3)))
        return out + self.class_bias.bias if self.class_bias is not None else out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        """The module whose parameters have one row per class (projection+class aggregation weights them)."""
        return self.class_bias if self.class_bias is not None else self.csra if self.csra is not None else self.fc

    def attention_maps(self) -> torch.Tensor | None:
        """The first CSRA head's class attention maps of the last forward pass, (B, K, H, W)."""
        return self.csra.last_maps if self.csra is not None else None
