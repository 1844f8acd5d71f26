"""Site-local case retrieval on boxes: an index of training boxes with a local case id and the case's report
sentences. The index lives in the site's work dir and never leaves the site."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

MODES = ("overlap", "centre")


@dataclass
class CaseIndex:
    centres: np.ndarray  # (N, d)
    radii: np.ndarray  # (N, d)
    case_ids: list[str]  # local to the site (row numbers or salted ids), never patient identifiers
    texts: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.centres.shape != self.radii.shape or len(self.case_ids) != len(self.centres):
            raise ValueError("case index: centres, radii and case ids must describe the same number of cases")

    def query(self, centre: np.ndarray, radius: np.ndarray, k: int = 3, mode: str = "overlap"
              ) -> list[tuple[str, float]]:
        """The k most similar cases as (case id, score), best first. ``overlap``: mean over dimensions of the
        log of the overlap length (+1e-6) of the two boxes, higher is better; ``centre``: negative L2 distance
        between centres."""
        if mode not in MODES:
            raise ValueError(f"retrieval mode {mode!r}; expected one of {MODES}")
        if mode == "centre":
            score = -np.linalg.norm(self.centres - centre[None], axis=1)
        else:
            lo = np.maximum(self.centres - self.radii, (centre - radius)[None])
            hi = np.minimum(self.centres + self.radii, (centre + radius)[None])
            score = np.log(np.clip(hi - lo, 0, None) + 1e-6).mean(1)
        order = np.argsort(-score, kind="stable")[:k]
        return [(self.case_ids[i], float(score[i])) for i in order]

    def save(self, folder: Path) -> None:
        """``boxes.npz`` (arrays) and ``cases.json`` (ids and texts) in ``folder``; no pickle."""
        folder.mkdir(parents=True, exist_ok=True)
        np.savez(folder / "boxes.npz", centres=self.centres, radii=self.radii)
        (folder / "cases.json").write_text(json.dumps({"case_ids": self.case_ids, "texts": self.texts}))

    @classmethod
    def load(cls, folder: Path) -> "CaseIndex":
        meta = json.loads((folder / "cases.json").read_text())
        with np.load(folder / "boxes.npz") as z:
            return cls(z["centres"], z["radii"], list(meta["case_ids"]), list(meta["texts"]))
