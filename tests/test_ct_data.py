"""Chest-CT data (issue 11, part 1): HU conversion and windowing, resampling, crop/pad and the depth map, both CT
sources on synthetic files in the real layouts, slice references, the decode-once cache, and the real CT slice."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from client.ct.cache import CTCache, read_record, snippet_targets
from client.ct.index import prepare_ct_site
from client.ct.readers import read_dicom_series
from client.ct.snippets import find_snippets, strip_references
from client.ct.sources import make_ct_source
from client.ct.volume import CTSpec, Volume, crop_or_pad, preprocess, resample, to_hu, window
from client.site_config import SiteConfigError, load_site_config
from client.synth.ct import BODY_HU, FINDINGS, phantom, synthesize_ct_site
from shared_models.ontology import load_label_set

SHAPE, SPACING = (20, 32, 32), (5.0, 5.0, 5.0)


@pytest.fixture(scope="module")
def ct_sites(tmp_path_factory) -> dict[str, Path]:
    """The same synthetic cases (same name and seed) written as CT-RATE and as DICOM series."""
    root = tmp_path_factory.mktemp("ct")
    return {fmt: synthesize_ct_site(root / fmt, fmt, "ct-site", n_volumes=10, shape=SHAPE, spacing=SPACING, seed=3)
            for fmt in ("ct-rate", "dicom-ct")}


def _records(toml: Path):
    cfg = load_site_config(toml)
    src = make_ct_source(cfg.sources[0], cfg.label_set)
    return cfg, src, list(src.scan())


def test_hu_and_window_formulas():
    raw = np.array([0, 24, 1024, 3048], np.int16)
    np.testing.assert_allclose(to_hu(raw, 1.0, -1024.0), [-1024, -1000, 0, 2024])
    np.testing.assert_allclose(to_hu(raw, 2.0, -1000.0), [-1000, -952, 1048, 5096])
    np.testing.assert_allclose(window(np.array([-2000.0, -1000, 0, 500, 1000, 3000])), [-1, -1, 0, 0.5, 1, 1])
    np.testing.assert_allclose(window(np.array([-160.0, 40, 240]), -160, 240), [-1, 0, 1])  # a soft-tissue window


def test_resampling_keeps_extent_and_linear_ramps():
    z = np.arange(20, dtype=np.float32)[:, None, None] * np.ones((1, 8, 6), np.float32)  # value = z index
    out, reached = resample(z, (1.5, 0.75, 0.75), (3.0, 1.5, 1.5))
    assert out.shape == (10, 4, 3) and reached == (3.0, 1.5, 1.5)
    # voxel k of the output covers input indices 2k and 2k+1: its value is their mean
    np.testing.assert_allclose(out[2:-2, 1, 1], [2 * k + 0.5 for k in range(2, 8)], atol=1e-5)
    same, _ = resample(z, (2.0, 1.0, 1.0), (2.0, 1.0, 1.0))
    assert same is z


def test_crop_or_pad_and_the_depth_map_follow_a_planted_slice():
    x = np.arange(10, dtype=np.float32)[:, None, None] * np.ones((1, 6, 6), np.float32)
    out, origin = crop_or_pad(x, (6, 8, 4), fill=-1.0)
    assert origin == (2, -1, 1) and out.shape == (6, 8, 4)
    np.testing.assert_array_equal(out[:, 1, 0], np.arange(2, 8))  # cropped in z: slices 2..7
    assert (out[:, 0, :] == -1).all() and (out[:, -1, :] == -1).all()  # padded in y with air
    hu = np.full((40, 16, 16), -1000.0, np.float32)
    hu[23] = 500.0  # one bright slice at index 23 of 40 (2 mm spacing)
    grid, depth = preprocess(Volume(hu, (2.0, 1.0, 1.0)), CTSpec((4.0, 2.0, 2.0), (16, 8, 8)))
    assert int(np.argmax(grid[:, 4, 4])) == round(depth.to_grid(23))
    assert depth.inside(23) and not depth.inside(0)  # 40 x 2 mm -> 20 positions, cropped to 16 centred


def test_phantom_plants_each_finding_where_its_report_says():
    classes = load_label_set("ctrate18").classes
    rng = np.random.default_rng(0)
    for _ in range(5):
        case = phantom((40, 64, 64), (5.0, 5.0, 5.0), rng, classes, prevalence=3.0, reference_rate=1.0)
        cited = {s.image for s in find_snippets(case.report_findings)}
        for c, z in case.depth.items():
            assert z + 1 in cited  # "(series 2, image z+1)": 1-based image numbers
            value = FINDINGS[c][0]
            if c != "Cardiomegaly" and abs(value - BODY_HU) > 100:  # distinct from the body around it
                assert np.abs(case.hu[z] - value).min() < 50, c


def test_ct_rate_source_reads_the_published_layout(ct_sites, tmp_path):
    cfg, src, records = _records(ct_sites["ct-rate"])
    assert len(records) == 10 and all(r.source == "ct-rate" for r in records)
    first = next(r for r in records if r.key == "train_1_a_1")
    assert first.patient_key == "train_1" and first.spacing == SPACING
    assert (first.slope, first.intercept) == (1.0, -1024.0)
    labels = pd.read_csv(ct_sites["ct-rate"].parent
                         / "data/dataset/multi_abnormality_labels/train_predicted_labels.csv")
    row = labels.set_index("VolumeName").loc["train_1_a_1.nii.gz"]
    np.testing.assert_array_equal(first.targets, row[list(load_label_set("ctrate18").classes)].to_numpy(np.float32))
    assert first.mask.all() and {r.split for r in records} == {None, "test"}  # valid_fixed -> test
    # a bad volume on the skip list, a volume without a report, and a broken metadata row
    data = tmp_path / "data"
    shutil.copytree(ct_sites["ct-rate"].parent / "data", data)
    vol = next(data.glob("dataset/train_fixed/train_1/train_1_a/*.nii.gz"))
    (vol.parent / "train_11755_a_2.nii.gz").write_bytes(vol.read_bytes())
    (vol.parent / "train_99_a_1.nii.gz").write_bytes(vol.read_bytes())
    meta = data / "dataset/metadata/train_metadata.csv"
    df = pd.read_csv(meta)
    df.loc[df.VolumeName == "train_2_a_1.nii.gz", "XYSpacing"] = "[0.75]"
    df.to_csv(meta, index=False)
    cfg2 = dataclasses.replace(cfg.sources[0], root=data)
    out = list(make_ct_source(cfg2).scan())
    reasons = {Path(r.path).name: r.reason for r in out if not hasattr(r, "targets")}
    assert "skip list" in reasons["train_11755_a_2.nii.gz"]
    assert "no report row" in reasons["train_99_a_1.nii.gz"]
    assert "train_metadata.csv" in reasons["train_2_a_1.nii.gz"] and "XYSpacing" in reasons["train_2_a_1.nii.gz"]
    assert sum(hasattr(r, "targets") for r in out) == 9  # the valid data around them is kept


def test_dicom_series_are_sorted_by_position_and_match_the_nifti_volumes(ct_sites):
    _, _, nifti = _records(ct_sites["ct-rate"])
    _, _, dicom = _records(ct_sites["dicom-ct"])
    a = read_record(next(r for r in nifti if r.key == "train_1_a_1"))
    b = read_record(next(r for r in dicom if r.key == "series/0000"))
    assert a.spacing == b.spacing == SPACING and a.hu.shape == b.hu.shape == SHAPE
    np.testing.assert_array_equal(a.hu, b.hu)  # the files were written in shuffled order
    r = dicom[0]
    assert r.instances == tuple(range(1, SHAPE[0] + 1)) and r.patient_key.startswith("MRN")
    assert r.mask.all() and len(r.paths) == SHAPE[0]


def test_snippets_localise_on_the_grid(ct_sites):
    spec = CTSpec((10.0, 5.0, 5.0), (10, 32, 32))
    found = 0
    for fmt in ("ct-rate", "dicom-ct"):
        _, _, records = _records(ct_sites[fmt])
        for rec in records:
            x, depth = preprocess(read_record(rec), spec)
            for text, pos in snippet_targets(rec, depth):
                assert "series" not in text.lower() and 0 <= pos < spec.size[0]
                z = [s.image for s in find_snippets(rec.report) if s.text == text][0] - 1
                assert pos == round((z + 0.5) / 2 - 0.5)  # 5 mm slices on a 10 mm grid, no crop
                found += 1
    assert found > 5
    assert "image" not in strip_references("Nodule (series 2, image 14). Effusion, see series 2 image 3.").lower()


def test_cache_decodes_once_and_a_new_grid_is_a_new_entry(ct_sites, tmp_path, monkeypatch):
    _, _, records = _records(ct_sites["dicom-ct"])
    cache = CTCache(tmp_path / "cache")
    spec = CTSpec((10.0, 10.0, 10.0), (8, 16, 16))
    first = [cache.get(r, spec)[0] for r in records[:3]]
    import client.ct.cache as cache_module

    monkeypatch.setattr(cache_module, "read_record", lambda rec: (_ for _ in ()).throw(AssertionError("re-read")))
    again = [cache.get(r, spec)[0] for r in records[:3]]
    assert cache.hits == 3 and all(np.allclose(a, b, atol=1e-3) for a, b in zip(first, again))
    with pytest.raises(AssertionError, match="re-read"):
        cache.get(records[0], CTSpec((10.0, 10.0, 10.0), (8, 16, 12)))


def test_ct_site_index_splits_by_patient_and_keeps_good_volumes(ct_sites, tmp_path):
    cfg = dataclasses.replace(load_site_config(ct_sites["dicom-ct"]), work_dir=tmp_path / "work")
    broken = tmp_path / "broken"
    shutil.copytree(ct_sites["dicom-ct"].parent / "data", broken)
    next((broken / "series/0003").glob("*_0010.dcm")).write_bytes(b"not a dicom file")  # a middle slice of one series
    cfg = dataclasses.replace(cfg, sources=(dataclasses.replace(cfg.sources[0], root=broken),))
    index = prepare_ct_site(cfg, CTSpec((10.0, 10.0, 10.0), (8, 16, 16)))
    assert len(index.volumes) == 9  # the series with an unreadable slice is refused, the others are kept
    assert any("series/0003" in n.path for n in index.notes)
    assert [r.reason for r in index.rejected if "0003" in r.path][0].count("uneven slice spacing") == 1
    assert {v.split for v in index.volumes} <= {"train", "val", "test"}
    summary = index.summary(k=5)
    assert summary["indexed"] == 9 and summary["decoded"] == 9
    with pytest.raises(SiteConfigError, match="ctrate18"):
        prepare_ct_site(dataclasses.replace(cfg, label_set="cxrlt2026"))


def test_real_ct_slice_reads_in_hounsfield_units(real_data):
    path = real_data / "dicom" / "CT_small.dcm"
    if not path.exists():
        pytest.skip(f"{path} not present")
    vol, slices = read_dicom_series([path])
    assert vol.hu.shape == (1, 128, 128) and vol.spacing[0] == 5.0  # one slice: its SliceThickness
    hist, edges = np.histogram(vol.hu, bins=np.arange(-1100, 1300, 50))
    air = edges[np.argmax(np.where(edges[:-1] < -500, hist, 0))]
    tissue = edges[np.argmax(np.where((edges[:-1] > -300) & (edges[:-1] < 300), hist, 0))]
    assert -1000 <= air <= -800  # the air mode (this small sample's air sits near -850 HU)
    assert -50 <= tissue <= 100  # the soft-tissue mode
    assert vol.hu.min() >= -1100 and vol.hu.max() <= 3100
