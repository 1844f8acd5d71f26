"""DP-SGD for the CT vision-language model: exact per-volume gradients (``torch.func.vmap``) of a loss each volume
owns, clipped, summed, noised (shared_models.privacy) and applied with AdamW.

The in-batch SigLIP of ordinary training makes one volume's loss depend on other patients' reports, so its
per-sample gradient would not bound one patient's influence. Under DP each volume's loss uses public text as its
negatives (as the zero-shot radiograph head does, shared_models/zeroshot/dp.py): its own report (z = +1) and the
positive prompt of every annotated class (z = +1 where the report says present, -1 where absent), plus its prompt
disease loss and the localisation loss of its own snippets (padded to the batch's most, masked).
"""

from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad_and_value, vmap

from client.ct.training import CTTrainConfig, SiteTensors
from shared_models.ct.losses import depth_targets, localisation_logits, pos_weights, prompt_disease_loss
from shared_models.ct.model import CTVLM, feature_valid, grid_to_feature
from shared_models.messages import TRAIN_SECONDS
from shared_models.privacy import DPSettings, dp_schedule, privatise
from shared_models.privacy.randomness import SecureStream, secure_global_rng, secure_poisson_batches


class _VolumeLoss(nn.Module):
    """One volume's loss as a module call, so ``functional_call`` can swap in the parameters vmap differentiates."""

    def __init__(self, model: CTVLM, prompts: tuple[torch.Tensor, torch.Tensor], weights: torch.Tensor,
                 cfg: CTTrainConfig) -> None:
        super().__init__()
        self.model, self.cfg = model, cfg
        self.pos, self.neg = prompts[0].mean(0), prompts[1].mean(0)  # (C, 384): the prompt variants' mean
        self.weights = weights

    def forward(self, x, report, y, m, snippets, targets, smask, valid):
        model = self.model
        v, slices = model.encode_volume(x[None])
        text = model.encode_text(torch.cat([report[None], self.pos]))
        logits = model.t.exp() * (F.normalize(v, dim=-1) @ F.normalize(text, dim=-1).T)[0] + model.b
        z = torch.cat([torch.ones(1), 2 * y - 1])
        w = torch.cat([torch.ones(1), m])
        siglip = -(w * F.logsigmoid(z * logits)).sum()
        disease = prompt_disease_loss(v, text[1:], model.encode_text(self.neg), model.t, y[None], m[None],
                                      self.weights)
        s = snippets.shape[0]
        fv = valid[None].expand(s, -1)
        loc_logits = localisation_logits(slices.expand(s, -1, -1), model.encode_text(snippets), fv)
        logp = torch.log_softmax(loc_logits, dim=1).masked_fill(~fv, 0.0)
        per = -(depth_targets(targets, fv) * logp).sum(1)
        loc = (per * smask).sum() / smask.sum().clamp(min=1.0)
        return siglip + self.cfg.disease_weight * disease + self.cfg.loc_weight * loc


def _snippet_batch(data: SiteTensors, idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(B, S, 384) snippet embeddings, (B, S) encoder depth targets and (B, S) masks, S the batch's most."""
    rows = [[s for s, i in enumerate(data.snippet_of) if i == j] for j in idx]
    most = max(1, max(len(r) for r in rows))
    emb = torch.zeros(len(idx), most, data.snippet.shape[1] if data.snippet.numel() else 384)
    target = torch.zeros(len(idx), most, dtype=torch.long)
    mask = torch.zeros(len(idx), most)
    for b, r in enumerate(rows):
        for k, s in enumerate(r):
            emb[b, k] = data.snippet[s]
            target[b, k] = grid_to_feature(int(data.snippet_pos[s]))
            mask[b, k] = 1.0
    return emb, target, mask


def train_ct_dp(model: CTVLM, data: SiteTensors, prompts, cfg: CTTrainConfig, dp: DPSettings, public_size: int,
                positives: torch.Tensor, annotated: torch.Tensor) -> dict[str, float]:
    """``cfg.epochs`` x ceil(N / batch) DP-SGD steps at sample rate batch / N (Poisson batches), N the released
    ``public_size``; the disease loss's positive weights from released ``positives`` / ``annotated`` counts (the
    site's exact counts would make every volume's loss depend on every other's labels)."""
    n = int(data.x.shape[0])
    rate, steps = dp_schedule(public_size, cfg.batch_size, cfg.epochs)
    pos, ann = positives, annotated
    loss_module = _VolumeLoss(model, prompts, pos_weights(pos, ann), cfg)
    params = {k: v for k, v in loss_module.named_parameters() if v.requires_grad}
    opt = torch.optim.AdamW(params.values(), lr=cfg.lr, weight_decay=1e-4, betas=(0.9, 0.95))
    fv = feature_valid(data.valid)

    def single(p, *sample):
        return functional_call(loss_module, p, sample)

    per_sample = vmap(grad_and_value(single), in_dims=(None, 0, 0, 0, 0, 0, 0, 0, 0))
    model.train()
    total, seen, clipped, t0 = 0.0, 0, 0, time.perf_counter()
    stream = SecureStream()  # noise and sampling: OS CSPRNG re-seeded every step, never the run's seed
    with secure_global_rng():
        for idx in secure_poisson_batches(n, rate, steps, stream):
            if len(idx):
                t = torch.from_numpy(idx)
                snip, target, smask = _snippet_batch(data, idx)
                detached = {k: v.detach() for k, v in params.items()}
                grads, losses = per_sample(detached, data.x[t], data.report[t], data.targets[t], data.mask[t], snip,
                                           target, smask, fv[t])
                norms = torch.sqrt(sum(g.reshape(g.shape[0], -1).pow(2).sum(1) for g in grads.values()))
                factor = (dp.max_grad_norm / (norms + 1e-6)).clamp(max=1.0)
                summed = {k: torch.einsum("b,b...->...", factor, g) for k, g in grads.items()}
                total += float(losses.sum())
                seen += len(idx)
                clipped += int((norms > dp.max_grad_norm).sum())
            else:  # an empty Poisson batch still takes a (pure-noise) step
                summed = {k: torch.zeros_like(v) for k, v in params.items()}
            for k, g in privatise(summed, dp, expected_batch=rate * public_size, generator=stream.torch).items():
                params[k].grad = g
            opt.step()
            opt.zero_grad(set_to_none=True)
    mean = total / max(seen, 1)
    return {"ct_total_loss": mean, "ct_steps": steps, "clipped_fraction": clipped / max(seen, 1),
            TRAIN_SECONDS: time.perf_counter() - t0}
