"""Per-sample clipping from per-layer pieces, with one forward and one input-gradient backward.

The vmap engine (``dpsgd``) differentiates each sample's whole loss: exact for any architecture, but it
materialises every parameter's gradient once per sample. For networks built only of layers whose per-sample
gradient is a product of the layer's input and the gradient of its output (convolutions, linear layers,
norms), this engine instead

1. runs the batch forward once, keeping each layer's input, and asks autograd only for the gradient of the
   *input image* (so autograd computes no weight gradients), catching each layer's output gradient with a
   tensor hook on the way;
2. gets each sample's gradient norm per layer, either from the materialised per-sample gradient or, where
   that is larger than the layer's spatial extent squared, from Gram matrices without materialising it
   ("ghost" norm: ||sum_t b_t a_t^T||^2 = <B B^T, A A^T>);
3. clips: the clipped sum is a per-sample weighted sum of the materialised gradients, or one matrix product
   of the weighted output gradients with the inputs.

Closed forms here: convolutions (depthwise ones as one grouped convolution), linear layers, timm's LayerNorm2d
and ConvNeXt-V2's GRN; Opacus's samplers for GroupNorm / LayerNorm; any other parameter-holding leaf layer
without buffers gets its per-sample gradient from Opacus's functorch fallback on that layer alone. Modules that
hold parameters directly *and* have children (Swin's relative-position table, CaiT's class token and layer
scales), or keep buffers next to parameters, are not handled: ``unsupported`` names them and ``dpsgd`` uses vmap
for those members.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from opacus.grad_sample import GradSampleModule
from opacus.grad_sample.functorch import ft_compute_per_sample_gradient
from timm.layers import LayerNorm2d
from timm.layers.grn import GlobalResponseNorm


def _layer_norm_2d(layer: LayerNorm2d, a: torch.Tensor, b: torch.Tensor) -> dict[nn.Parameter, torch.Tensor]:
    xhat = F.layer_norm(a.permute(0, 2, 3, 1), layer.normalized_shape, eps=layer.eps)
    return {layer.weight: torch.einsum("nhwc,nchw->nc", xhat, b), layer.bias: b.sum((2, 3))}


def _grn(layer: GlobalResponseNorm, a: torch.Tensor, b: torch.Tensor) -> dict[nn.Parameter, torch.Tensor]:
    """out = x + bias + weight * x * N(x): per-sample gradients are sums over space of g and g * x * N(x)."""
    x_g = a.norm(p=2, dim=layer.spatial_dim, keepdim=True)
    x_n = x_g / (x_g.mean(dim=layer.channel_dim, keepdim=True) + layer.eps)
    spatial = layer.spatial_dim
    return {layer.weight: (b * a * x_n).sum(spatial).reshape(a.shape[0], -1),
            layer.bias: b.sum(spatial).reshape(a.shape[0], -1)}


_OWN_SAMPLERS = {LayerNorm2d: _layer_norm_2d, GlobalResponseNorm: _grn}
_CLOSED_FORM = (nn.Conv2d, nn.Linear, *_OWN_SAMPLERS)


def _holders(modules: Iterable[nn.Module]) -> list[nn.Module]:
    out: dict[int, nn.Module] = {}  # a network shared by several members is hooked once
    for root in modules:
        for m in root.modules():
            if any(p.requires_grad for p in m.parameters(recurse=False)):
                out.setdefault(id(m), m)
    return list(out.values())


def unsupported(modules: Iterable[nn.Module]) -> list[str]:
    """Why the per-layer engine cannot run these modules (empty: it can)."""
    reasons = []
    for m in _holders(modules):
        if type(m) in _CLOSED_FORM or type(m) in GradSampleModule.GRAD_SAMPLERS:
            continue
        if any(True for _ in m.children()):
            reasons.append(f"{type(m).__name__} holds parameters and submodules")
        elif any(True for _ in m.buffers(recurse=False)):
            reasons.append(f"{type(m).__name__} keeps buffers next to its parameters")
    return reasons


class _Piece:
    """One layer call's contribution to per-sample gradients: materialised per-sample gradients by parameter,
    or (for ghost layers) the inputs and output gradients from which norms and the clipped sum follow."""

    def __init__(self) -> None:
        self.full: dict[nn.Parameter, torch.Tensor] = {}
        self.ghost: list[tuple[nn.Parameter, torch.Tensor, torch.Tensor, torch.Size]] = []  # (param, A, B, shape)

    def sq_norms(self, n: int, device: torch.device) -> torch.Tensor:
        total = torch.zeros(n, device=device)
        for g in self.full.values():
            total = total + torch.linalg.vector_norm(g.reshape(n, -1), dim=1).pow(2)
        for _, a, b, _ in self.ghost:  # a: (n, L, p), b: (n, L, o)
            total = total + (torch.bmm(a, a.transpose(1, 2)) * torch.bmm(b, b.transpose(1, 2))).sum((1, 2))
        return total

    def add_clipped(self, factor: torch.Tensor, out: dict[nn.Parameter, torch.Tensor]) -> None:
        n = factor.shape[0]
        for p, g in self.full.items():
            s = (factor @ g.reshape(n, -1)).view(p.shape)
            out[p] = out[p] + s if p in out else s
        for p, a, b, shape in self.ghost:
            s = ((b * factor.view(n, 1, 1)).flatten(0, 1).T @ a.flatten(0, 1)).view(shape)
            out[p] = out[p] + s if p in out else s


def _ghost_cheaper(length: int, weight: torch.Tensor) -> bool:
    """Gram matrices (L x L per sample) cost less than a materialised per-sample weight gradient."""
    return length * length <= weight.numel()


def _depthwise(layer: nn.Conv2d, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-sample gradients of a stride-1 depthwise convolution as one grouped convolution of each sample's
    padded input with its own output gradient (no im2col: ConvNeXt's 7x7 kernels would unfold 49-fold)."""
    n, c = a.shape[:2]
    ph, pw = layer.padding if isinstance(layer.padding, tuple) else (layer.padding, layer.padding)
    x = F.pad(a, (pw, pw, ph, ph)).reshape(1, n * c, a.shape[2] + 2 * ph, a.shape[3] + 2 * pw)
    w = b.reshape(n * c, 1, b.shape[2], b.shape[3])
    return F.conv2d(x, w, groups=n * c).reshape(n, *layer.weight.shape)


def _is_plain_depthwise(layer: nn.Conv2d) -> bool:
    return (layer.groups == layer.in_channels == layer.out_channels and layer.stride == (1, 1)
            and layer.dilation == (1, 1) and layer.padding_mode == "zeros" and not isinstance(layer.padding, str))


def _conv(layer: nn.Conv2d, a: torch.Tensor, b: torch.Tensor, piece: _Piece, ghost: bool) -> None:
    n = a.shape[0]
    if _is_plain_depthwise(layer):
        piece.full[layer.weight] = _depthwise(layer, a, b)
        if layer.bias is not None and layer.bias.requires_grad:
            piece.full[layer.bias] = b.sum((2, 3))
        return
    u = F.unfold(a, layer.kernel_size, dilation=layer.dilation, padding=layer.padding, stride=layer.stride)
    length = u.shape[-1]
    bk = b.reshape(n, layer.out_channels, length)
    if ghost and layer.groups == 1 and _ghost_cheaper(length, layer.weight):
        piece.ghost.append((layer.weight, u.transpose(1, 2), bk.transpose(1, 2), layer.weight.shape))
    else:
        g = layer.groups
        w = torch.einsum("ngoq,ngpq->ngop", bk.view(n, g, -1, length), u.view(n, g, -1, length))
        piece.full[layer.weight] = w.reshape(n, *layer.weight.shape)
    if layer.bias is not None and layer.bias.requires_grad:
        piece.full[layer.bias] = bk.sum(-1)


def _linear(layer: nn.Linear, a: torch.Tensor, b: torch.Tensor, piece: _Piece, ghost: bool) -> None:
    n = a.shape[0]
    a3, b3 = a.reshape(n, -1, a.shape[-1]), b.reshape(n, -1, b.shape[-1])
    if ghost and _ghost_cheaper(a3.shape[1], layer.weight):
        piece.ghost.append((layer.weight, a3, b3, layer.weight.shape))
    else:
        piece.full[layer.weight] = torch.bmm(b3.transpose(1, 2), a3)
    if layer.bias is not None and layer.bias.requires_grad:
        piece.full[layer.bias] = b3.sum(1)


def _piece(layer: nn.Module, calls: list[tuple[torch.Tensor, torch.Tensor]]) -> _Piece:
    """One layer's piece over all its calls in the forward. A layer called more than once (weight sharing)
    has its per-sample gradients materialised and summed over calls, since norms do not add."""
    piece = _Piece()
    ghost = len(calls) == 1
    for a, b in calls:
        one = _Piece()
        if type(layer) is nn.Conv2d:
            _conv(layer, a, b, one, ghost)
        elif type(layer) is nn.Linear:
            _linear(layer, a, b, one, ghost)
        elif type(layer) in _OWN_SAMPLERS:
            one.full.update(_OWN_SAMPLERS[type(layer)](layer, a, b))
        elif type(layer) in GradSampleModule.GRAD_SAMPLERS:
            one.full.update(GradSampleModule.GRAD_SAMPLERS[type(layer)](layer, [a], b))
        else:
            one.full.update(ft_compute_per_sample_gradient(layer, [a], b))
        piece.ghost += one.ghost
        for p, g in one.full.items():
            if p.requires_grad:
                piece.full[p] = piece.full[p] + g if p in piece.full else g
    return piece


def clipped_sum_per_layer(modules: list[nn.Module], x: torch.Tensor,
                          per_sample_loss: Callable[[torch.Tensor], torch.Tensor],
                          max_grad_norm: float) -> tuple[dict[nn.Parameter, torch.Tensor], torch.Tensor, torch.Tensor]:
    """``per_sample_loss(x)`` must compute a vector of per-sample losses using only ``modules``' parameters,
    each layer seeing the batch on its first axis. Returns (clipped sum by parameter, losses, norms)."""
    n = x.shape[0]
    calls: dict[nn.Module, list[tuple[torch.Tensor, list]]] = {}

    def keep(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        a = inputs[0]
        if not isinstance(output, torch.Tensor) or a.shape[0] != n or output.shape[0] != n:
            raise RuntimeError(f"{type(module).__name__} does not keep the batch on its first axis; "
                               "use the vmap engine for this network")
        slot: list = []
        output.register_hook(lambda grad, slot=slot: slot.append(grad.detach()))
        calls.setdefault(module, []).append((a.detach(), slot))

    hooks = [m.register_forward_hook(keep) for m in _holders(modules)]
    try:
        x = x.detach().requires_grad_(True)
        losses = per_sample_loss(x)
        torch.autograd.grad(losses.sum(), x)
    finally:
        for h in hooks:
            h.remove()
    pieces = [_piece(m, [(a, slot[0]) for a, slot in c if slot]) for m, c in calls.items()]
    sq = torch.zeros(n, device=x.device)
    for piece in pieces:
        sq = sq + piece.sq_norms(n, x.device)
    norms = sq.sqrt()
    factor = (max_grad_norm / (norms + 1e-6)).clamp(max=1.0)
    out: dict[nn.Parameter, torch.Tensor] = {}
    for piece in pieces:
        piece.add_clipped(factor, out)
    return out, losses.detach(), norms
