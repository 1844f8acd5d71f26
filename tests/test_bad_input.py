"""Bad input never stops a site: every bad file is reported with its path and reason, every valid file
around it is still indexed. One test per source family, 27 kinds of bad input in all."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pydicom
from pydicom.encaps import encapsulate

from client import dicom_io
from client.index import prepare_site
from client.site_config import load_site_config
from client.synth import synthesize_site

N = 30


def _reasons(report) -> dict[str, str]:
    return {Path(r.path).name if "!" not in r.path else r.path: r.reason for r in report.rejected}


def _rewrite_csv(path: Path, rows: list[dict], fieldnames: list[str], encoding: str = "utf-8") -> None:
    with open(path, "w", newline="", encoding=encoding) as fh:
        w = csv.DictWriter(fh, fieldnames=fieldnames)
        w.writeheader()
        w.writerows(rows)


def test_dicom_folder_bad_files(tmp_path, monkeypatch):
    toml = synthesize_site(tmp_path / "site", "dicom", "bad-dicom", n_images=N, image_size=32, seed=2)
    root = toml.parent / "data"
    rows = list(csv.DictReader(open(root / "labels.csv")))
    good = [root / r["path"] for r in rows]

    def variant(name: str, edit) -> None:
        ds = pydicom.dcmread(good[0])
        edit(ds)
        ds.save_as(root / name, enforce_file_format=True)
        rows.append({"path": name, "labels": "Normal"})

    (root / "empty.dcm").write_bytes(b"")
    rows.append({"path": "empty.dcm", "labels": "Normal"})  # 1 a 0-byte file
    data = good[1].read_bytes()
    (root / "truncated.dcm").write_bytes(data[: len(data) // 2])
    rows.append({"path": "truncated.dcm", "labels": "Normal"})  # 2 a truncated DICOM
    variant("nopixels.dcm", lambda ds: delattr(ds, "PixelData"))  # 3 no pixel data

    def mpeg(ds):
        ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"  # MPEG2: no decoder here
        ds.PixelData = encapsulate([b"\x00" * 64])

    variant("mpeg2.dcm", mpeg)  # 4 a transfer syntax with no decoder

    def sr(ds):
        ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"  # Basic Text SR

    variant("report.dcm", sr)  # 5 a non-image SOP class
    variant("knee.dcm", lambda ds: setattr(ds, "BodyPartExamined", "KNEE"))  # 6 a non-chest body part

    def tiny(ds):
        ds.Rows = ds.Columns = 1
        ds.PixelData = b"\x00\x00"

    variant("onepixel.dcm", tiny)  # 7 a 1x1 image
    variant("ct.dcm", lambda ds: setattr(ds, "Modality", "CT"))  # 8 a CT slice in a radiograph source
    rows.append({"path": good[2].relative_to(root).as_posix(), "labels": ""})  # 9 blank labels
    rows.append({"path": good[3].relative_to(root).as_posix(), "labels": "nan"})  # 10 NaN labels
    rows.append({"path": "gone.dcm", "labels": "Normal"})  # 11 listed but missing on disk
    shutil.copy(good[4], root / "dicom" / "stray.dcm")  # 12 on disk, listed nowhere
    (root / "loop_a.dcm").symlink_to(root / "loop_b.dcm")
    (root / "loop_b.dcm").symlink_to(root / "loop_a.dcm")
    rows.append({"path": "loop_a.dcm", "labels": "Normal"})  # 13 a symlink loop
    (root / "dicom" / "dirloop").symlink_to(root / "dicom")  # a folder loop must not hang the walk
    rows.append({"path": rows[5]["path"], "labels": rows[5]["labels"]})  # 14 duplicate image id
    shutil.copy(good[6], root / "locked.dcm")
    rows.append({"path": "locked.dcm", "labels": "Normal"})  # 15 no read permission
    real_read = dicom_io.pydicom.dcmread

    def guarded(path, *a, **k):
        if Path(path).name == "locked.dcm":  # tests run as root, which ignores file modes
            raise PermissionError(13, "Permission denied")
        return real_read(path, *a, **k)

    monkeypatch.setattr(dicom_io.pydicom, "dcmread", guarded)
    _rewrite_csv(root / "labels.csv", rows, ["path", "labels"])

    report = prepare_site(load_site_config(toml))
    reasons = _reasons(report)
    expected = {
        "empty.dcm": "empty file", "truncated.dcm": r"truncat|corrupt|not a readable", "nopixels.dcm": "no pixel data",
        "mpeg2.dcm": "no decoder", "report.dcm": "non-image SOP class", "knee.dcm": "not a chest",
        "onepixel.dcm": "too small", "ct.dcm": "modality CT", good[2].name: "blank labels",
        good[3].name: "blank labels",
        "gone.dcm": "missing on disk", "stray.dcm": "no dicom table lists", "loop_a.dcm": "symbolic links",
        rows[5]["path"].split("/")[-1]: "duplicate image id", "locked.dcm": "no read permission",
    }
    for name, pattern in expected.items():
        assert name in reasons, f"{name} not reported"
        assert __import__("re").search(pattern, reasons[name]), (name, reasons[name])
    assert report.indexed == N  # every valid file is still indexed (the bad rows were extra rows)


def test_padchest_bad_rows_and_files(tmp_path):
    toml = synthesize_site(tmp_path / "site", "padchest", "bad-padchest", n_images=N, image_size=32, seed=3)
    root = toml.parent / "data"
    csv_path = root / "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv"
    with open(csv_path, newline="") as fh:
        reader = csv.DictReader(fh)
        fields, rows = reader.fieldnames, list(reader)
    rows[0]["Labels"] = "['cardiomegaly'"  # 16 a malformed label literal
    rows[1]["Projection"] = "XYZ"  # 17 an unknown projection value
    rows[2]["Projection"] = "COSTAL"  # 18 a non-chest view
    img3 = root / rows[3]["ImageDir"] / rows[3]["ImageID"]
    img3.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)  # 19 a corrupt PNG
    img4 = root / rows[4]["ImageDir"] / rows[4]["ImageID"]
    img4.write_bytes(b"")  # 20 a 0-byte PNG
    rows[5]["Labels"] = ""  # 21 blank labels
    rows[6]["Report"] = "derrame pleural pequeño, sin neumotórax"  # 22 non-UTF-8 text (file saved as Latin-1)
    _rewrite_csv(csv_path, rows, fields, encoding="latin-1")
    report = prepare_site(load_site_config(toml))
    reasons = _reasons(report)
    checks = {
        rows[0]["ImageID"]: "not a Python list literal", rows[1]["ImageID"]: "unknown Projection",
        rows[2]["ImageID"]: "not a PA/AP/lateral", img3.name: "cannot decode image", img4.name: "empty file",
        rows[5]["ImageID"]: "blank Labels",
    }
    for name, pattern in checks.items():
        assert pattern in reasons[name], (name, reasons[name])
    assert any("not UTF-8" in n.message for n in report.notes)
    assert report.indexed == N - 6


def test_padchest_csv_missing_a_column_keeps_other_sources(tmp_path):
    a = synthesize_site(tmp_path / "a", "padchest", "a", n_images=N, image_size=32, seed=4)
    b = synthesize_site(tmp_path / "b", "dicom", "b", n_images=N, image_size=32, seed=4)
    csv_path = a.parent / "data" / "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv"
    with open(csv_path, newline="") as fh:
        reader = csv.DictReader(fh)
        fields = [f for f in reader.fieldnames if f != "Projection"]  # 23 a CSV missing a required column
        rows = [{k: r[k] for k in fields} for r in reader]
    _rewrite_csv(csv_path, rows, fields)
    toml = tmp_path / "site.toml"
    toml.write_text(f'[site]\nname = "two"\n[[sources]]\nkind = "padchest"\nroot = "{a.parent / "data"}"\n'
                    f'[[sources]]\nkind = "dicom"\nroot = "{b.parent / "data"}"\n')
    report = prepare_site(load_site_config(toml))
    assert any("missing required column(s) ['Projection']" in r.reason and r.path == str(csv_path)
               for r in report.rejected)
    assert report.by_source == {"dicom": N}


def test_mimic_bad_jpeg_and_label_values(tmp_path):
    toml = synthesize_site(tmp_path / "site", "mimic", "bad-mimic", n_images=N, image_size=32, seed=5)
    root = toml.parent / "data"
    jpgs = sorted((root / "files").rglob("*.jpg"))
    jpgs[0].write_bytes(b"\xff\xd8\xff\xe0" + b"\x00" * 20)  # 24 a corrupt JPEG
    lab_path = root / "mimic-cxr-2.0.0-chexpert.csv"
    with open(lab_path, newline="") as fh:
        reader = csv.DictReader(fh)
        fields, rows = reader.fieldnames, list(reader)
    rows[-1]["Cardiomegaly"] = "2.0"  # 25 a label value outside 1 / 0 / -1 / blank
    _rewrite_csv(lab_path, rows, fields)
    report = prepare_site(load_site_config(toml))
    reasons = _reasons(report)
    assert "cannot decode image" in reasons[jpgs[0].name]
    assert any("unexpected label value" in r.reason for r in report.rejected)
    assert report.indexed >= N - 4


def test_openi_bad_reports(tmp_path):
    toml = synthesize_site(tmp_path / "site", "openi", "bad-openi", n_images=N, image_size=32, seed=6)
    reports = toml.parent / "data" / "ecgen-radiology"
    # 26
    (reports / "9001.xml").write_text("<eCitation><uId id='CXR9001'/><MeSH><major>normal</major></MeSH></eCitation>")
    first = sorted(reports.glob("*.xml"))[0]
    text = first.read_text()
    start = text.index('<AbstractText Label="FINDINGS">')
    end = text.index("</AbstractText>", start)
    first.write_text(text[:start] + '<AbstractText Label="FINDINGS">' + text[end:])  # 27 empty FINDINGS
    (reports / "9002.xml").write_text("<eCitation><uId id='CXR9002'/>")  # 28 XML that does not parse
    report = prepare_site(load_site_config(toml))
    reasons = _reasons(report)
    assert "lists no images" in reasons["9001.xml"]
    assert "does not parse" in reasons["9002.xml"]
    assert any("empty FINDINGS" in n.message and n.path.endswith(first.name) for n in report.notes)
    assert report.indexed == N  # the report with empty FINDINGS still indexes its images
