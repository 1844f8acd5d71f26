"""The zero-shot branch at a site: the texts it trains on (reports, else sentences built from its labels), the
frozen MiniLM encoder run locally with an on-disk cache of sentence embeddings, the contrastive term of the local
objective, and zero-shot scoring with three prompt sets for evaluation. Texts and their embeddings never leave the
site; only the trainable head (``zeroshot.*`` of the model) travels."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from client.index import SiteData
from shared_models.messages import NUM_EXAMPLES
from shared_models.ontology import LabelSet
from shared_models.zeroshot import (TemplatePromptGenerator, class_embeddings, clip_loss, load_prompt_bank,
                                    siglip_loss, zero_shot_probabilities)
from shared_models.zeroshot.model import DualBranch
from shared_models.zeroshot.scoring import SCORE_HISTOGRAM

PROMPT_SETS = ("descriptive", "template", "random")
NO_FINDING = "No acute cardiopulmonary abnormality."


@lru_cache(maxsize=1)
def text_encoder():
    from shared_models.zeroshot.text_encoder import MiniLMTextEncoder

    return MiniLMTextEncoder().eval()


class SentenceCache:
    """Frozen sentence embeddings by SHA-256 of the sentence, kept in the site's work dir (never sent)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.table: dict[str, np.ndarray] = {}
        if path.exists():
            with np.load(path) as z:
                self.table = {k: z[k] for k in z.files}

    def encode(self, sentences: list[str], batch: int = 64) -> np.ndarray:
        keys = [hashlib.sha256(s.encode()).hexdigest() for s in sentences]
        todo = list(dict.fromkeys(s for s, k in zip(sentences, keys) if k not in self.table))
        if todo:
            enc = text_encoder()
            with torch.no_grad():
                vecs = torch.cat([enc(todo[i:i + batch]) for i in range(0, len(todo), batch)]).numpy()
            for s, v in zip(todo, vecs):
                self.table[hashlib.sha256(s.encode()).hexdigest()] = v.astype(np.float32)
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(".tmp.npz")
            np.savez(tmp, **self.table)
            tmp.replace(self.path)
        return np.stack([self.table[k] for k in keys]) if keys else np.zeros((0, 384), np.float32)


def sentence_cache(work_dir: Path) -> SentenceCache:
    return SentenceCache(work_dir / "zeroshot" / "minilm-sentences.npz")


def label_sentence(targets: np.ndarray, mask: np.ndarray, names: tuple[str, ...], hidden: set[int]) -> str:
    """A report-like sentence from one image's annotated positive seen labels (hidden classes left out)."""
    found = _label_names(targets, mask, names, hidden)
    if not found:
        return NO_FINDING
    listed = found[0] if len(found) == 1 else ", ".join(found[:-1]) + " and " + found[-1]
    return f"Chest radiograph showing {listed.lower()}."


def _label_names(targets: np.ndarray, mask: np.ndarray, names: tuple[str, ...], hidden: set[int]) -> list[str]:
    found = [names[j] for j in np.flatnonzero((targets > 0.5) & (mask > 0)) if j < len(names) and j not in hidden]
    return [n for n in found if n.lower() != "normal"]


def split_sentences(text: str) -> list[str]:
    """A report's sentences (and the clauses of a ';'-separated impression), stripped, empty ones dropped."""
    return [s.strip() for s in re.split(r"(?<=[.;!?])\s+", text) if s.strip(" .;")]


TEXT_UNITS = ("sentence", "report")


def training_texts(data: SiteData, label_set: LabelSet, hidden: set[int], unit: str = "report") -> list[list[str]]:
    """Per image, its texts: its report where the source has one, else sentences from its labels. ``unit``:
    ``report`` keeps one text per image; ``sentence`` splits reports into sentences and gives one sentence per
    positive label, each a positive of the image in the contrastive loss."""
    if unit not in TEXT_UNITS:
        raise ValueError(f"zeroshot-text-unit {unit!r}; expected one of {TEXT_UNITS}")
    reports = data.reports or ("",) * len(data)
    out = []
    for i, r in enumerate(reports):
        r = r.strip()
        if unit == "report":
            out.append([r or label_sentence(data.targets[i], data.mask[i], label_set.seen, hidden)])
        elif r:
            out.append(split_sentences(r) or [r])
        else:
            names = _label_names(data.targets[i], data.mask[i], label_set.seen, hidden)
            out.append([f"Chest radiograph showing {n.lower()}." for n in names] or [NO_FINDING])
    return out


@dataclass
class TrainingTexts:
    """An image's texts as rows of a table of distinct texts with their frozen embeddings."""

    table: torch.Tensor  # (M, 384) frozen embeddings of the site's distinct texts
    owners: list[np.ndarray]  # per image, the rows of ``table`` that are its texts
    features: torch.Tensor  # (N, 384) per image, the mean of its texts' embeddings (DP's own-text term)
    from_reports: int  # how many images had a report (the rest: sentences from labels)

    def batch(self, idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """The distinct texts of a batch (K, 384) and which image each belongs to, (B, K) booleans (identical
        texts of several images are one column, positive for each)."""
        rows = [self.owners[i] for i in idx]
        flat = np.concatenate(rows)
        uniq, inv = np.unique(flat, return_inverse=True)
        member = np.zeros((len(idx), len(uniq)), bool)
        member[np.repeat(np.arange(len(idx)), [len(r) for r in rows]), inv] = True
        return self.table[torch.from_numpy(uniq)], torch.from_numpy(member)


def training_text_features(data: SiteData, work_dir: Path, label_set: LabelSet, hidden: set[int],
                           unit: str = "report") -> TrainingTexts:
    texts = training_texts(data, label_set, hidden, unit)
    distinct = list(dict.fromkeys(t for ts in texts for t in ts))
    row = {t: j for j, t in enumerate(distinct)}
    table = torch.from_numpy(sentence_cache(work_dir).encode(distinct))
    owners = [np.array([row[t] for t in ts], dtype=np.int64) for ts in texts]
    features = torch.stack([table[torch.from_numpy(o)].mean(0) for o in owners]) if owners else table[:0]
    return TrainingTexts(table, owners, features, sum(bool(r.strip()) for r in (data.reports or ())))


def contrastive_term(model: DualBranch, image_emb: torch.Tensor, text_features: torch.Tensor,
                     positives: torch.Tensor) -> torch.Tensor:
    """CLIP or SigLIP between a batch's images (B, D) and its distinct texts (K, 384), ``positives`` (B, K)
    saying which text belongs to which image. In-batch negatives are this site's only."""
    head = model.zeroshot
    text = head.embed_text(text_features)
    if head.loss == "siglip":
        return siglip_loss(image_emb, text, head.logit_scale, head.logit_bias, positives)
    return clip_loss(image_emb, text, head.logit_scale, positives)


def _random_class_embeddings(classes: tuple[str, ...], dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Chance reference: per class, positive and negative 'prompt' embeddings drawn at random in the joint space
    (seeded by the class name, so every site draws the same)."""
    pos, neg = [], []
    for c in classes:
        g = torch.Generator().manual_seed(int(hashlib.sha256(c.encode()).hexdigest()[:8], 16))
        pos.append(torch.randn(dim, generator=g))
        neg.append(torch.randn(dim, generator=g))
    return torch.stack(pos), torch.stack(neg)


@torch.no_grad()
def prompt_class_embeddings(model: DualBranch, classes: tuple[str, ...], prompt_set: str, label_set: str,
                            cache: SentenceCache) -> tuple[torch.Tensor, torch.Tensor]:
    """(C, D) positive and negative class embeddings in the joint space for one prompt set."""
    head = model.zeroshot
    if prompt_set == "random":
        return _random_class_embeddings(classes, head.text_proj.out_features)
    if prompt_set not in PROMPT_SETS:
        raise ValueError(f"prompt set {prompt_set!r}; expected one of {PROMPT_SETS}")
    gen = load_prompt_bank(label_set) if prompt_set == "descriptive" else TemplatePromptGenerator()
    pos, neg = [], []
    for c in classes:
        p, n = gen.prompts(c)
        pos.append(head.embed_text(torch.from_numpy(cache.encode(p))))
        neg.append(head.embed_text(torch.from_numpy(cache.encode(n))))
    return class_embeddings(pos), class_embeddings(neg)


def zero_shot_scores(model: DualBranch, image_emb: torch.Tensor, classes: tuple[str, ...], prompt_set: str,
                     label_set: str, cache: SentenceCache) -> np.ndarray:
    """CheXzero positive-vs-negative probabilities (N, C) for ``classes`` under one prompt set."""
    if not classes:
        return np.zeros((len(image_emb), 0), np.float32)
    pos, neg = prompt_class_embeddings(model, classes, prompt_set, label_set, cache)
    return zero_shot_probabilities(F.normalize(image_emb, dim=-1), pos, neg).numpy()


def seen_prompt_features(label_set: LabelSet, work_dir: Path) -> torch.Tensor:
    """(C_seen, 384): per seen class, the mean frozen embedding of its descriptive positive prompts (public text:
    the per-sample negatives of the zero-shot head under DP)."""
    bank, cache = load_prompt_bank(label_set.name), sentence_cache(work_dir)
    return torch.stack([torch.from_numpy(cache.encode(bank.prompts(c)[0]).mean(0)) for c in label_set.seen])


def zero_shot_evaluation(model: DualBranch, data: SiteData, label_set: LabelSet, spec, site,
                         validation: SiteData | None = None) -> tuple[np.ndarray, np.ndarray | None, dict]:
    """Seen-class probabilities (fused with the zero-shot branch when ``spec.fusion`` > 0), router guesses, and
    the zero-shot summaries: ``zs.<prompt set>.*`` for the held-out classes under each prompt set on ``data``
    (the evaluation split) and ``zs.proxy.*`` for the proxy classes (descriptive prompts) on ``validation`` (model
    selection never looks at the test images), in client/evaluation.py's form (histograms per projection scope in
    ``SCORE_HISTOGRAM``'s bins, small counts withheld under the site's min_count)."""
    from client.evaluation import evaluation_summary
    from client.training import predict_dual
    from shared_models.device import select_device

    probs, routes, emb = predict_dual(model, data, select_device())
    cache = sentence_cache(site.work_dir)
    extra: dict = {}

    def summary(name: str, split: SiteData, image_emb, classes: tuple[str, ...], cols, prompt_set: str) -> None:
        scores = zero_shot_scores(model, image_emb, classes, prompt_set, label_set.name, cache)
        part = evaluation_summary(scores, split.targets[:, cols], split.mask[:, cols], split.projection,
                                  SCORE_HISTOGRAM, site.privacy.min_count)
        extra.update({f"zs.{name}.{k}": v for k, v in part.items() if k != NUM_EXAMPLES})

    for prompt_set in PROMPT_SETS:
        summary(prompt_set, data, emb, label_set.zeroshot, slice(label_set.num_seen, None), prompt_set)
    if spec.proxy_classes:
        split = validation if validation is not None else SiteData(
            data.pixels[:0], data.projection[:0], data.targets[:0], data.mask[:0])
        val_emb = predict_dual(model, split, select_device())[2]
        summary("proxy", split, val_emb, spec.proxy_classes, spec.proxy_indices(label_set), "descriptive")
    if spec.fusion > 0:
        seen = zero_shot_scores(model, emb, label_set.seen, "descriptive", label_set.name, cache)
        probs = (1 - spec.fusion) * probs + spec.fusion * seen
    return probs, routes, extra
