"""Consortium label ontology: label sets and per-source synonym maps, loaded from data files.

A sample's labels are a target vector plus a mask over the label set's classes (seen classes first,
then zero-shot classes): mask 1 = the source annotated this class for this sample, 0 = unknown.
Losses and metrics ignore masked entries.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from importlib import resources

import numpy as np

PROJECTIONS: tuple[str, ...] = ("PA", "AP", "LAT")  # the views a radiograph is routed by (one expert each)

DEFAULT_LABEL_SET = "cxrlt2026"
_DATA = resources.files("shared_models.ontology") / "data"


def normalise_term(term: str) -> str:
    """Case-folded, whitespace-collapsed form used for every label look-up."""
    return " ".join(str(term).strip().split()).casefold()


@dataclass(frozen=True)
class LabelSet:
    name: str
    description: str
    seen: tuple[str, ...]
    zeroshot: tuple[str, ...]

    @property
    def classes(self) -> tuple[str, ...]:
        """All classes: seen (trained) first, then held-out zero-shot classes."""
        return self.seen + self.zeroshot

    @property
    def num_seen(self) -> int:
        return len(self.seen)

    def __len__(self) -> int:
        return len(self.classes)

    def index(self, name: str) -> int:
        key = normalise_term(name)
        for i, c in enumerate(self.classes):
            if normalise_term(c) == key:
                return i
        raise KeyError(f"class {name!r} is not in label set {self.name!r}")


@dataclass(frozen=True)
class SourceMap:
    """Maps one source's label vocabulary into one label set."""

    source: str
    label_set: LabelSet
    terms: dict[str, tuple[int, ...]] = field(default_factory=dict)  # normalised term -> class indices
    spelling: dict[str, str] = field(default_factory=dict)  # normalised term -> the map file's spelling

    @cached_property
    def annotated(self) -> np.ndarray:
        """Boolean mask over the label set: classes this source can express at all (read-only)."""
        m = np.zeros(len(self.label_set), dtype=bool)
        for idx in self.terms.values():
            m[list(idx)] = True
        m.flags.writeable = False
        return m

    def terms_for(self, class_index: int) -> list[str]:
        """Source terms (as spelled in the map file) that express a class, in file order."""
        return [self.spelling[t] for t, idx in self.terms.items() if class_index in idx]

    def lookup(self, term: str) -> tuple[int, ...] | None:
        """Class indices for a source term; ``()`` for a known but deliberately unmapped term; None if unknown."""
        return self.terms.get(normalise_term(term))

    def encode(
        self, positives: list[str], negatives: list[str] | None = None, uncertain: list[str] | None = None
    ) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """Targets, mask and the unmapped terms for one sample.

        Every class the source can express is annotated (mask 1) and negative unless named positive;
        ``uncertain`` terms are masked out (unknown). ``negatives`` only matter for sources that annotate
        per-class explicitly; they are accepted for symmetry and checked for unknown terms.
        """
        n = len(self.label_set)
        target = np.zeros(n, dtype=np.float32)
        mask = self.annotated.astype(np.float32)
        unmapped: list[str] = []
        for term in positives:
            idx = self.lookup(term)
            if idx is None:
                unmapped.append(term)
            elif idx:
                target[list(idx)] = 1.0
        for term in uncertain or []:
            idx = self.lookup(term)
            if idx is None:
                unmapped.append(term)
            elif idx:
                sel = [i for i in idx if target[i] == 0.0]
                mask[sel] = 0.0
        for term in negatives or []:
            if self.lookup(term) is None:
                unmapped.append(term)
        return target, mask, unmapped


@lru_cache(maxsize=None)
def load_label_set(name: str = DEFAULT_LABEL_SET) -> LabelSet:
    try:
        text = (_DATA / f"{name}.toml").read_text(encoding="utf-8")
    except FileNotFoundError:
        raise KeyError(f"unknown label set {name!r}; available: {', '.join(available_label_sets())}") from None
    raw = tomllib.loads(text)
    ls = LabelSet(raw["name"], raw.get("description", ""), tuple(raw["seen"]), tuple(raw.get("zeroshot", [])))
    if len({normalise_term(c) for c in ls.classes}) != len(ls.classes):
        raise ValueError(f"label set {name!r} lists a class twice")
    return ls


def available_label_sets() -> list[str]:
    return sorted(p.name[:-5] for p in _DATA.iterdir() if p.name.endswith(".toml"))


def available_sources() -> list[str]:
    return sorted(p.name[:-5] for p in (_DATA / "sources").iterdir() if p.name.endswith(".toml"))


@lru_cache(maxsize=None)
def load_source_map(source: str, label_set: str = DEFAULT_LABEL_SET) -> SourceMap:
    try:
        text = (_DATA / "sources" / f"{source}.toml").read_text(encoding="utf-8")
    except FileNotFoundError:
        raise KeyError(f"no synonym map for source {source!r}; available: {', '.join(available_sources())}") from None
    raw = tomllib.loads(text)
    ls = load_label_set(label_set)
    table = raw.get("to", {}).get(label_set)
    if table is None:
        raise KeyError(f"synonym map {source!r} has no table [to.{label_set}]")
    terms: dict[str, tuple[int, ...]] = {}
    spelling: dict[str, str] = {}
    for term, classes in table.items():
        spelling[normalise_term(term)] = term
        try:
            terms[normalise_term(term)] = tuple(ls.index(c) for c in classes)
        except KeyError as exc:
            raise ValueError(f"synonym map {source!r}, term {term!r}: {exc.args[0]}") from None
    return SourceMap(source=source, label_set=ls, terms=terms, spelling=spelling)
