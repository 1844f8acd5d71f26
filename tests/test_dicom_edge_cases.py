"""DICOM edge cases (issue 23, part 5): each file is either indexed correctly or rejected with its reason, never a
traceback, and the rest of the folder is still indexed. The cases are written here with pydicom from one
synthetic chest CR (tests/dicom_cases.py); the second test scans the folder of DICOM edge cases pydicom ships
(written by others: big endian, no file meta, RT, SR, palette, multi-frame, JPEG-LS, ...), the scan of the issue."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest

from client import cli
from client.index import prepare_site
from client.site_config import load_site_config
from tests.dicom_cases import PHI, PYDICOM_FILES, edge_cases, indexed_pixels, write_reference, write_site


def test_dicom_edge_cases_are_indexed_or_rejected_with_their_reason(tmp_path):
    root = tmp_path / "data"
    reference = write_reference(root / "reference.dcm")
    cases = edge_cases()
    for name, (write, _) in cases.items():
        write(pydicom.dcmread(reference), root / name)
    cfg = load_site_config(write_site(root, {"reference.dcm": "Normal", **{n: "Normal" for n in cases}}))
    report = prepare_site(cfg)
    reasons = {Path(r.path).name: r.reason for r in report.rejected}
    pixels = indexed_pixels(cfg)
    assert not set(reasons) & set(pixels) and set(reasons) | set(pixels) == {"reference.dcm", *cases}
    for name, (_, expected) in cases.items():
        if expected is None or expected == "indexed" or expected.startswith("="):
            assert name in pixels, f"{name} rejected: {reasons.get(name)}"
            other = "reference.dcm" if expected is None else expected[1:] if expected.startswith("=") else None
            if other:  # a lossless re-encoding decodes to the same image (palette: through its grey-ramp LUT)
                tolerance = 1 if name == "palette.dcm" else 0
                assert np.abs(pixels[name].astype(int) - pixels[other]).max() <= tolerance, name
        else:
            assert name in reasons, f"{name} indexed; expected a rejection matching {expected!r}"
            assert re.search(expected, reasons[name]), (name, reasons[name])
    assert pixels["reference.dcm"].std() > 10  # the comparisons compare images, not blanks
    notes: dict[str, str] = {}
    for n in report.notes:
        notes[Path(n.path).name] = notes.get(Path(n.path).name, "") + n.message
    assert "Implicit VR Little Endian inferred" in notes["no_file_meta.dcm"]
    assert "Explicit VR Little Endian inferred" in notes["meta_without_transfer_syntax.dcm"]
    assert "PALETTE COLOR" in notes["palette.dcm"]
    assert not [v for v in PHI.values() for r in report.rejected if v in r.reason]


def test_a_folder_of_dicom_edge_cases_written_by_others_is_scanned_to_the_end(tmp_path, capsys):
    files = sorted(PYDICOM_FILES.glob("*.dcm"))
    if len(files) < 20:
        pytest.skip(f"pydicom's sample files are not at {PYDICOM_FILES} (this pydicom wheel does not ship them)")
    root = tmp_path / "data"
    root.mkdir()
    for f in files:
        shutil.copy(f, root)
    toml = write_site(root, {f.name: "Normal" for f in files}, name="pydicom-samples")
    assert cli.main(["check", "--config", str(toml), "--json"]) in (0, 2)
    out = json.loads(capsys.readouterr().out)
    rejected = {Path(r["path"]).name: r["reason"] for r in out["rejected"]}
    indexed = indexed_pixels(load_site_config(toml))
    assert set(rejected) | set(indexed) == {f.name for f in files} and not set(rejected) & set(indexed)
    expected = {  # what the user met, and one of each kind
        "meta_missing_tsyntax.dcm": r"Bits Allocated",  # the traceback (no Transfer Syntax UID)
        "no_meta.dcm": r"not a DICOM file",  # no preamble and no elements of an image object
        "rtstruct.dcm": r"non-image SOP class \(RT Structure Set", "test-SR.dcm": r"non-image SOP class",
        "rtdose.dcm": r"non-image SOP class|multi-frame", "SC_rgb_rle_2frame.dcm": r"multi-frame",
        "MR_small_bigendian.dcm": r"modality MR", "examples_palette.dcm": r"modality US",
        "ExplVR_BigEndNoMeta.dcm": r"non-image SOP class",
    }
    for name, pattern in expected.items():
        if (PYDICOM_FILES / name).exists():
            assert re.search(pattern, rejected[name]), (name, rejected[name])
    for name in ("SC_rgb_rle.dcm", "SC_rgb_jpeg_dcmtk.dcm", "SC_rgb_small_odd_big_endian.dcm"):
        assert name in indexed or "too small" in rejected.get(name, ""), (name, rejected.get(name))
    assert cli.main(["check", "--config", str(toml)]) in (0, 2)  # the human-readable summary, from the cache
    text = capsys.readouterr().out
    groups = [line for line in text.splitlines() if line.startswith("  rejected (")]
    assert 0 < len(groups) <= cli.MAX_REJECTION_KINDS and sum(int(g.split("(")[1].split(")")[0]) for g in groups) \
        == len(rejected)


def test_ct_slices_without_file_meta_or_compressed_read_as_the_original(tmp_path):
    """A CT series written without preamble and file meta (implicit VR), and one RLE-compressed, give the same HU
    volumes as the uncompressed files they were made from."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.filewriter import dcmwrite
    from pydicom.uid import RLELossless

    from client.ct.cache import read_record
    from client.ct.sources import CTRecord, make_ct_source
    from client.synth.ct import synthesize_ct_site

    toml = synthesize_ct_site(tmp_path / "ct", "dicom-ct", "edge-ct", n_volumes=3, shape=(6, 16, 16),
                              spacing=(5.0, 5.0, 5.0), seed=1)

    def volumes() -> dict[str, np.ndarray]:
        cfg = load_site_config(toml)
        return {r.key: read_record(r).hu for r in make_ct_source(cfg.sources[0]).scan() if isinstance(r, CTRecord)}

    before = volumes()
    data = toml.parent / "data" / "series"
    for f in (data / "0000").glob("*.dcm"):
        ds = pydicom.dcmread(f)
        ds.file_meta, ds.preamble = FileMetaDataset(), None
        dcmwrite(f, ds, implicit_vr=True, little_endian=True, force_encoding=True)
    for f in (data / "0001").glob("*.dcm"):
        ds = pydicom.dcmread(f)
        ds.compress(RLELossless)
        ds.save_as(f)
    after = volumes()
    assert len(before) == 3 and set(after) == set(before)
    assert all(np.array_equal(before[k], after[k]) for k in before)
    assert pydicom.dcmread(next((data / "0001").glob("*.dcm"))).file_meta.TransferSyntaxUID == RLELossless
