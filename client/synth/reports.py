"""Report text that describes findings with the same attribute words as their visual signatures."""

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


def finding_sentence(spec: ClassSpec) -> str:
    return f"{describe(spec)}, consistent with {spec.name.lower()}."


def write_report(findings: list[ClassSpec], rng: np.random.Generator) -> dict[str, str]:
    """FINDINGS / IMPRESSION / INDICATION / COMPARISON sections in English."""
    indication = str(rng.choice(["Cough.", "Shortness of breath.", "Chest pain.", "Preoperative evaluation.", "Fever."]))
    comparison = str(rng.choice(["None.", "Prior radiograph XXXX.", "None available."]))
    if not findings:
        return {
            "FINDINGS": str(rng.choice(NORMAL_FINDINGS)),
            "IMPRESSION": str(rng.choice(NORMAL_IMPRESSIONS)),
            "INDICATION": indication,
            "COMPARISON": comparison,
        }
    order = rng.permutation(len(findings))
    body = " ".join(finding_sentence(findings[i]) for i in order)
    impression = "; ".join(findings[i].name.capitalize() for i in order) + "."
    return {"FINDINGS": body, "IMPRESSION": impression, "INDICATION": indication, "COMPARISON": comparison}
