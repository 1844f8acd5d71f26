"""Report text that describes findings with the same attribute words as their visual signatures.

Held-out (zero-shot) classes are described but never named: the radiologist reports what is seen ("a large
ring-shaped lucency at the apex") without the diagnosis, so no training text carries a held-out class name
(zero-shot evaluation then tests the prompts, not a leaked label)."""

from __future__ import annotations

import numpy as np

from client.synth.catalog import ClassSpec

_DENSITY_NOUN = {"dense": "opacity", "lucent": "lucency", "calcified": "calcified density"}
_SHAPE_ADJ = {
    "round": "round", "ring": "ring-shaped", "linear": "linear", "wedge": "wedge-shaped",
    "reticular": "reticular", "tubular": "tubular", "crescent": "crescentic", "cluster": "clustered",
}
_ZONE_PHRASE = {
    "lung": "in the lung", "upper lung": "in the upper lung zone", "lower lung": "in the lower lung zone",
    "right upper": "in the right upper zone", "right lower": "in the right lower zone",
    "left upper": "in the left upper zone", "left lower": "in the left lower zone", "apex": "at the apex",
    "base": "at the base", "mediastinum": "in the mediastinum", "hilum": "at the hilum",
    "spine": "along the spine", "periphery": "at the chest wall periphery",
    "subdiaphragm": "under the diaphragm", "soft tissue": "in the soft tissues", "neck": "at the thoracic inlet",
}
NORMAL_FINDINGS = (
    "The lungs are clear. Heart size is normal. No pleural effusion or pneumothorax.",
    "No focal consolidation. Cardiomediastinal silhouette is within normal limits.",
    "Clear lungs bilaterally. No acute osseous abnormality.",
)
NORMAL_IMPRESSIONS = ("No acute cardiopulmonary abnormality.", "Normal chest radiograph.", "No active disease.")


def describe(spec: ClassSpec) -> str:
    """One sentence naming the attributes, e.g. 'A small round dense opacity in the right upper zone'."""
    noun = _DENSITY_NOUN[spec.density]
    density = "" if spec.density == "calcified" else f"{spec.density} "
    return f"A {spec.size} {_SHAPE_ADJ[spec.shape]} {density}{noun} {_ZONE_PHRASE[spec.zone]}"


def finding_sentence(spec: ClassSpec, named: bool = True) -> str:
    return f"{describe(spec)}, consistent with {spec.name.lower()}." if named else f"{describe(spec)}."


def _impression(spec: ClassSpec, named: bool) -> str:
    return spec.name.capitalize() if named else f"{describe(spec)[2:].capitalize()}, of uncertain significance"


def write_report(findings: list[ClassSpec], rng: np.random.Generator,
                 held_out: frozenset[str] = frozenset()) -> dict[str, str]:
    """FINDINGS / IMPRESSION / INDICATION / COMPARISON sections in English; ``held_out`` classes unnamed."""
    indication = str(rng.choice(["Cough.", "Shortness of breath.", "Chest pain.",
                                 "Preoperative evaluation.", "Fever."]))
    comparison = str(rng.choice(["None.", "Prior radiograph XXXX.", "None available."]))
    if not findings:
        return {
            "FINDINGS": str(rng.choice(NORMAL_FINDINGS)),
            "IMPRESSION": str(rng.choice(NORMAL_IMPRESSIONS)),
            "INDICATION": indication,
            "COMPARISON": comparison,
        }
    order = rng.permutation(len(findings))
    named = [findings[i].name not in held_out for i in range(len(findings))]
    body = " ".join(finding_sentence(findings[i], named[i]) for i in order)
    impression = "; ".join(_impression(findings[i], named[i]) for i in order) + "."
    return {"FINDINGS": body, "IMPRESSION": impression, "INDICATION": indication, "COMPARISON": comparison}
