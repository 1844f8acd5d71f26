"""The label co-occurrence graph of a run with ``label-graph = true`` (ML-GCN, shared_models/labelgraph.py): each
round the sites' co-occurrence counts (pairs of positive, annotated classes in their training splits, and the
denominators over the images where both classes are annotated; small counts suppressed at the site) are summed,
the normalised adjacency is recomputed from the sums, and it is written, with the classes' label embeddings, into
every expert's graph buffers of the new global model.
Before the first counts arrive the graph is the identity (no propagation)."""

from __future__ import annotations

import numpy as np

from shared_models.labelgraph import adjacency, normalised

A_HAT, EMBEDDINGS = ".graph.a_hat", ".graph.embeddings"


def class_embeddings(label_set) -> np.ndarray:
    """(C, 384) float32: per seen class, the mean MiniLM embedding of its descriptive prompts (public text)."""
    import torch

    from shared_models.zeroshot.prompts import load_prompt_bank
    from shared_models.zeroshot.text_encoder import MiniLMTextEncoder

    bank, encoder = load_prompt_bank(label_set.name), MiniLMTextEncoder()
    with torch.no_grad():
        return np.stack([encoder(list(bank.prompts(c)[0])).mean(0).numpy() for c in label_set.seen]).astype(np.float32)


class LabelGraph:
    def __init__(self, embeddings: np.ndarray) -> None:
        self.embeddings = np.asarray(embeddings, np.float32)
        c = len(self.embeddings)
        self.a_hat = np.eye(c, dtype=np.float32)
        self.pairs: np.ndarray | None = None  # the last round's summed counts, for the registry
        self.denominators: np.ndarray | None = None

    def update(self, pairs: np.ndarray, denominators: np.ndarray) -> None:
        """A round's summed (C, C) pair counts M and denominators D (client/cooccurrence.py) -> the new adjacency."""
        self.pairs, self.denominators = pairs, denominators
        self.a_hat = normalised(adjacency(pairs, denominators)).astype(np.float32)

    def apply(self, arrays: dict) -> dict:
        """``arrays`` (key -> array) with every graph buffer set to the current graph."""
        for k in arrays:
            if k.endswith(A_HAT):
                arrays[k] = self.a_hat.copy()
            elif k.endswith(EMBEDDINGS):
                arrays[k] = self.embeddings.copy()
        return arrays
