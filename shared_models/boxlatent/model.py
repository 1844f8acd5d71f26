"""The box-latent model: the routed experts, frozen, as the backbone, and a trainable box head on their pooled
features. An image's features follow the same route as the experts' logits (its view's expert, or the router's
soft mixture for an unknown view), averaged with the generalist's when the preset has one.

Only ``box.*`` trains and travels back from sites; ``backbone.*`` is what the ServerApp loaded (a fedchest
checkpoint of an earlier run, local weights, or random init) and never changes."""

from __future__ import annotations

import torch
from torch import nn

from shared_models.boxlatent.head import BoxHead, BoxOutput
from shared_models.networks.experts import PROJECTIONS, RoutedExperts


def feature_dim(net: nn.Module) -> int:
    """Width of a timm model's pooled (pre-logits) features."""
    return int(getattr(net, "head_hidden_size", None) or net.num_features)


def _features(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return net.forward_head(net.forward_features(x), pre_logits=True)


class BoxLatentNet(nn.Module):
    def __init__(self, backbone: RoutedExperts, latent_dim: int, samples: int = 8) -> None:
        super().__init__()
        members = [*backbone.experts.values()] + ([backbone.generalist] if backbone.generalist is not None else [])
        dims = {feature_dim(m) for m in members}
        if len(dims) != 1:
            raise ValueError(f"the box head needs experts with one feature width; this preset's are {sorted(dims)}")
        self.backbone = backbone.requires_grad_(False).eval()
        self.box = BoxHead(dims.pop(), latent_dim, backbone.num_classes)
        self.num_classes = backbone.num_classes
        self.samples = samples  # BL-TTA's N at test time

    def train(self, mode: bool = True) -> "BoxLatentNet":
        super().train(mode)
        self.backbone.eval()  # frozen: batch-norm statistics stay those of the backbone
        return self

    @torch.no_grad()
    def features(self, x: torch.Tensor, projection: torch.Tensor) -> torch.Tensor:
        """(B, F) routed pooled features of the frozen backbone."""
        net = self.backbone
        router_logits = net.router(x) if net.router is not None else None
        route = net.route(projection, router_logits)
        out = None
        for i, name in enumerate(PROJECTIONS):
            sel = route == i
            if bool(sel.any()):
                f = _features(net.experts[name], x[sel])
                out = x.new_zeros(x.shape[0], f.shape[1]) if out is None else out
                out[sel] = f
        rest = route < 0
        if bool(rest.any()):
            stacked = torch.stack([_features(net.experts[p], x[rest]) for p in PROJECTIONS])
            mixed = (stacked * net.mixture(router_logits, rest)).sum(0)
            out = x.new_zeros(x.shape[0], mixed.shape[1]) if out is None else out
            out[rest] = mixed
        if net.generalist is not None:
            out = (out + _features(net.generalist, x)) / 2
        return out

    def forward(self, x: torch.Tensor, projection: torch.Tensor, samples: int = 8,
                generator: torch.Generator | None = None) -> BoxOutput:
        return self.box(self.features(x, projection), samples, generator)

    def classifier_keys(self) -> dict[str, list[str]]:
        """The class-indexed rows (aggregation ``projection+class``): the box classifier's."""
        return {"box": ["box.classifier.weight", "box.classifier.bias"]}


def backbone_state(state: dict[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """The routed experts' entries of a fedchest checkpoint's state dict (a zero-shot head's, a CT model's and a
    prompt localiser's are dropped; a box model's backbone is unwrapped)."""
    if any(k.startswith("backbone.") for k in state):
        state = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
    from shared_models.networks.factory import radiograph_state

    out = {k: v for k, v in radiograph_state(state).items() if not k.startswith("zeroshot.")}
    if not any(k.startswith("experts.") for k in out):
        raise ValueError(f"{source}: no routed-expert weights (experts.*) in this state dict")
    return out


def build_box_model(preset: str, num_classes: int, spec, image_size: int | None = None,
                    backbone: dict[str, torch.Tensor] | None = None) -> BoxLatentNet:
    """The preset's routed experts (with ``backbone`` weights when given, else random init), frozen, under a box
    head of ``spec.latent_dim`` dimensions."""
    from shared_models.networks.factory import build_model

    experts = build_model(preset, num_classes, image_size=image_size)
    if backbone is not None:
        try:
            experts.load_state_dict(backbone)
        except RuntimeError as exc:
            first = str(exc).splitlines()[1].strip()[:200] if "\n" in str(exc) else str(exc)[:200]
            raise ValueError(f"box backbone weights do not fit preset {preset!r} with {num_classes} classes: "
                             f"{first}") from None
    return BoxLatentNet(experts, spec.latent_dim, spec.samples)


def load_backbone_weights(path, preset: str) -> dict[str, torch.Tensor]:
    """Backbone weights from a local file: a fedchest checkpoint (its preset must be ``preset``), a
    ``.safetensors`` file or a plain torch state dict of the routed experts. Never downloads anything."""
    from pathlib import Path

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"box-backbone-weights: {path} is not a file on this host")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return backbone_state(load_file(str(path)), str(path))
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError) as exc:
        raise ValueError(f"box-backbone-weights: {path} is not a readable torch file ({exc})") from None
    if isinstance(obj, dict) and "state_dict" in obj:
        if obj.get("model_preset") not in (None, preset):
            raise ValueError(f"box-backbone-weights: {path} holds preset {obj['model_preset']!r} but the run's "
                             f"model-preset is {preset!r}; set model-preset to match")
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise ValueError(f"box-backbone-weights: {path} holds no state dict")
    return backbone_state(obj, str(path))
