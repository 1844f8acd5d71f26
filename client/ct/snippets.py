"""Report sentences that point at a slice ("... nodule in the right upper lobe (series 3, image 45).") become
localisation targets: the sentence without its reference, and the image number it names. RadFinder mined 262k
such pairs; the image number becomes an axial depth on the model's grid (``client.ct.volume.DepthMap``)."""

from __future__ import annotations

import re
from dataclasses import dataclass

REFERENCE = re.compile(
    r"[,;]?\s*\(?\s*(?:\b(?:see|on|at)\s+)?\b(?:series|ser|se)\.?\s*(?:no\.?\s*)?(\d+)\s*[,;/]?\s*(?:image|img|im)\.?\s*(?:no\.?\s*)?(\d+)\s*\)?",
    re.IGNORECASE)
SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z(])")


@dataclass(frozen=True)
class Snippet:
    text: str  # the sentence with the reference taken out
    series: int
    image: int  # as the report writes it (1-based image number)


def find_snippets(report: str) -> list[Snippet]:
    """Every sentence of ``report`` with a series/image reference (the first one if it has several)."""
    out = []
    for sentence in SENTENCE.split(report or ""):
        m = REFERENCE.search(sentence)
        if not m:
            continue
        text = REFERENCE.sub("", sentence)
        text = re.sub(r"\s+([,.;])", r"\1", re.sub(r"\s{2,}", " ", text)).strip()
        if len(text) >= 3:
            out.append(Snippet(text, int(m.group(1)), int(m.group(2))))
    return out


def strip_references(report: str) -> str:
    """The report without its series/image references (what the text encoder sees for the global loss)."""
    return re.sub(r"\s+([,.;])", r"\1", re.sub(r"\s{2,}", " ", REFERENCE.sub("", report or ""))).strip()
