"""Shared fixtures: tiny synthetic sites built on the fly, and the real sample files when present."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
REAL_DATA = Path(os.environ.get("FEDCHEST_REAL_DATA", REPO.parent / "shared" / "data" / "real"))

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def real_data() -> Path:
    if not REAL_DATA.is_dir():
        pytest.skip(f"real sample files not found at {REAL_DATA} (set FEDCHEST_REAL_DATA to their folder)")
    return REAL_DATA


@pytest.fixture(scope="session")
def synth_sites(tmp_path_factory) -> dict[str, Path]:
    """One small synthetic site per format (80 images, 32 px), written once per test session."""
    from client.synth import synthesize_site

    root = tmp_path_factory.mktemp("sites")
    return {fmt: synthesize_site(root / fmt, fmt, f"site-{fmt}", n_images=80, image_size=32, seed=1)
            for fmt in ("padchest", "mimic", "openi", "dicom")}
