"""The loaders on real bytes from ../shared/data/real/ (skipped with a reason when the folder is absent)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from client import dicom_io
from client.imaging import ImageReadError
from client.index import load_split, prepare_site
from client.site_config import load_site_config
from client.sources.nih import read_nih_table
from client.sources.openi import iter_reports, metadata_key, parse_report
from shared_models.ontology import load_label_set

pytestmark = pytest.mark.real


def test_jpeg2000_monochrome1_chest_cr_decodes_and_is_inverted(real_data):
    pixels, ds = dicom_io.decode(real_data / "dicom" / "RG1_J2KI.dcm")
    assert ds.PhotometricInterpretation == "MONOCHROME1" and "JPEG 2000" in ds.file_meta.TransferSyntaxUID.name
    assert pixels.array.shape == (1955, 1841) and "MONOCHROME1 inverted" in pixels.notes
    raw = ds.pixel_array.astype(np.float64)[::8, ::8].ravel()
    out = pixels.array.astype(np.float64)[::8, ::8].ravel()
    assert np.corrcoef(raw, out)[0, 1] < -0.8  # brighter stored value = darker output: inverted


def test_tibia_cr_is_rejected_as_non_chest(real_data):
    with pytest.raises(ImageReadError, match="EXTREMITY is not a chest"):
        dicom_io.decode(real_data / "dicom" / "RG3_J2KI.dcm")


def test_ct_slice_is_rejected_from_a_radiograph_source(real_data):
    with pytest.raises(ImageReadError, match="modality CT is not a radiograph"):
        dicom_io.decode(real_data / "dicom" / "CT_small.dcm")


@pytest.mark.parametrize("name", ["Data_Entry_2017_v2020.csv.gz", "Data_Entry_2017_original_format.csv.gz"])
def test_both_nih_layouts_parse(real_data, name):
    df = read_nih_table(real_data / "nih" / name)
    assert len(df) == 112_120
    assert df["View Position"].value_counts().to_dict() == {"PA": 67_310, "AP": 44_810}


def test_openi_archive_parses_and_joins_the_dicom_metadata(real_data):
    reports = [parse_report(d, n) for n, d in iter_reports(real_data / "openi" / "NLMCXR_reports.tgz")]
    assert len(reports) == 3_955
    assert sum(1 for r in reports if r.sections["FINDINGS"]) == 3_955 - 530
    assert sum(1 for r in reports if r.sections["IMPRESSION"]) == 3_955 - 34
    assert sum(1 for r in reports if not r.images) == 104
    import pandas as pd

    ids = set(pd.read_csv(real_data / "openi" / "nlmcxr_dicom_metadata.csv.gz", usecols=["imageid"])["imageid"])
    images = [i for r in reports for i in r.images]
    joined = sum(1 for i in images if metadata_key(i) in ids)
    assert len(images) == 7_470 and joined == 7_469


def test_openi_sample_reports_match_the_manifest(real_data):
    sample = real_data / "openi" / "reports_sample"
    r1068 = parse_report((sample / "1068.xml").read_bytes(), "1068.xml")
    r1002 = parse_report((sample / "1002.xml").read_bytes(), "1002.xml")
    assert r1068.images == [] and r1002.sections["FINDINGS"] == ""


@pytest.fixture(scope="module")
def real_site(real_data, tmp_path_factory) -> Path:
    """A site built from the real sample files: NIH (table + 2 PNGs), Open-i (archive + metadata table),
    and the three real DICOMs with a labels sheet."""
    root = tmp_path_factory.mktemp("real-site")
    nih = root / "nih"
    (nih / "images").mkdir(parents=True)
    shutil.copy(real_data / "nih" / "Data_Entry_2017_v2020.csv.gz", nih)
    for png in ("00000001_000.png", "00027426_000.png"):
        shutil.copy(real_data / "nih" / png, nih / "images")
    openi = root / "openi"
    openi.mkdir()
    for f in ("NLMCXR_reports.tgz", "nlmcxr_dicom_metadata.csv.gz"):
        shutil.copy(real_data / "openi" / f, openi)
    dcm = root / "dicom"
    dcm.mkdir()
    for f in ("RG1_J2KI.dcm", "RG3_J2KI.dcm", "CT_small.dcm"):
        shutil.copy(real_data / "dicom" / f, dcm)
    (dcm / "labels.csv").write_text("path,labels\nRG1_J2KI.dcm,Normal\nRG3_J2KI.dcm,Normal\nCT_small.dcm,Normal\n")
    (root / "site.toml").write_text(
        '[site]\nname = "real-samples"\nimage_size = 64\n[split]\nval = 0.0\ntest = 0.0\n'
        '[[sources]]\nkind = "nih"\nroot = "nih"\n[[sources]]\nkind = "openi"\nroot = "openi"\n'
        '[[sources]]\nkind = "dicom"\nroot = "dicom"\n')
    return root / "site.toml"


def test_real_site_indexes_the_readable_images_with_labels(real_site):
    cfg = load_site_config(real_site)
    report = prepare_site(cfg)
    assert report.by_source == {"nih": 2, "dicom": 1}
    reasons = {Path(r.path).name: r.reason for r in report.rejected}
    assert "EXTREMITY" in reasons["RG3_J2KI.dcm"] and "modality CT" in reasons["CT_small.dcm"]
    assert sum("missing on disk" in r.reason for r in report.rejected) == 112_118 + 7_470
    data = load_split(cfg, None)
    ls = load_label_set()
    assert data.targets[:, ls.index("cardiomegaly")].sum() >= 1  # 00000001_000.png: Cardiomegaly, PA
    assert set(data.projection.tolist()) == {0}  # PA (NIH) and PA (RG1 ViewPosition)
    assert "Effusion" not in report.label_mapping["nih:nih"]["unmapped"]


@pytest.mark.parametrize("as_json", [False, True])
def test_check_cli_on_the_real_site(real_site, as_json):
    cmd = [sys.executable, "-m", "client.cli", "check", "--config", str(real_site)] + (["--json"] if as_json else [])
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2  # three readable images cannot train a model
    if as_json:
        out = json.loads(r.stdout)
        assert out["indexed"] == 3 and out["can_train"] is False and "fewer than" in out["reason"]
        assert out["by_projection"] == {"PA": "<5"}  # small counts suppressed
        assert any(x["path"].endswith("RG3_J2KI.dcm") and "EXTREMITY" in x["reason"] for x in out["rejected"])
    else:
        assert "rejected (119588) listed image is missing on disk" in r.stdout
        assert "can train: no" in r.stdout


def test_nih_boxes_join_their_images(real_data, tmp_path):
    import sqlite3

    root = tmp_path / "nih"
    (root / "images").mkdir(parents=True)
    for f in ("Data_Entry_2017_v2020.csv.gz", "BBox_List_2017.csv.gz"):
        shutil.copy(real_data / "nih" / f, root)
    # a real 512 px NIH PNG under the name of an image that has an Atelectasis box in BBox_List_2017 (x 225.1,
    # y 547.0, w 86.8, h 79.2 in the 1024 px release PNG)
    shutil.copy(real_data / "nih" / "00000001_000.png", root / "images" / "00013118_008.png")
    (tmp_path / "site.toml").write_text('[site]\nname = "nih-boxes"\n[[sources]]\nkind = "nih"\nroot = "nih"\n')
    cfg = load_site_config(tmp_path / "site.toml")
    report = prepare_site(cfg)
    assert report.indexed == 1 and report.boxes >= 1
    con = sqlite3.connect(cfg.index_path)
    assert ("Atelectasis",) in con.execute("SELECT label FROM boxes").fetchall()
    # the localiser's view of it: the atelectasis class, scaled from the 1024 px frame onto the downsampled file
    from client.localization import site_boxes

    boxes = site_boxes(cfg, load_split(cfg, None))
    rel = boxes.get(0, load_label_set(cfg.label_set).classes.index("atelectasis"))
    assert rel is not None and not boxes.unmatched
    expected = np.array([225.084745762712 + 86.7796610169491 / 2, 547.019216763771 + 79.1864406779661 / 2,
                         86.7796610169491, 79.1864406779661]) / 1024
    assert np.allclose(rel[0], expected, atol=1e-4)


def test_mimic_schema_files_parse(real_data, tmp_path):
    """The real MIMIC-CXR-JPG headers (synthetic rows): metadata + NegBio labels with 1/0/-1/blank."""
    from client.site_config import SourceConfig
    from client.sources import Record, make_source

    for f in ("mimic-cxr-2.0.0-metadata.csv", "mimic-cxr-2.0.0-negbio.csv"):
        shutil.copy(real_data / "mimic_schema" / f, tmp_path)
    src = make_source(SourceConfig("mimic", tmp_path, {"labels": "mimic-cxr-2.0.0-negbio.csv"}), "cxrlt2026")
    items = list(src.scan())
    records = [i for i in items if isinstance(i, Record)]
    assert records and all(r.projection in ("PA", "AP", "LAT", None) for r in records)
    assert any(r.mask.sum() < len(r.mask) for r in records)  # classes MIMIC cannot express stay masked
