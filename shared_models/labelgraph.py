"""The label co-occurrence graph (ML-GCN, Chen et al. 2019) and its classifier.

Statistics: M_ij = images labelled with both i and j, D_ij = images labelled with i on which j is annotated, over
the training splits; in a federation each site counts its own and the server sums them (counts, never images). The
adjacency follows the reference code (``gen_A`` / ``gen_adj``): A = M / D (the reference's M / N where every class is
annotated), binarised at tau (0.4), re-weighted so each column's neighbours sum to p (0.25), plus the identity; then
A_hat = (A S)^T S with S = diag(A.sum(1))^-1/2.

``GraphClassifier``: two GCN layers (LeakyReLU 0.2) map label embeddings (MiniLM on class descriptions, frozen) over
A_hat to one classifier vector per class; logits = image feature . W^T (or W feeds CSRA as its class weights).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

TAU, P = 0.4, 0.25


def cooccurrence(targets: np.ndarray, mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(M, D) from (n, C) 0/1 labels. M_ij: images positive for both i and j; D_ij: images positive for i on which
    j is annotated, so M_ij / D_ij estimates P(j | i) over the same images (both classes annotated) even where sites
    annotate different classes. The diagonal of both is N_i, the positives of i. Without ``mask`` every class is
    annotated and every row of D is N_i (the reference's M / N)."""
    targets = np.asarray(targets)
    annotated = (np.ones(targets.shape) if mask is None else np.asarray(mask) > 0).astype(np.int64)
    y = (targets > 0.5).astype(np.int64) * annotated
    return y.T @ y, y.T @ annotated


def adjacency(m: np.ndarray, d: np.ndarray, tau: float = TAU, p: float = P) -> np.ndarray:
    """The reference's gen_A on counts: row-normalise, binarise at tau, column re-weight to p, add the identity.
    ``d`` is the (C, C) denominator of ``cooccurrence`` (or a (C,) vector N, every class annotated everywhere)."""
    m = np.asarray(m, np.float64).copy()
    np.fill_diagonal(m, 0.0)  # gen_A reads the pair counts (the diagonal of M is N itself)
    d = np.asarray(d, np.float64)
    a = m / np.maximum(d if d.ndim == 2 else d[:, None], 1.0)
    a = (a >= tau).astype(np.float64)
    a = a * p / (a.sum(0, keepdims=True) + 1e-6)
    return a + np.eye(len(a))


def normalised(a: np.ndarray) -> np.ndarray:
    """gen_adj: D = diag(A.sum(1)^-1/2), A_hat = (A D)^T D."""
    a = np.asarray(a, np.float64)
    d = np.diag(np.power(a.sum(1), -0.5))
    return (a @ d).T @ d


class GraphClassifier(nn.Module):
    """Label embeddings (C, E) over A_hat (C, C) -> classifier (C, D). Both inputs are buffers the server writes
    into the global model (``set_graph``): the adjacency from the sites' summed counts, the embeddings from the
    class descriptions; sites use them as they arrive, and a checkpoint carries the graph it was trained with."""

    def __init__(self, num_classes: int, embed_dim: int, out_dim: int, hidden: int = 256) -> None:
        super().__init__()
        self.w1 = nn.Parameter(torch.empty(embed_dim, hidden))
        self.w2 = nn.Parameter(torch.empty(hidden, out_dim))
        for w in (self.w1, self.w2):
            nn.init.uniform_(w, -1 / w.shape[1] ** 0.5, 1 / w.shape[1] ** 0.5)
        self.register_buffer("embeddings", torch.zeros(num_classes, embed_dim))
        self.register_buffer("a_hat", torch.eye(num_classes))

    def set_graph(self, embeddings: torch.Tensor | None = None, a_hat: np.ndarray | torch.Tensor | None = None) -> None:
        if embeddings is not None:
            self.embeddings.copy_(torch.as_tensor(embeddings, dtype=torch.float32))
        if a_hat is not None:
            self.a_hat.copy_(torch.as_tensor(np.asarray(a_hat), dtype=torch.float32))

    def forward(self) -> torch.Tensor:
        h = F.leaky_relu(self.a_hat @ (self.embeddings @ self.w1), 0.2)
        return self.a_hat @ (h @ self.w2)
