"""DP-SGD for the zero-shot head: exact per-sample gradients (``torch.func.vmap``) of a loss each sample owns.

In-batch contrastive negatives make one image's loss depend on other patients' reports, so a per-sample gradient
would not bound any one patient's influence. Under DP the head therefore trains on a per-sample SigLIP loss whose
negatives are public text: image i against its own text (z = +1) and against the descriptive prompt of every
annotated seen class (z = +1 where labelled positive, -1 where negative; proxy and unannotated classes weigh 0).
Needs the separate image encoder: with ``experts`` the contrastive gradient would reach the experts' backbones,
whose per-sample gradients the routed DP engines compute for the ASL loss alone.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.func import functional_call, grad_and_value, vmap

from shared_models.zeroshot.model import ZeroShotHead


class ZeroShotDPError(ValueError):
    pass


def check_dp_head(head: ZeroShotHead) -> None:
    check_dp_settings("experts" if head.image_encoder is None else "separate", head.loss)


def check_dp_settings(image_encoder: str, loss: str) -> None:
    """Refuse the zero-shot settings DP-SGD cannot run, saying which run-config key to change."""
    if image_encoder != "separate":
        raise ZeroShotDPError("DP-SGD for the zero-shot branch needs zeroshot-image-encoder = \"separate\" (with "
                              "\"experts\" the contrastive gradient reaches the experts, which the DP engines clip "
                              "for the ASL loss alone)")
    if loss != "siglip":
        raise ZeroShotDPError("DP-SGD for the zero-shot branch uses the per-sample SigLIP form; set "
                              "zeroshot-loss = \"siglip\"")


def clipped_zeroshot_sum(head: ZeroShotHead, x: torch.Tensor, text: torch.Tensor, prompts: torch.Tensor,
                         y: torch.Tensor, m: torch.Tensor, max_grad_norm: float
                         ) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    """Sum of per-sample gradients of the head's parameters, each clipped to ``max_grad_norm``; per-sample losses
    and norms. ``text`` (B, 384): each image's own frozen text embedding; ``prompts`` (C, 384): public class
    prompts (frozen embeddings); ``y``, ``m`` (B, C): labels and the weights of the prompt terms."""
    check_dp_head(head)
    params = {k: v.detach() for k, v in head.named_parameters() if v.requires_grad}

    def single(p, x1, t1, y1, m1):
        img, txt = functional_call(head, p, (x1[None], torch.cat([t1[None], prompts])))
        logits = p["logit_scale"].exp() * (F.normalize(img, dim=-1) @ F.normalize(txt, dim=-1).T)[0] + p["logit_bias"]
        z = torch.cat([torch.ones(1, device=x1.device), 2 * y1 - 1])
        w = torch.cat([torch.ones(1, device=x1.device), m1])
        return -(w * F.logsigmoid(z * logits)).sum()

    grads, losses = vmap(grad_and_value(single), in_dims=(None, 0, 0, 0, 0), randomness="different")(
        params, x, text, y, m)
    norms = torch.sqrt(sum(g.reshape(g.shape[0], -1).pow(2).sum(1) for g in grads.values()))
    factor = (max_grad_norm / (norms + 1e-6)).clamp(max=1.0)
    return {k: torch.einsum("b,b...->...", factor, g) for k, g in grads.items()}, losses.detach(), norms.detach()
