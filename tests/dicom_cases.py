"""DICOM edge cases written with pydicom from one synthetic chest CR, and a DICOM-folder site to scan them in.

Each case is a file name and what a scan must make of it: ``None`` for "indexed, with the same pixels as the
reference image" (a lossless re-encoding), ``"=other.dcm"`` for indexed with the same pixels as another case,
``"indexed"`` for indexed, or a regular expression the rejection reason must match."""

from __future__ import annotations

import csv
import sqlite3
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.filewriter import dcmwrite
from pydicom.uid import ExplicitVRBigEndian, ImplicitVRLittleEndian, JPEG2000Lossless, JPEGLSLossless, RLELossless

from client.synth.dicom_writer import write_dicom

PYDICOM_FILES = Path(pydicom.__file__).parent / "data" / "test_files"  # ships in the pydicom wheel (MIT)
PHI = {"PatientName": "OKAFOR^ZOE^00417", "PatientID": "MRN88231790417", "PatientBirthDate": "19610704",
       "AccessionNumber": "ACC55512345"}
RT_STRUCTURE_SET = "1.2.840.10008.5.1.4.1.1.481.3"
COMPREHENSIVE_SR = "1.2.840.10008.5.1.4.1.1.88.33"


def write_reference(path: Path, size: int = 64, seed: int = 0) -> Path:
    """A 12-bit MONOCHROME2 chest CR (explicit VR little endian) with planted identifiers."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    pixels = np.clip(0.5 + 0.3 * np.sin(6 * xx) * np.cos(4 * yy) + 0.05 * rng.standard_normal((size, size)), 0, 1)
    write_dicom(path, pixels, "PA", PHI, monochrome1=False)
    return path


def _save(ds: Dataset, path: Path, implicit: bool = False, little: bool = True) -> None:
    dcmwrite(path, ds, implicit_vr=implicit, little_endian=little, force_encoding=True)


def _big_endian(ds: Dataset, path: Path) -> None:
    arr = ds.pixel_array
    ds.file_meta.TransferSyntaxUID = ExplicitVRBigEndian
    ds.PixelData = arr.astype(">u2").tobytes()
    _save(ds, path, little=False)


def _implicit(ds: Dataset, path: Path) -> None:
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    _save(ds, path, implicit=True)


def _no_file_meta(ds: Dataset, path: Path) -> None:
    ds.file_meta, ds.preamble = FileMetaDataset(), None  # neither preamble, DICM prefix nor group 0002
    _save(ds, path, implicit=True)


def _meta_without_transfer_syntax(ds: Dataset, path: Path) -> None:
    del ds.file_meta.TransferSyntaxUID  # the file: preamble and file meta, but no (0002,0010)
    _save(ds, path)


def _compressed_without_transfer_syntax(ds: Dataset, path: Path) -> None:
    ds.compress(RLELossless)
    del ds.file_meta.TransferSyntaxUID
    _save(ds, path)


def _rle(ds: Dataset, path: Path) -> None:
    ds.compress(RLELossless)  # pydicom's own RLE encoder
    _save(ds, path)


def _jpeg2000_without_offsets(ds: Dataset, path: Path) -> None:
    ds.compress(JPEG2000Lossless)
    frames = list(generate_frames(ds.PixelData, number_of_frames=1))
    ds.PixelData = encapsulate(frames, has_bot=False)  # empty Basic Offset Table item
    ds["PixelData"].is_undefined_length = True
    _save(ds, path)


def _jpeg_ls_fragments(fragment: Callable[[], bytes]) -> Callable[[Dataset, Path], None]:
    def edit(ds: Dataset, path: Path) -> None:
        ds.file_meta.TransferSyntaxUID = JPEGLSLossless
        ds.PixelData = encapsulate([fragment()])
        ds["PixelData"].is_undefined_length = True
        _save(ds, path)
    return edit


def real_jpeg_ls_frame() -> bytes | None:
    """The JPEG-LS lossless codestream of pydicom's MR_small (64 x 64, 16-bit signed), when the wheel ships it."""
    path = PYDICOM_FILES / "MR_small_jpeg_ls_lossless.dcm"
    if not path.exists():
        return None
    return next(generate_frames(pydicom.dcmread(path).PixelData, number_of_frames=1))


def _transplant(source: str) -> Callable[[Dataset, Path], None]:
    """The pixel module (and pixel data) of one of pydicom's MR samples in the chest CR's header."""
    def edit(ds: Dataset, path: Path) -> None:
        src = pydicom.dcmread(PYDICOM_FILES / source)
        for k in ("Rows", "Columns", "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation", "PixelData"):
            setattr(ds, k, getattr(src, k))
        for k in ("WindowCenter", "WindowWidth"):
            delattr(ds, k)
        ds.file_meta.TransferSyntaxUID = src.file_meta.TransferSyntaxUID
        if src["PixelData"].is_undefined_length:
            ds["PixelData"].is_undefined_length = True
        _save(ds, path)
    return edit


def _palette(grey_reference: bool) -> Callable[[Dataset, Path], None]:
    """8-bit indices through a grey-ramp colour LUT (R = G = B), or the same indices as MONOCHROME2."""
    def edit(ds: Dataset, path: Path) -> None:
        index = np.round(ds.pixel_array / 4095 * 255).astype(np.uint8)
        ds.BitsAllocated = ds.BitsStored = 8
        ds.HighBit = 7
        for k in ("WindowCenter", "WindowWidth"):
            delattr(ds, k)
        ds.PixelData = index.tobytes()
        if not grey_reference:
            ds.PhotometricInterpretation = "PALETTE COLOR"
            ramp = (np.arange(256, dtype=np.uint16) * 257).tobytes()
            for c in ("Red", "Green", "Blue"):
                setattr(ds, f"{c}PaletteColorLookupTableDescriptor", [256, 0, 16])
                ds[f"{c}PaletteColorLookupTableDescriptor"].VR = "US"
                setattr(ds, f"{c}PaletteColorLookupTableData", ramp)
        _save(ds, path)
    return edit


def _multiframe(ds: Dataset, path: Path) -> None:
    ds.NumberOfFrames = 2
    ds.PixelData = ds.PixelData * 2
    _save(ds, path)


def _non_image(sop_class: str, modality: str) -> Callable[[Dataset, Path], None]:
    def edit(ds: Dataset, path: Path) -> None:
        for k in [e.keyword for e in ds if e.tag.group == 0x0028 or e.keyword == "PixelData"]:
            delattr(ds, k)
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = sop_class
        ds.Modality = modality
        _save(ds, path)
    return edit


def _huge_header(ds: Dataset, path: Path) -> None:
    ds.Rows = ds.Columns = 60000  # 7 GB decoded, claimed by a damaged header over 8 KB of pixel data
    ds.file_meta.TransferSyntaxUID = RLELossless
    ds.PixelData = encapsulate([b"\x00" * 64])
    ds["PixelData"].is_undefined_length = True
    _save(ds, path)


def _infinite_rescale(ds: Dataset, path: Path) -> None:
    ds.RescaleSlope, ds.RescaleIntercept = "1e308", "0"
    del ds.WindowCenter, ds.WindowWidth
    _save(ds, path)


def edge_cases() -> dict[str, tuple[Callable[[Dataset, Path], None], str | None]]:
    frame = real_jpeg_ls_frame()
    cases = {
        "big_endian.dcm": (_big_endian, None),
        "implicit_vr.dcm": (_implicit, None),
        "no_file_meta.dcm": (_no_file_meta, None),
        "meta_without_transfer_syntax.dcm": (_meta_without_transfer_syntax, None),
        "compressed_without_transfer_syntax.dcm": (_compressed_without_transfer_syntax, r"codec cannot be known"),
        "rle.dcm": (_rle, None),
        "jpeg2000_without_offsets.dcm": (_jpeg2000_without_offsets, None),
        "jpeg_ls_garbage.dcm": (_jpeg_ls_fragments(lambda: bytes(range(256)) * 4 + b"\xff\xd9"), r"cannot be decoded"),
        "jpeg_ls_no_end.dcm": (_jpeg_ls_fragments(lambda: bytes(range(256)) * 4), r"without its end-of-image marker"),
        "palette.dcm": (_palette(False), "=grey8.dcm"),
        "grey8.dcm": (_palette(True), "indexed"),
        "multiframe.dcm": (_multiframe, r"multi-frame image \(2 frames\)"),
        "rtstruct.dcm": (_non_image(RT_STRUCTURE_SET, "RTSTRUCT"), r"non-image SOP class \(RT Structure Set"),
        "sr.dcm": (_non_image(COMPREHENSIVE_SR, "SR"), r"non-image SOP class \(Comprehensive SR"),
        "huge_header.dcm": (_huge_header, r"60000x60000 .*corrupt header"),
        "infinite_rescale.dcm": (_infinite_rescale, r"non-finite pixel values"),
    }
    if frame is not None:  # a real JPEG-LS codestream (no JPEG-LS encoder is installed: pyjpegls is absent)
        cases["jpeg_ls.dcm"] = (_transplant("MR_small_jpeg_ls_lossless.dcm"), "=mr_native.dcm")
        cases["mr_native.dcm"] = (_transplant("MR_small.dcm"), "indexed")
        cases["jpeg_ls_truncated.dcm"] = (_jpeg_ls_fragments(lambda: frame[: len(frame) // 3]),
                                          r"end-of-image marker \(FFD9\): truncated")
    return cases


def write_site(root: Path, files: dict[str, str], image_size: int = 32, name: str = "edge") -> Path:
    """A DICOM-folder site over ``root`` listing ``files`` (path relative to root -> labels); returns site.toml."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "labels.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "labels"])
        w.writerows(files.items())
    toml = root.parent / "site.toml"
    toml.write_text(f'[site]\nname = "{name}"\nimage_size = {image_size}\n'
                    f'[[sources]]\nkind = "dicom"\nroot = "{root.name}"\n')
    return toml


def indexed_pixels(cfg) -> dict[str, np.ndarray]:
    """Cached pixels by file name for every indexed image of a site."""
    con = sqlite3.connect(cfg.index_path)
    rows = con.execute("SELECT path, row FROM samples").fetchall()
    con.close()
    cache = np.load(cfg.cache_dir / "pixels.npy")
    return {Path(p).name: cache[r] for p, r in rows}

