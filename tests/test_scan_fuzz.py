"""A scan no file can stop (issue 23, part 5): hundreds of corrupted files (truncated at random offsets, bit-flipped,
header-mangled, from a fixed seed) beside valid ones, for every source kind, through `fedchest-site check`. The scan
must end without a traceback, every file must be indexed or rejected with a reason, every valid file indexed, and no
rejection may echo an identifier planted in a DICOM header. Seeds: synthetic files (DICOM in six encodings, PNG 8 and
16 bit, JPEG, NIfTI, CSV, XML) always; the real sample files (DICOM, NIH PNGs, Open-i XML) when present."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image

from client import cli, dicom_io, index
from client.ct.index import prepare_ct_site
from client.site_config import load_site_config
from client.sources.openi import parse_report
from client.synth import synthesize_site
from client.synth.ct import synthesize_ct_site
from tests.dicom_cases import edge_cases, write_reference
from tests.fuzz_sites import (assert_accounted, check, corrupt_file, image_files, indexed_paths, norm, rejections,
                              variants)
from tests.phi import leaked

SEED = int(os.environ.get("FEDCHEST_FUZZ_SEED", "20261202"))  # fixed; set it to explore other corruptions
DICOM_ENCODINGS = ("big_endian.dcm", "implicit_vr.dcm", "no_file_meta.dcm", "rle.dcm", "jpeg2000_without_offsets.dcm")
NIH_HEADER = ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
              "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]")


def _dicom_seeds(folder: Path) -> list[Path]:
    """A synthetic chest CR (planted identifiers) in explicit VR little endian and five other encodings."""
    folder.mkdir(parents=True)
    reference = write_reference(folder / "cr.dcm", size=48)
    cases = edge_cases()
    for name in DICOM_ENCODINGS:
        cases[name][0](pydicom.dcmread(reference), folder / name)
    return [reference, *(folder / n for n in DICOM_ENCODINGS)]


def _png_seeds(folder: Path, n: int, rng: np.random.Generator) -> list[Path]:
    folder.mkdir(parents=True)
    yy, xx = np.mgrid[0:48, 0:48] / 48
    paths = []
    for i in range(n):
        arr = np.clip(0.5 + 0.4 * np.sin((3 + i) * xx) * np.cos(2 * yy) + 0.05 * rng.standard_normal((48, 48)), 0, 1)
        paths.append(folder / f"{i:08d}_000.png")
        Image.fromarray((arr * 255).astype(np.uint8)).save(paths[-1])
    return paths


def _nih_source(root: Path, seeds: list[Path], per_seed: int, rng) -> tuple[list[Path], list[Path]]:
    valid, bad = variants(seeds, root / "images_001" / "images", per_seed, rng)
    rows = [f"{p.name},No Finding,0,{i},50,M,PA,1024,1024,0.14,0.14" for i, p in enumerate(valid + bad)]
    (root / "Data_Entry_2017_v2020.csv").write_text("\n".join([NIH_HEADER, *rows]) + "\n")
    return valid, bad


def _dicom_source(root: Path, seeds: list[Path], per_seed: int, rng) -> tuple[list[Path], list[Path]]:
    valid, bad = variants(seeds, root / "dicom", per_seed, rng)
    rows = [f"{p.relative_to(root).as_posix()},Normal" for p in valid + bad]
    (root / "labels.csv").write_text("\n".join(["path,labels", *rows]) + "\n")
    return valid, bad


def _rsna_source(root: Path, seeds: list[Path], per_seed: int, rng) -> tuple[list[Path], list[Path]]:
    valid, bad = variants(seeds, root / "stage_2_train_images", per_seed, rng)
    rows = [f"{p.stem},,,,,0" for p in valid + bad]
    (root / "stage_2_train_labels.csv").write_text("\n".join(["patientId,x,y,width,height,Target", *rows]) + "\n")
    return valid, bad


def _corrupt_in_place(files: list[Path], share: float, rng) -> tuple[list[Path], list[Path]]:
    """Corrupt a share of a synthetic site's own files; returns (untouched, corrupted)."""
    order = [files[i] for i in rng.permutation(len(files))]
    cut = int(len(files) * share)
    for p in order[:cut]:
        corrupt_file(p, rng)
    return sorted(order[cut:]), sorted(order[:cut])


def _write_toml(path: Path, sources: dict[str, Path], extra: str = "") -> Path:
    path.write_text(f'[site]\nname = "fuzz"\nimage_size = 32\n{extra}'
                    + "".join(f'[[sources]]\nkind = "{kind.split("#")[0]}"\nroot = "{root}"\n'
                              for kind, root in sources.items()))
    return path


def _dicom_phi(roots: list[Path]) -> set[str]:
    """The identifiers planted in every readable DICOM header under ``roots`` (read before corrupting)."""
    values: set[str] = set()
    for root in roots:
        for f in root.rglob("*.dcm"):
            ds = pydicom.dcmread(f, stop_before_pixels=True, force=True)
            values |= {str(ds.get(k, "")) for k in ("PatientName", "PatientID", "PatientBirthDate", "AccessionNumber")}
    return {v for v in values if len(v) > 3}


def _leaks(phi: set[str], out: dict) -> list[str]:
    """Planted identifiers in the rejections or notes: numbers as whole tokens (tests.phi.leaked), names and ids with
    letters anywhere (a damaged header's value can run on into them after any byte)."""
    text = f"{out['rejected']} {out['notes']}"
    return sorted(v for v in phi if (leaked({v}, [text.encode()]) if v.isdigit() else v in text))


def _scan_radiograph_site(toml: Path, roots: list[Path], valid: list[Path], reports: list[Path], capsys,
                          caplog) -> dict:
    out = check(toml, capsys, caplog)
    indexed, rejected = indexed_paths(load_site_config(toml)), rejections(out)
    assert_accounted(image_files(roots), indexed, rejected)
    for xml in reports:  # an Open-i report is rejected by name or parses (its images are then accounted above)
        assert norm(xml) in rejected or parse_report(xml.read_bytes(), xml.name) is not None
    missing = sorted({norm(p) for p in valid} - indexed)
    assert not missing, [(m, rejected.get(m)) for m in missing[:5]]
    return out


def test_fuzzed_synthetic_files_never_stop_a_radiograph_scan(tmp_path, capsys, caplog):
    rng = np.random.default_rng(SEED)
    dicom_seeds, png_seeds = _dicom_seeds(tmp_path / "seeds" / "dicom"), _png_seeds(tmp_path / "seeds" / "png", 6, rng)
    sites = {fmt: synthesize_site(tmp_path / fmt, fmt, f"fz-{fmt}", n_images=n, image_size=32, seed=3).parent / "data"
             for fmt, n in (("padchest", 32), ("mimic", 32), ("openi", 24))}
    phi = _dicom_phi([sites["openi"], tmp_path / "seeds"])
    valid, bad = [], []
    for build, name, seeds, per_seed in ((_dicom_source, "dicom", dicom_seeds, 25), (_nih_source, "nih", png_seeds, 12),
                                         (_rsna_source, "rsna", dicom_seeds[:3], 6)):
        v, b = build(tmp_path / name, seeds, per_seed, rng)
        valid, bad = valid + v, bad + b
    for fmt, suffix in (("padchest", ".png"), ("mimic", ".jpg"), ("openi", ".dcm")):
        v, b = _corrupt_in_place(sorted(sites[fmt].rglob(f"*{suffix}")), 0.7 if fmt != "openi" else 0.4, rng)
        valid, bad = valid + (v if fmt != "openi" else []), bad + b
    kept_reports, bad_reports = _corrupt_in_place(sorted((sites["openi"] / "ecgen-radiology").glob("*.xml")), 0.4, rng)
    clean_images = {i for x in kept_reports for i in parse_report(x.read_bytes(), x.name).images}
    valid += [p for p in sites["openi"].rglob("*.dcm") if p.stem in clean_images and p not in bad]
    roots = [sites["padchest"], sites["mimic"], sites["openi"], tmp_path / "dicom", tmp_path / "nih", tmp_path / "rsna"]
    toml = _write_toml(tmp_path / "site.toml", dict(zip(("padchest", "mimic", "openi", "dicom", "nih", "rsna"), roots)))
    out = _scan_radiograph_site(toml, roots, valid, kept_reports + bad_reports, capsys, caplog)
    assert len(bad) + len(bad_reports) >= 200 and len(valid) >= 40
    assert out["indexed"] >= len(valid) and len(out["rejected"]) >= len(bad) // 2  # most damage is noticed
    assert not _leaks(phi, out)


def test_fuzzed_tables_never_stop_a_scan(tmp_path, capsys, caplog):
    """CSV tables truncated, bit-flipped or with a mangled column line: the source's rows or the whole table are
    rejected, the images it lists are still accounted for, the other source is untouched."""
    rng = np.random.default_rng(SEED + 1)
    dicom_root, nih_root = tmp_path / "dicom", tmp_path / "nih"
    d_valid, _ = _dicom_source(dicom_root, _dicom_seeds(tmp_path / "seeds" / "dicom")[:3], 0, rng)
    n_valid, _ = _nih_source(nih_root, _png_seeds(tmp_path / "seeds" / "png", 4, rng), 0, rng)
    toml = _write_toml(tmp_path / "site.toml", {"dicom": dicom_root, "nih": nih_root})
    tables = {"dicom": dicom_root / "labels.csv", "nih": nih_root / "Data_Entry_2017_v2020.csv"}
    clean = {k: t.read_bytes() for k, t in tables.items()}
    for k in range(24):
        hit = ("dicom", "nih")[k % 2]
        corrupt_file(tables[hit], rng, None)
        untouched = n_valid if hit == "dicom" else d_valid
        out = _scan_radiograph_site(toml, [dicom_root, nih_root], untouched, [], capsys, caplog)
        assert out["indexed"] >= len(n_valid if hit == "dicom" else d_valid)
        tables[hit].write_bytes(clean[hit])


def test_fuzzed_ct_volumes_and_slices_never_stop_a_ct_scan(tmp_path, capsys, caplog):
    rng = np.random.default_rng(SEED + 2)
    shape, spacing = (8, 16, 16), (5.0, 5.0, 5.0)
    rate = synthesize_ct_site(tmp_path / "rate", "ct-rate", "fz-rate", n_volumes=14, shape=shape, spacing=spacing,
                              seed=4).parent / "data"
    series = synthesize_ct_site(tmp_path / "dct", "dicom-ct", "fz-dct", n_volumes=8, shape=shape, spacing=spacing,
                                seed=4).parent / "data"
    phi = _dicom_phi([series])
    kept_volumes, bad_volumes = _corrupt_in_place(sorted(rate.rglob("*.nii.gz")), 0.7, rng)
    folders = sorted(p for p in (series / "series").iterdir())
    order = [folders[i] for i in rng.permutation(len(folders))]
    kept_series, hit_series = order[:2], order[2:]
    for folder in hit_series:  # one slice of the series
        corrupt_file(sorted(folder.glob("*.dcm"))[int(rng.integers(shape[0]))], rng)
    toml = _write_toml(tmp_path / "site.toml", {"ct-rate": rate, "dicom-ct": series},
                       'label_set = "ctrate18"\n[ct]\nspacing = [10, 10, 10]\nsize = [8, 8, 8]\n')
    out = check(toml, capsys, caplog)
    rejected = rejections(out)
    index = prepare_ct_site(load_site_config(toml))  # the volumes (all from the cache now)
    volume_files = {norm(p) for v in index.volumes for p in v.record.paths}
    assert_accounted({norm(p) for p in kept_volumes + bad_volumes}, volume_files, rejected)
    for folder in folders:  # a series is indexed, or it or one of its slices is rejected
        inside = {norm(folder), *(norm(p) for p in folder.glob("*.dcm"))}
        assert inside & (volume_files | set(rejected)), folder
    assert {norm(p) for p in kept_volumes} <= volume_files
    assert all(inside <= volume_files for inside in ({norm(p) for p in f.glob("*.dcm")} for f in kept_series))
    assert out["indexed"] >= len(kept_volumes) + len(kept_series)
    assert not _leaks(phi, out)


@pytest.mark.real
def test_fuzzed_real_files_never_stop_a_scan(real_data, tmp_path, capsys, caplog):
    """The real sample files as seeds: the three DICOMs (a JPEG 2000 chest CR, a tibia, a CT slice), NIH PNGs and
    Open-i XML reports."""
    dicom = sorted((real_data / "dicom").glob("*.dcm"))
    pngs = sorted((real_data / "nih64").glob("*.png"))[:8] + sorted((real_data / "nih256").glob("*.png"))[:2]
    xmls = sorted((real_data / "openi" / "reports_sample").glob("*.xml"))
    if not (dicom and pngs and xmls):
        pytest.skip(f"real sample DICOM / NIH PNG / Open-i XML files not all under {real_data}")
    rng = np.random.default_rng(SEED + 3)
    per_dicom = {"RG1_J2KI.dcm": 6}  # a 1955 x 1841 JPEG 2000: each variant costs a full decode
    d_valid, d_bad = [], []
    for seed in dicom:
        v, b = variants([seed], tmp_path / "dicom" / "dicom", per_dicom.get(seed.name, 14), rng)
        d_valid, d_bad = d_valid + v, d_bad + b
    (tmp_path / "dicom" / "labels.csv").write_text(
        "\n".join(["path,labels", *(f"dicom/{p.name},Normal" for p in d_valid + d_bad)]) + "\n")
    n_valid, n_bad = _nih_source(tmp_path / "nih", pngs, 6, rng)
    openi = synthesize_site(tmp_path / "openi-site", "openi", "fz-openi", n_images=6, image_size=32, seed=5)
    openi = openi.parent / "data"
    _, x_bad = variants(xmls, tmp_path / "xml", 3, rng)
    for x in x_bad:
        shutil.move(x, openi / "ecgen-radiology" / x.name)
    reports = sorted((openi / "ecgen-radiology").glob("*.xml"))
    roots = [tmp_path / "dicom", tmp_path / "nih", openi]
    toml = _write_toml(tmp_path / "site.toml", dict(zip(("dicom", "nih", "openi"), roots)))
    valid = [p for p in d_valid if p.name == "RG1_J2KI.dcm"] + n_valid  # the tibia and the CT slice are refused
    out = _scan_radiograph_site(toml, roots, valid, reports, capsys, caplog)
    assert len(d_bad) + len(n_bad) + len(x_bad) >= 100
    reasons = rejections(out)
    assert "EXTREMITY" in reasons[norm(tmp_path / "dicom" / "dicom" / "RG3_J2KI.dcm")]


@pytest.mark.parametrize("make", ["folder", "binary"])
def test_an_unreadable_site_config_stops_check_with_a_clear_error(tmp_path, capsys, make):
    toml = tmp_path / "site.toml"
    if make == "folder":
        toml.mkdir()
    else:
        toml.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe" + bytes(range(256)))
    assert cli.main(["check", "--config", str(toml)]) == 2
    err = capsys.readouterr().err
    assert f"{toml}: " in err and ("cannot read" in err or "not UTF-8" in err) and "Traceback" not in err


def test_a_missing_data_root_stops_the_scan_with_a_clear_error(tmp_path, capsys):
    toml = _write_toml(tmp_path / "site.toml", {"dicom": tmp_path / "not-there"})
    assert cli.main(["check", "--config", str(toml)]) == 2
    err = capsys.readouterr().err
    assert "sources[0].root" in err and "not a folder" in err and "Traceback" not in err


def test_a_full_disk_stops_the_scan_with_a_clear_error(tmp_path, capsys, monkeypatch):
    """ENOSPC while writing the cache is the site's error, not a file's: a clear stop, not a rejection."""
    import errno

    rng = np.random.default_rng(SEED + 4)
    _dicom_source(tmp_path / "dicom", _dicom_seeds(tmp_path / "seeds")[:1], 0, rng)
    toml = _write_toml(tmp_path / "site.toml", {"dicom": tmp_path / "dicom"})

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(index.np, "save", full)
    assert cli.main(["check", "--config", str(toml)]) == 2
    err = capsys.readouterr().err
    assert "error of the site" in err and "No space left on device" in err
    monkeypatch.setattr(dicom_io, "decode", full)  # and during a decode, it is not turned into a rejection
    with pytest.raises(OSError, match="No space"):
        index.prepare_site(load_site_config(toml))


@pytest.mark.parametrize("error, code, message", [
    (KeyboardInterrupt(), 130, "interrupted"),
    (MemoryError(), 2, "error of the site (not of a data file): MemoryError"),
    (OSError(122, "Disk quota exceeded"), 2, "Disk quota exceeded"),
])
def test_errors_of_the_site_stop_check_with_a_clear_message(tmp_path, capsys, monkeypatch, error, code, message):
    _dicom_source(tmp_path / "dicom", _dicom_seeds(tmp_path / "seeds")[:1], 0, np.random.default_rng(SEED))
    toml = _write_toml(tmp_path / "site.toml", {"dicom": tmp_path / "dicom"})

    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr(dicom_io, "decode", fail)  # raised while decoding a file: still the site's error
    assert cli.main(["check", "--config", str(toml)]) == code
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_a_source_whose_scan_dies_is_rejected_and_the_others_are_indexed(tmp_path, capsys, caplog):
    """Open-i reports as a truncated NLMCXR_reports.tgz: the archive cannot be listed, so the source's scan stops;
    the source root and each of its images are rejected with the reason, the other source is indexed."""
    import tarfile

    openi = synthesize_site(tmp_path / "openi", "openi", "fz-openi", n_images=8, image_size=32, seed=6).parent / "data"
    with tarfile.open(openi / "NLMCXR_reports.tgz", "w:gz") as tar:
        tar.add(openi / "ecgen-radiology", arcname="ecgen-radiology")
    shutil.rmtree(openi / "ecgen-radiology")
    archive = openi / "NLMCXR_reports.tgz"
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    valid, _ = _dicom_source(tmp_path / "dicom", _dicom_seeds(tmp_path / "seeds")[:2], 0, np.random.default_rng(SEED))
    toml = _write_toml(tmp_path / "site.toml", {"openi": openi, "dicom": tmp_path / "dicom"})
    out = _scan_radiograph_site(toml, [openi, tmp_path / "dicom"], valid, [], capsys, caplog)
    reasons = rejections(out)
    assert "scan of this source stopped early" in reasons[norm(openi)]
    images = sorted(openi.rglob("*.dcm"))
    assert images and all("stopped early" in reasons[norm(p)] for p in images)
    assert out["by_source"] == {"dicom": "<5"}
