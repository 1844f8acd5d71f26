"""Planted-PHI scanning shared by the privacy tests."""

from __future__ import annotations

import re


def leaked(values: set[str], blobs: list[bytes]) -> list[str]:
    """Planted values found in any blob as whole tokens: a numeric identifier must not sit inside a longer run
    of digits (a float's mantissa or torch's 40-digit serialization id can contain any 8 digits by chance)."""
    hits = []
    for v in sorted(values):
        pattern = re.compile(rb"(?<![0-9])" + re.escape(v.encode()) + rb"(?![0-9])")
        if any(pattern.search(b) for b in blobs):
            hits.append(v)
    return hits
