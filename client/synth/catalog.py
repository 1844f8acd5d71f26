"""The synthetic class catalogue (classes.toml): prevalences with provenance, visual signatures, co-occurrence."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources

from shared_models.ontology import load_label_set

SHAPES = ("round", "ring", "linear", "wedge", "reticular", "tubular", "crescent", "cluster")
SIZES = ("small", "medium", "large")
DENSITIES = ("dense", "lucent", "calcified")
ZONES = (
    "right upper", "right lower", "left upper", "left lower", "upper lung", "lower lung", "lung", "apex",
    "base", "mediastinum", "hilum", "spine", "periphery", "subdiaphragm", "soft tissue", "neck",
)


@dataclass(frozen=True)
class ClassSpec:
    name: str
    prevalence: float
    source: str
    shape: str
    size: str
    density: str
    zone: str
    factors: dict[str, float] = field(default_factory=dict)
    implies: tuple[str, ...] = ()

    @property
    def signature(self) -> tuple[str, str, str, str]:
        return (self.shape, self.size, self.density, self.zone)


@dataclass(frozen=True)
class Catalog:
    label_set: str
    normal: str
    findings: tuple[ClassSpec, ...]  # every class except the derived normal class
    held_out: frozenset[str] = frozenset()  # the label set's zero-shot classes: reports never name them

    def by_name(self, name: str) -> ClassSpec:
        for c in self.findings:
            if c.name == name:
                return c
        raise KeyError(name)


@lru_cache(maxsize=None)
def load_catalog(label_set: str = "cxrlt2026") -> Catalog:
    raw = tomllib.loads(resources.files("client.synth").joinpath("classes.toml").read_text("utf-8"))["classes"]
    ls = load_label_set(label_set)
    missing = set(ls.classes) - set(raw)
    if missing:
        raise ValueError(f"client/synth/classes.toml lacks label-set classes {sorted(missing)}")
    normal = [n for n, c in raw.items() if "derived" in c]
    findings = []
    for name in ls.classes:
        c = raw[name]
        if "derived" in c:
            continue
        sig = c["signature"]
        for key, allowed in (("shape", SHAPES), ("size", SIZES), ("density", DENSITIES), ("zone", ZONES)):
            if sig[key] not in allowed:
                raise ValueError(f"classes.toml, class {name!r}: {key} {sig[key]!r} not in {allowed}")
        findings.append(ClassSpec(
            name=name, prevalence=float(c["prevalence"]), source=c.get("source", ""),
            shape=sig["shape"], size=sig["size"], density=sig["density"], zone=sig["zone"],
            factors=dict(c.get("factors", {})), implies=tuple(c.get("implies", ())),
        ))
    return Catalog(label_set=label_set, normal=normal[0], findings=tuple(findings), held_out=frozenset(ls.zeroshot))
