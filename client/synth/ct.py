"""Synthetic chest-CT sites (`fedchest-site synth --format ct-rate | dicom-ct`): phantom volumes in HU (air, body,
lungs, heart, spine) with one finding per positive CT-RATE-18 class planted at a known axial depth, CT-RATE-style
reports whose sentences name the findings, some with a "(series 2, image Y)" reference to the slice at the
finding's centre, so that snippet localisation has targets. SYNTHETIC: it shows the machinery works.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from shared_models.ontology import load_label_set

CT_FORMATS = ("ct-rate", "dicom-ct")
BODY_HU = -100.0  # the body outside the organs: fat, against which soft-tissue findings show
MIN_VOXELS = 2.0
SERIES = 2  # the series number the synthetic reports cite

# class -> (HU, radius mm, where: (y, x) as fractions of the body half-axes from the centre; y > 0 posterior),
# prevalence, report phrase. One blob per positive class; Cardiomegaly enlarges the heart instead. A blob's radius
# is at least two voxels of the volume (``MIN_VOXELS``): smaller ones vanish in the coarse grids a CPU trains on.
FINDINGS = {
    "Medical material": (1000.0, 4.0, (-0.7, 0.2), 0.15, "a central venous catheter tip"),
    "Arterial wall calcification": (500.0, 3.0, (0.1, 0.15), 0.30, "aortic wall calcification"),
    "Cardiomegaly": (0.0, 0.0, (0.0, 0.0), 0.15, "an enlarged heart"),
    "Pericardial effusion": (10.0, 6.0, (-0.35, -0.35), 0.08, "a pericardial effusion"),
    "Coronary artery wall calcification": (700.0, 2.5, (-0.3, -0.1), 0.25, "coronary artery calcification"),
    "Hiatal hernia": (-500.0, 7.0, (0.25, 0.05), 0.08, "a hiatal hernia"),
    "Lymphadenopathy": (55.0, 6.0, (-0.2, 0.1), 0.20, "enlarged mediastinal lymph nodes"),
    "Emphysema": (-990.0, 8.0, (-0.2, 0.55), 0.20, "centrilobular emphysema"),
    "Atelectasis": (10.0, 7.0, (0.45, -0.5), 0.20, "subsegmental atelectasis"),
    "Lung nodule": (35.0, 4.0, (-0.1, -0.55), 0.30, "a solid lung nodule"),
    "Lung opacity": (-450.0, 8.0, (0.1, 0.55), 0.25, "a ground-glass opacity"),
    "Pulmonary fibrotic sequela": (-250.0, 6.0, (0.3, 0.6), 0.15, "fibrotic sequelae"),
    "Pleural effusion": (15.0, 8.0, (0.6, -0.6), 0.15, "a pleural effusion"),
    "Mosaic attenuation pattern": (-700.0, 9.0, (-0.4, -0.5), 0.06, "a mosaic attenuation pattern"),
    "Peribronchial thickening": (-100.0, 4.0, (0.0, 0.35), 0.10, "peribronchial thickening"),
    "Consolidation": (30.0, 9.0, (0.35, 0.45), 0.12, "a consolidation"),
    "Bronchiectasis": (-950.0, 3.0, (0.2, -0.35), 0.08, "bronchiectasis"),
    "Interlobular septal thickening": (-200.0, 5.0, (-0.5, 0.6), 0.07, "interlobular septal thickening"),
}


@dataclass
class CTCase:
    hu: np.ndarray  # (Z, Y, X) float32
    spacing: tuple[float, float, float]
    labels: np.ndarray  # (18,) 0/1 in the ctrate18 order
    depth: dict[str, int]  # positive class -> slice index of its centre
    report_findings: str
    report_impressions: str


def _ellipsoid(shape, centre, radii) -> np.ndarray:
    z, y, x = np.ogrid[: shape[0], : shape[1], : shape[2]]
    return (((z - centre[0]) / radii[0]) ** 2 + ((y - centre[1]) / radii[1]) ** 2
            + ((x - centre[2]) / radii[2]) ** 2 <= 1)


def phantom(shape: tuple[int, int, int], spacing: tuple[float, float, float], rng: np.random.Generator,
            classes: tuple[str, ...], prevalence: float = 1.0, reference_rate: float = 0.6) -> CTCase:
    """One volume: the anatomy, then the findings drawn for it, and its report."""
    nz, ny, nx = shape
    dz, dy, dx = spacing
    hu = np.full(shape, -1000.0, np.float32)
    cy, cx = ny / 2, nx / 2
    by, bx = ny * rng.uniform(0.32, 0.38), nx * rng.uniform(0.42, 0.47)  # body half-axes (voxels)
    yy, xx = np.ogrid[:ny, :nx]
    body = ((yy - cy) / by) ** 2 + ((xx - cx) / bx) ** 2 <= 1
    hu[:, body] = BODY_HU
    z_top = nz * rng.uniform(0.9, 1.0)
    for side in (-1, 1):  # lungs: the upper 85 % of the volume
        lung = _ellipsoid(shape, (z_top * 0.55, cy - by * 0.05, cx + side * bx * 0.45),
                          (z_top * 0.45, by * 0.7, bx * 0.35))
        hu[lung] = -850.0
    labels = (rng.random(len(classes)) < np.array([FINDINGS[c][3] * prevalence for c in classes])).astype(np.float32)
    heart_scale = 1.45 if labels[classes.index("Cardiomegaly")] else 1.0
    heart_centre = (z_top * 0.35, cy - by * 0.3, cx - bx * 0.15)
    hu[_ellipsoid(shape, heart_centre, tuple(r * heart_scale for r in (6.0 / dz * 4, by * 0.3, bx * 0.22)))] = 45.0
    spine = ((yy - (cy + by * 0.75)) / (by * 0.15)) ** 2 + ((xx - cx) / (bx * 0.1)) ** 2 <= 1
    hu[:, spine] = 700.0
    depth: dict[str, int] = {}
    sentences = []
    for c, present in zip(classes, labels):
        value, radius, (fy, fx), _, phrase = FINDINGS[c]
        if not present:
            continue
        z0 = int(rng.integers(max(1, int(nz * 0.15)), max(2, int(z_top * 0.9))))
        if c == "Cardiomegaly":
            z0 = int(round(heart_centre[0]))
        else:
            centre = (z0, cy + fy * by, cx + fx * bx)
            r = max(radius, MIN_VOXELS * max(dz, dy, dx))
            hu[_ellipsoid(shape, centre, (r / dz, r / dy, r / dx))] = value
        depth[c] = z0
        where = "" if rng.random() > reference_rate else f" (series {SERIES}, image {z0 + 1})"
        sentences.append(f"There is {phrase}{where}.")
    hu += rng.normal(0, 12.0, shape).astype(np.float32)  # scanner noise
    negatives = [c for c, p in zip(classes, labels) if not p]
    for c in rng.choice(negatives, size=min(3, len(negatives)), replace=False) if negatives else []:
        sentences.append(f"No {FINDINGS[c][4].removeprefix('a ').removeprefix('an ')}.")
    rng.shuffle(sentences)
    found = [FINDINGS[c][4] for c, p in zip(classes, labels) if p]
    impressions = ("; ".join(found).capitalize() + ".") if found else "No acute cardiopulmonary abnormality."
    return CTCase(hu, spacing, labels, depth,
                  "Trachea and main bronchi are patent. " + " ".join(sentences), impressions)


def _cases(n: int, shape, spacing, seed: int, name: str):
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    classes = load_label_set("ctrate18").classes
    for i in range(n):
        yield i, phantom(shape, spacing, rng, classes), rng


def write_ct_rate(out: Path, name: str, n: int, shape, spacing, seed: int) -> None:
    """CT-RATE layout: dataset/{train,valid}_fixed/<split>_<pid>/<split>_<pid>_a/<split>_<pid>_a_1.nii.gz, the
    reports, metadata and label CSVs; stored values are HU + 1024 (slope 1, intercept -1024, as the metadata says)."""
    import nibabel as nib

    classes = load_label_set("ctrate18").classes
    rows = {"train": ([], [], []), "valid": ([], [], [])}
    for i, case, _rng in _cases(n, shape, spacing, seed, name):
        split = "valid" if i % 5 == 4 else "train"
        vol = f"{split}_{i + 1}_a_1"
        path = out / "dataset" / f"{split}_fixed" / f"{split}_{i + 1}" / f"{split}_{i + 1}_a" / f"{vol}.nii.gz"
        path.parent.mkdir(parents=True, exist_ok=True)
        raw = np.clip(np.round(case.hu + 1024), -32768, 32767).astype(np.int16)
        dz, dy, dx = case.spacing
        img = nib.Nifti1Image(np.transpose(raw, (2, 1, 0)), np.diag([dx, dy, dz, 1.0]))
        nib.save(img, str(path))
        reports, meta, labels = rows[split]
        reports.append({"VolumeName": f"{vol}.nii.gz", "ClinicalInformation_EN": "Not given.",
                        "Technique_EN": "Non-contrast chest CT.", "Findings_EN": case.report_findings,
                        "Impressions_EN": case.report_impressions})
        meta.append({"VolumeName": f"{vol}.nii.gz", "RescaleSlope": 1.0, "RescaleIntercept": -1024.0,
                     "XYSpacing": f"[{dy}, {dx}]", "ZSpacing": dz})
        labels.append({"VolumeName": f"{vol}.nii.gz", **{c: int(v) for c, v in zip(classes, case.labels)}})
    for split, (reports, meta, labels) in rows.items():
        long = "validation" if split == "valid" else "train"
        for folder, fname, data in (("radiology_text_reports", f"{long}_reports.csv", reports),
                                    ("metadata", f"{long}_metadata.csv", meta),
                                    ("multi_abnormality_labels", f"{split}_predicted_labels.csv", labels)):
            (out / "dataset" / folder).mkdir(parents=True, exist_ok=True)
            pd.DataFrame(data).to_csv(out / "dataset" / folder / fname, index=False)


def write_dicom_ct(out: Path, name: str, n: int, shape, spacing, seed: int) -> None:
    """A folder per series of CT slices (InstanceNumber 1 = the lowest slice, ImagePositionPatient z rising) and
    labels.csv with series, labels and report; planted identifiers in the headers for the privacy tests."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    from client.synth.dicom_writer import planted_phi

    classes = load_label_set("ctrate18").classes
    rows = []
    for i, case, rng in _cases(n, shape, spacing, seed, name):
        series = f"series/{i:04d}"
        phi = planted_phi(i, name, rng)
        study, series_uid = generate_uid(), generate_uid()
        dz, dy, dx = case.spacing
        order = rng.permutation(shape[0])  # files written in shuffled order: the reader must sort by position
        for k in order:
            meta = FileMetaDataset()
            meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"  # CT Image Storage
            meta.MediaStorageSOPInstanceUID = generate_uid()
            meta.TransferSyntaxUID = ExplicitVRLittleEndian
            ds = Dataset()
            ds.file_meta = meta
            ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
            ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SeriesNumber = study, series_uid, SERIES
            ds.Modality, ds.BodyPartExamined, ds.Manufacturer = "CT", "CHEST", "SYNTHETIC"
            for key, value in phi.items():
                setattr(ds, key, value)
            ds.InstanceNumber = int(k) + 1
            ds.ImagePositionPatient = [-dx * shape[2] / 2, -dy * shape[1] / 2, float(k) * dz - 300.0]
            ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
            ds.PixelSpacing = [dy, dx]
            ds.SliceThickness = dz
            ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
            ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
            ds.Rows, ds.Columns = shape[1], shape[2]
            ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
            ds.PixelData = np.clip(np.round(case.hu[k] + 1024), -32768, 32767).astype(np.int16).tobytes()
            path = out / series / f"IM{rng.integers(10**6):06d}_{k:04d}.dcm"
            path.parent.mkdir(parents=True, exist_ok=True)
            ds.save_as(path, enforce_file_format=True)
        positives = [c for c, v in zip(classes, case.labels) if v]
        rows.append({"series": series, "labels": "|".join(positives) or "Normal",
                     "report": f"Findings: {case.report_findings} Impression: {case.report_impressions}"})
    pd.DataFrame(rows).to_csv(out / "labels.csv", index=False)


CT_WRITERS = {"ct-rate": write_ct_rate, "dicom-ct": write_dicom_ct}


def synthesize_ct_site(out_dir: Path, fmt: str, name: str, n_volumes: int = 40,
                       shape: tuple[int, int, int] = (40, 64, 64),
                       spacing: tuple[float, float, float] = (5.0, 5.0, 5.0),
                       seed: int = 0) -> Path:
    """Write one CT site (data under ``out_dir/data``) and its ``site.toml``; returns the toml path."""
    if fmt not in CT_WRITERS:
        raise ValueError(f"unknown CT format {fmt!r}; expected one of {', '.join(CT_WRITERS)}")
    out_dir = Path(out_dir)
    CT_WRITERS[fmt](out_dir / "data", name, n_volumes, tuple(shape), tuple(spacing), seed)
    from client.synth import write_site_toml

    return write_site_toml(out_dir, name, fmt, "ctrate18")
