"""Make a network DP-SGD-compatible: every operation must see one sample at a time.

* BatchNorm (``nn.BatchNorm2d`` and timm's fused ``BatchNormAct2d``, which Opacus's validator misses) mixes
  samples of a batch; it becomes GroupNorm (followed by the fused layer's dropout and activation).
* In-place activations are switched off (they break per-sample gradient hooks after the swap).
* timm's fused attention (``scaled_dot_product_attention``) becomes the explicit softmax(QK^T)V: the fused CPU
  kernel has no vmap batching rule, so per-sample gradients through it fall back to a slow loop.

Buffers in attention (Swin's relative-position index and window masks) and reshapes that fold windows into the
batch axis are not a problem here: per-sample gradients come from ``torch.func.vmap`` over whole samples
(``shared_models.privacy.dpsgd``), not from per-layer hooks.
"""

from __future__ import annotations


from torch import nn

CROSS_SAMPLE = (nn.modules.batchnorm._BatchNorm, nn.SyncBatchNorm)


def group_count(channels: int, max_groups: int = 16) -> int:
    """The largest divisor of ``channels`` not above ``max_groups`` (GroupNorm needs groups | channels)."""
    return max(g for g in range(1, min(max_groups, channels) + 1) if channels % g == 0)


def _replacement(bn: nn.Module) -> nn.Module:
    c = bn.num_features
    gn = nn.GroupNorm(group_count(c), c, eps=bn.eps, affine=True)
    act = getattr(bn, "act", None)
    drop = getattr(bn, "drop", None)
    if act is None and drop is None:
        return gn
    if act is not None and hasattr(act, "inplace"):
        act.inplace = False
    return nn.Sequential(gn, *(m for m in (drop, act) if m is not None and not isinstance(m, nn.Identity)))


def make_dp_compatible(model: nn.Module) -> list[str]:
    """Swap cross-sample layers and in-place activations in place; returns what was changed."""
    changed: list[str] = []
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            full = f"{name}.{child_name}" if name else child_name
            if isinstance(child, CROSS_SAMPLE):
                setattr(module, child_name, _replacement(child))
                changed.append(f"{full}: {type(child).__name__} -> GroupNorm")
    for name, module in model.named_modules():
        if getattr(module, "inplace", False) is True:
            module.inplace = False
            changed.append(f"{name}: inplace off")
        if getattr(module, "fused_attn", False) is True:  # CPU flash attention has no vmap batching rule
            module.fused_attn = False
            changed.append(f"{name}: explicit attention")
    return changed


def cross_sample_layers(model: nn.Module) -> list[str]:
    """Layers that still mix samples (DP-SGD would be wrong with them)."""
    return [n for n, m in model.named_modules() if isinstance(m, CROSS_SAMPLE)]


def is_dp_compatible(model: nn.Module) -> bool:
    return not cross_sample_layers(model)


__all__ = ["make_dp_compatible", "cross_sample_layers", "is_dp_compatible", "group_count"]
