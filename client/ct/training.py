"""Training and evaluating the CT vision-language model at a site (issue 11).

The text encoder is frozen, so every sentence the site needs (reports without their slice references, the
referenced sentences, the disease prompts) is embedded once with MiniLM and kept in the work dir; a step then runs
the 3D encoder and the small text adapter only. Loss = SigLIP(volume, report) + ``disease_weight`` x the prompt
disease loss + ``loc_weight`` x the snippet localisation loss (RadFinder's loss; the weights are ours: RadFinder's
0.5 / 0.004 were set for its own loss scales, ours are stated in the run config).
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from client.ct.index import CTIndex, CTVolume
from client.ct.snippets import strip_references
from shared_models.ct.losses import localisation_logits, localisation_loss, pos_weights, prompt_disease_loss
from shared_models.ct.metrics import localisation_mae_mm, per_class_youden, recall_at_k
from shared_models.ct.model import CTVLM, feature_valid, grid_to_feature
from shared_models.messages import TRAIN_SECONDS
from shared_models.zeroshot.losses import siglip_loss

PROMPTS = (("{a}.", "No {a}."), ("There is {a}.", "There is no {a}."), ("{a} is present.", "{a} is not present."))


@dataclass(frozen=True)
class CTTrainConfig:
    epochs: int = 1
    lr: float = 1e-3
    batch_size: int = 8
    disease_weight: float = 1.0
    loc_weight: float = 1.0
    seed: int = 0


class SentenceBank:
    """MiniLM embeddings of a site's sentences, computed once and cached in ``folder`` by text hash."""

    def __init__(self, folder: Path, encoder=None) -> None:
        self.folder, self._encoder, self.cache = Path(folder), encoder, {}

    def _path(self, text: str) -> str:
        return hashlib.sha256(text.encode()).hexdigest()[:24]

    def embed(self, texts: list[str]) -> torch.Tensor:
        store = self.folder / "sentences.npz"
        if not self.cache and store.exists():
            with np.load(store) as z:
                self.cache = {k: z[k] for k in z.files}
        todo = sorted({t for t in texts if self._path(t) not in self.cache})
        if todo:
            if self._encoder is None:
                from shared_models.zeroshot.text_encoder import MiniLMTextEncoder

                self._encoder = MiniLMTextEncoder()
            with torch.no_grad():
                for i in range(0, len(todo), 64):
                    emb = self._encoder(todo[i:i + 64]).numpy()
                    self.cache.update({self._path(t): e for t, e in zip(todo[i:i + 64], emb)})
            self.folder.mkdir(parents=True, exist_ok=True)
            np.savez(store, **self.cache)
        return torch.from_numpy(np.stack([self.cache[self._path(t)] for t in texts])).float()


@dataclass
class SiteTensors:
    x: torch.Tensor  # (N, 1, Z, Y, X)
    report: torch.Tensor  # (N, 384) frozen report embeddings
    targets: torch.Tensor  # (N, C)
    mask: torch.Tensor
    snippet_of: list[int]  # volume index of each snippet
    snippet: torch.Tensor  # (S, 384)
    snippet_pos: torch.Tensor  # (S,) grid depth positions
    valid: torch.Tensor  # (N, Z) grid slices that hold data (not padding)


def site_tensors(volumes: list[CTVolume], bank: SentenceBank) -> SiteTensors:
    reports = [strip_references(v.record.report) or "No report." for v in volumes]
    snips = [(i, text, pos) for i, v in enumerate(volumes) for text, pos in v.snippets]
    x = torch.from_numpy(np.stack([v.x for v in volumes]))[:, None]
    valid = (x[:, 0] > -0.999).flatten(2).any(-1)  # a slice of pure padding (air at -1 everywhere) is not valid
    return SiteTensors(
        x=x, report=bank.embed(reports),
        targets=torch.from_numpy(np.stack([v.record.targets for v in volumes])),
        mask=torch.from_numpy(np.stack([v.record.mask for v in volumes])),
        snippet_of=[i for i, _, _ in snips],
        snippet=bank.embed([t for _, t, _ in snips]) if snips else torch.zeros(0, 384),
        snippet_pos=torch.tensor([p for _, _, p in snips], dtype=torch.long), valid=valid)


def prompt_embeddings(classes: tuple[str, ...], bank: SentenceBank) -> tuple[torch.Tensor, torch.Tensor]:
    """(V, C, 384) positive and negative prompt embeddings, V template variants."""
    pos = torch.stack([bank.embed([p.format(a=c) for c in classes]) for p, _ in PROMPTS])
    neg = torch.stack([bank.embed([n.format(a=c) for c in classes]) for _, n in PROMPTS])
    return pos, neg


def losses(model: CTVLM, data: SiteTensors, idx: torch.Tensor, prompts: tuple[torch.Tensor, torch.Tensor],
           weights: torch.Tensor, variant: int, cfg: CTTrainConfig) -> dict[str, torch.Tensor]:
    v, slices = model.encode_volume(data.x[idx])
    out = {"siglip": siglip_loss(v, model.encode_text(data.report[idx]), model.t, model.b)}
    pos, neg = prompts
    out["disease"] = prompt_disease_loss(v, model.encode_text(pos[variant]), model.encode_text(neg[variant]), model.t,
                                         data.targets[idx], data.mask[idx], weights)
    local = {int(j): k for k, j in enumerate(idx)}
    rows = [s for s, i in enumerate(data.snippet_of) if i in local]
    if rows:
        which = torch.tensor([local[data.snippet_of[s]] for s in rows])
        fv = feature_valid(data.valid[idx])[which]
        target = torch.tensor([grid_to_feature(int(data.snippet_pos[s])) for s in rows])
        out["localisation"] = localisation_loss(slices[which], model.encode_text(data.snippet[rows]), target, fv)
    else:
        out["localisation"] = torch.zeros(())
    out["total"] = out["siglip"] + cfg.disease_weight * out["disease"] + cfg.loc_weight * out["localisation"]
    return out


def train_ct(model: CTVLM, data: SiteTensors, prompts, cfg: CTTrainConfig, train_pos: torch.Tensor,
             train_annotated: torch.Tensor, optimizer: torch.optim.Optimizer | None = None) -> dict[str, float]:
    """``cfg.epochs`` epochs over the site's training volumes; the mean of each loss over the steps."""
    g = torch.Generator().manual_seed(cfg.seed)
    opt = optimizer or torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr,
                                         weight_decay=1e-4, betas=(0.9, 0.95))
    weights = pos_weights(train_pos, train_annotated)
    model.train()
    sums: dict[str, float] = {}
    steps = 0
    t0 = time.perf_counter()
    n = data.x.shape[0]
    for _ in range(cfg.epochs):
        order = torch.randperm(n, generator=g)
        for s in range(0, n, cfg.batch_size):
            idx = order[s:s + cfg.batch_size]
            if len(idx) < 2:  # SigLIP needs a negative
                continue
            parts = losses(model, data, idx, prompts, weights, int(torch.randint(len(PROMPTS), (1,), generator=g)), cfg)
            opt.zero_grad()
            parts["total"].backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            steps += 1
            for k, val in parts.items():
                sums[k] = sums.get(k, 0.0) + float(val.detach())
    return {**{f"ct_{k}_loss": val / max(steps, 1) for k, val in sums.items()}, "ct_steps": steps,
            TRAIN_SECONDS: time.perf_counter() - t0}


@torch.no_grad()
def evaluate_ct(model: CTVLM, data: SiteTensors, prompts, grid_spacing_mm: float, batch_size: int = 8) -> dict:
    """Text-to-volume R@1/5/10 over this split's volumes, per-class prompt scores (exp(t) x the scores are the
    disease logits), the snippets' depth errors in encoder positions and, as a baseline, the errors of always
    answering the middle of the scanned range. The embeddings are returned for the site's own use only."""
    model.eval()
    parts = [model.encode_volume(data.x[i:i + batch_size]) for i in range(0, data.x.shape[0], batch_size)]
    v, slices = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
    t = model.encode_text(data.report)
    pos, neg = prompts
    vn = torch.nn.functional.normalize(v, dim=-1)
    scores = (vn @ torch.nn.functional.normalize(model.encode_text(pos.mean(0)), dim=-1).T
              - vn @ torch.nn.functional.normalize(model.encode_text(neg.mean(0)), dim=-1).T)
    out = {"recall": recall_at_k(t.numpy(), v.numpy()), "n": int(v.shape[0]), "text": t.numpy(), "volume": v.numpy(),
           "scores": scores.numpy(),
           "classes": per_class_youden(scores.numpy(), data.targets.numpy(), data.mask.numpy())}
    if len(data.snippet_of):
        which = torch.tensor(data.snippet_of)
        valid = feature_valid(data.valid)[which]
        logits = localisation_logits(slices[which], model.encode_text(data.snippet), valid)
        pred = logits.argmax(1).numpy()
        target = np.array([grid_to_feature(int(p)) for p in data.snippet_pos])
        idx = np.arange(valid.shape[1])
        centre = np.array([np.round(idx[row].mean()) if row.any() else 0 for row in valid.numpy()])
        out["loc_mae_mm"] = localisation_mae_mm(pred, target, grid_spacing_mm * 2)
        out["loc_n"] = len(pred)
        out["loc_errors"] = np.abs(pred - target)
        out["loc_centre_errors"] = np.abs(centre - target)
    return out


def site_data(index: CTIndex, split: str, bank: SentenceBank) -> SiteTensors | None:
    vols = index.split(split)
    return site_tensors(vols, bank) if vols else None
