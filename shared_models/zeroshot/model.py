"""The dual-branch model (CXR-LT 2026 task 2): the routed experts' ASL branch on the seen classes plus an image-text
branch that maps images and texts into one joint space.

Everything here is what travels in a federated run. The frozen MiniLM text encoder is *not* part of this module:
sites run it locally on their reports and prompts (``text_encoder.py``) and feed its 384-d sentence embeddings to
``ZeroShotHead.embed_text``; the trainable text side is a small residual adapter (optional) and the projection.

Image encoder (``image_encoder`` in the run config):

* ``experts``: the routed experts' own backbones. Each expert's pooled features (timm ``pre_logits``) get their
  own projection (``zeroshot.image_proj.PA`` ...); an image's embedding follows the same route as its logits
  (its view's expert, or the router's soft mixture), averaged with the generalist's when there is one.
* ``separate``: a timm backbone of its own (``zeroshot.image_encoder``), built from the preset's ``zeroshot``
  entry (else its ``generalist`` entry), with one projection ``zeroshot.image_proj.encoder``.

Fusion for seen classes (``fuse``): p = (1 - alpha) * sigmoid(ASL logit) + alpha * zero-shot probability; alpha = 0
(the default) keeps the ASL branch alone.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from shared_models.networks.experts import PROJECTIONS, RoutedExperts
from shared_models.zeroshot.losses import CLIP_INIT_T, SIGLIP_INIT_B, SIGLIP_INIT_T

IMAGE_ENCODERS = ("experts", "separate")
CONTRASTIVE_LOSSES = ("siglip", "clip")


def feature_dim(net: nn.Module) -> int:
    """Width of a timm model's pooled (pre-logits) features."""
    return int(getattr(net, "head_hidden_size", None) or net.num_features)


class TextAdapter(nn.Module):
    """A residual bottleneck on frozen sentence embeddings; starts as the identity (last layer zero)."""

    def __init__(self, dim: int, hidden: int = 64) -> None:
        super().__init__()
        self.down, self.up = nn.Linear(dim, hidden), nn.Linear(hidden, dim)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.up(F.gelu(self.down(x)))


class ZeroShotHead(nn.Module):
    """Trainable parts of the image-text branch: image projection(s), optional separate image encoder, optional
    text adapter, text projection, and the contrastive temperature t (and SigLIP's bias b)."""

    def __init__(self, image_dims: dict[str, int], text_dim: int, embed_dim: int = 128, loss: str = "siglip",
                 image_encoder: nn.Module | None = None, text_adapter: bool = False) -> None:
        super().__init__()
        if loss not in CONTRASTIVE_LOSSES:
            raise ValueError(f"contrastive loss {loss!r}; expected one of {CONTRASTIVE_LOSSES}")
        self.loss = loss
        self.image_encoder = image_encoder
        self.image_proj = nn.ModuleDict({name: nn.Linear(dim, embed_dim) for name, dim in image_dims.items()})
        self.text_adapter = TextAdapter(text_dim) if text_adapter else None
        self.text_proj = nn.Linear(text_dim, embed_dim)
        self.logit_scale = nn.Parameter(torch.tensor(SIGLIP_INIT_T if loss == "siglip" else CLIP_INIT_T))
        self.logit_bias = nn.Parameter(torch.tensor(SIGLIP_INIT_B)) if loss == "siglip" else None

    def forward(self, x: torch.Tensor, sentence_embeddings: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Image and text embeddings through the separate encoder (DP-SGD calls the head on its own)."""
        if self.image_encoder is None:
            raise RuntimeError("this zero-shot head embeds images through the routed experts (DualBranch.forward_dual)")
        return self.image_proj["encoder"](self.image_encoder(x)), self.embed_text(sentence_embeddings)

    def embed_text(self, sentence_embeddings: torch.Tensor) -> torch.Tensor:
        """(N, 384) frozen MiniLM embeddings -> (N, D) joint-space embeddings (not normalised)."""
        t = sentence_embeddings
        if self.text_adapter is not None:
            t = self.text_adapter(t)
        return self.text_proj(t)


def _pooled(net: nn.Module, x: torch.Tensor, training: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, pooled features) of a timm classifier in one pass through its trunk."""
    doubled = training and x.shape[0] == 1  # batch norm needs two values per channel (see RoutedExperts._run)
    xx = torch.cat([x, x]) if doubled else x
    feats = net.forward_features(xx)
    logits, pooled = net.forward_head(feats), net.forward_head(feats, pre_logits=True)
    return (logits[:1], pooled[:1]) if doubled else (logits, pooled)


class DualBranch(RoutedExperts):
    """Routed experts (ASL branch) with a ``zeroshot`` image-text head; state-dict keys of the experts are those
    of ``RoutedExperts``, the head's start with ``zeroshot.``."""

    def __init__(self, base: RoutedExperts, head: ZeroShotHead, image_encoder: str, backbone_grad: bool = True) -> None:
        super().__init__(dict(base.experts.items()), base.num_classes, base.router, base.routing, base.generalist)
        if image_encoder not in IMAGE_ENCODERS:
            raise ValueError(f"image encoder {image_encoder!r}; expected one of {IMAGE_ENCODERS}")
        if (image_encoder == "separate") != (head.image_encoder is not None):
            raise ValueError("image_encoder 'separate' needs a head with its own encoder, 'experts' one without")
        self.image_encoder_mode = image_encoder
        # False: the contrastive loss trains the projections only (features detached)
        self.backbone_grad = backbone_grad
        self.zeroshot = head

    def forward_dual(self, x: torch.Tensor, projection: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """ASL logits (B, C), router logits (B, 3) or None, image embeddings (B, D) (not normalised)."""
        if self.image_encoder_mode == "separate":
            logits, router_logits = self.forward_with_router(x, projection)
            feats = self.zeroshot.image_encoder(x)
            features = feats if self.backbone_grad else feats.detach()
            return logits, router_logits, self.zeroshot.image_proj["encoder"](features)
        proj = self.zeroshot.image_proj
        router_logits = self.router(x) if self.router is not None else None
        out = x.new_zeros(x.shape[0], self.num_classes)
        emb = x.new_zeros(x.shape[0], proj[PROJECTIONS[0]].out_features)
        route = self.route(projection, router_logits)
        for i, name in enumerate(PROJECTIONS):
            sel = route == i
            if bool(sel.any()):
                lg, pooled = _pooled(self.experts[name], x[sel], self.training)
                out[sel], emb[sel] = lg, proj[name](self._cut(pooled))
        rest = route < 0
        if bool(rest.any()):
            xu = x[rest]
            runs = [_pooled(self.experts[p], xu, self.training) for p in PROJECTIONS]
            lg = torch.stack([r[0] for r in runs])
            em = torch.stack([proj[p](self._cut(r[1])) for p, r in zip(PROJECTIONS, runs)])
            w = self.mixture(router_logits, rest)
            out[rest], emb[rest] = (lg * w).sum(0), (em * w).sum(0)
        if self.generalist is not None:
            lg, pooled = _pooled(self.generalist, x, self.training)
            out, emb = (out + lg) / 2, (emb + proj["generalist"](self._cut(pooled))) / 2
        return out, router_logits, emb

    def _cut(self, features: torch.Tensor) -> torch.Tensor:
        return features if self.backbone_grad else features.detach()


def fuse(asl_probs: torch.Tensor, zero_shot_probs: torch.Tensor, alpha: float) -> torch.Tensor:
    """Seen-class fusion of the two branches: (1 - alpha) * ASL + alpha * zero-shot."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"fusion weight alpha must lie in [0, 1], got {alpha}")
    return asl_probs if alpha == 0.0 else (1 - alpha) * asl_probs + alpha * zero_shot_probs


def build_head(spec, base: RoutedExperts, encoder_factory, text_dim: int) -> ZeroShotHead:
    """The zero-shot head for ``base`` under ``spec`` (a ``ZeroShotSpec``); ``encoder_factory()`` builds the
    separate image encoder (a timm model without classifier) when the spec asks for one."""
    if spec.image_encoder == "separate":
        encoder = encoder_factory()
        dims = {"encoder": feature_dim(encoder)}
    else:
        encoder = None
        dims = {p: feature_dim(base.experts[p]) for p in PROJECTIONS}
        if base.generalist is not None:
            dims["generalist"] = feature_dim(base.generalist)
    return ZeroShotHead(dims, text_dim, spec.embed_dim, spec.loss, encoder, spec.text_adapter)
