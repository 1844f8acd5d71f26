"""On-disk formats of a synthetic site: PadChest, MIMIC-CXR-JPG, Open-i, and a plain DICOM folder.

Each writer takes the generated images and writes them in the real layout with the real column names,
returning the `[[sources]]` entry for site.toml. Ground-truth lesion boxes go to `boxes.csv` beside the data.
"""

from __future__ import annotations

import csv
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import Image
from pydicom.uid import generate_uid

from client.synth.cohort import SynthImage
from client.synth.dicom_writer import planted_phi, write_dicom
from shared_models.ontology import load_label_set, load_source_map

PADCHEST_CSV = "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv"
PADCHEST_COLUMNS = [
    "ImageID", "ImageDir", "StudyDate_DICOM", "StudyID", "PatientID", "PatientBirth", "PatientSex_DICOM",
    "ViewPosition_DICOM", "Projection", "MethodProjection", "Pediatric", "Modality_DICOM", "Manufacturer_DICOM",
    "PhotometricInterpretation_DICOM", "PixelRepresentation_DICOM", "PixelAspectRatio_DICOM",
    "SpatialResolution_DICOM", "BitsStored_DICOM", "WindowCenter_DICOM", "WindowWidth_DICOM", "Rows_DICOM",
    "Columns_DICOM", "XRayTubeCurrent_DICOM", "Exposure_DICOM", "ExposureInuAs_DICOM", "ExposureTime",
    "RelativeXRayExposure_DICOM", "ReportID", "Report", "MethodLabel", "Labels", "Localizations",
    "LabelsLocalizationsBySentence", "labelCUIS", "LocalizationsCUIS",
]
MIMIC_META_COLUMNS = [
    "dicom_id", "subject_id", "study_id", "PerformedProcedureStepDescription", "ViewPosition", "Rows", "Columns",
    "StudyDate", "StudyTime", "ProcedureCodeSequence_CodeMeaning", "ViewCodeSequence_CodeMeaning",
    "PatientOrientationCodeSequence_CodeMeaning",
]
CHEXPERT_COLUMNS = [
    "Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Enlarged Cardiomediastinum", "Fracture",
    "Lung Lesion", "Lung Opacity", "No Finding", "Pleural Effusion", "Pleural Other", "Pneumonia",
    "Pneumothorax", "Support Devices",
]
FORMATS = ("padchest", "mimic", "openi", "dicom")


def _positive_classes(img: SynthImage, label_set: str) -> list[int]:
    ls = load_label_set(label_set)
    if not img.findings:
        return [ls.index("Normal")]
    return sorted({ls.index(f.name) for f in img.findings})


def _source_terms(source: str, classes: list[int], label_set: str, rng: np.random.Generator) -> list[str]:
    """One source term per positive class (random among synonyms); classes the source cannot express vanish."""
    smap = load_source_map(source, label_set)
    out: list[str] = []
    for c in classes:
        options = smap.terms_for(c)
        if options and not any(c in (smap.lookup(t) or ()) for t in out):
            out.append(str(rng.choice(options)))
    return out


def _write_boxes(root: Path, rows: list[tuple[str, str, float, float, float, float]]) -> None:
    with open(root / "boxes.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["image", "label", "x", "y", "w", "h"])
        for r in rows:
            w.writerow([r[0], r[1], *(f"{v:.1f}" for v in r[2:])])


def _boxes(key: str, img: SynthImage) -> list[tuple[str, str, float, float, float, float]]:
    return [(key, b[0], b[1], b[2], b[3], b[4]) for b in img.boxes]


def write_padchest(images: Iterable[SynthImage], root: Path, site: str, rng: np.random.Generator,
                   label_set: str) -> dict:
    root.mkdir(parents=True, exist_ok=True)
    rows, boxes = [], []
    patient_ids: dict[int, str] = {}
    study_ids: dict[int, str] = {}
    for img in images:
        pid = patient_ids.setdefault(img.patient, str(rng.integers(10**17, 10**18)) + str(rng.integers(10**17, 10**18)))
        sid = study_ids.setdefault(img.study, str(rng.integers(10**17, 10**18)) + str(rng.integers(10**17, 10**18)))
        image_id = (f"{rng.integers(10**17, 10**18)}{rng.integers(10**17, 10**18)}_"
                    f"{''.join(rng.choice(list('abcdefghijklmnopqrstuvwxyz'), 6))}.png")
        image_dir = img.index % 3
        twelve_bit = rng.random() < 0.5
        bits = 12 if twelve_bit else 16
        arr = np.round(img.pixels * ((1 << bits) - 1)).astype(np.uint16)
        (root / str(image_dir)).mkdir(exist_ok=True)
        Image.fromarray(arr).save(root / str(image_dir) / image_id)
        projection = {"PA": "PA", "LAT": "L"}.get(img.projection) or str(rng.choice(["AP", "AP_horizontal"]))
        terms = _source_terms("padchest", _positive_classes(img, label_set), label_set, rng)
        labels = "[" + ", ".join(f"'{' ' * int(rng.random() < 0.3)}{t}'" for t in terms) + "]"
        row = {c: "" for c in PADCHEST_COLUMNS}
        row.update({
            "ImageID": image_id, "ImageDir": image_dir,
            "StudyDate_DICOM": f"20{rng.integers(10, 18)}0{rng.integers(1, 10)}15",
            "StudyID": sid, "PatientID": pid, "PatientBirth": str(rng.integers(1930, 2000)),
            "PatientSex_DICOM": str(rng.choice(["M", "F"])),
            "ViewPosition_DICOM": {"L": "LATERAL"}.get(projection, projection),
            "Projection": projection,
            "MethodProjection": "Manual review of DICOM fields" if rng.random() < 0.8 else "resnet-50.t7",
            "Pediatric": "No", "Modality_DICOM": "CR", "Manufacturer_DICOM": "SYNTHETIC",
            "PhotometricInterpretation_DICOM": "MONOCHROME2", "PixelRepresentation_DICOM": 0,
            "BitsStored_DICOM": bits, "WindowCenter_DICOM": (1 << (bits - 1)) - 1, "WindowWidth_DICOM": (1 << bits) - 1,
            "Rows_DICOM": arr.shape[0], "Columns_DICOM": arr.shape[1], "ReportID": img.study,
            "Report": " ".join(img.report.get(k, "") for k in ("FINDINGS", "IMPRESSION")),
            "MethodLabel": "Physician" if rng.random() < 0.27 else "RNN_model", "Labels": labels,
            "Localizations": "[]", "LabelsLocalizationsBySentence": "[]", "labelCUIS": "[]", "LocalizationsCUIS": "[]",
        })
        rows.append(row)
        boxes += _boxes(image_id, img)
    with open(root / PADCHEST_CSV, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow([""] + PADCHEST_COLUMNS)  # the real file has an unnamed leading index column
        for i, r in enumerate(rows):
            w.writerow([i] + [r[c] for c in PADCHEST_COLUMNS])
    _write_boxes(root, boxes)
    return {"kind": "padchest", "root": str(root)}


def write_mimic(images: Iterable[SynthImage], root: Path, site: str, rng: np.random.Generator,
                label_set: str) -> dict:
    root.mkdir(parents=True, exist_ok=True)
    smap = load_source_map("mimic", label_set)
    meta, studies, boxes, splits = [], {}, [], []
    for img in images:
        subject = 10000000 + img.patient * 37 % 9000000 + img.patient
        study = 50000000 + img.study * 101
        dicom_id = "-".join(f"{rng.integers(0, 16**8):08x}" for _ in range(5))
        rel = Path("files") / f"p{str(subject)[:2]}" / f"p{subject}" / f"s{study}" / f"{dicom_id}.jpg"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.round(img.pixels * 255).astype(np.uint8)).save(root / rel, quality=95)
        view = {"PA": "PA", "AP": "AP"}.get(img.projection) or str(rng.choice(["LATERAL", "LL"]))
        if rng.random() < 0.02:
            view = ""  # missing ViewPosition, as in ~4 % of real rows
        meta.append([dicom_id, subject, study, "CHEST (PA AND LAT)", view, img.pixels.shape[0], img.pixels.shape[1],
                     21800101, 120000.0, "CHEST (PA AND LAT)",
                     {"LATERAL": "lateral", "LL": "left lateral"}.get(view, view.lower()), "Erect"])
        splits.append([dicom_id, study, subject])
        if study not in studies:
            positives = set(_positive_classes(img, label_set))
            row = {}
            for col in CHEXPERT_COLUMNS:
                idx = smap.lookup(col) or ()
                if idx and positives & set(idx):
                    row[col] = "-1.0" if rng.random() < 0.1 else "1.0"
                else:
                    u = rng.random()
                    row[col] = "0.0" if u < 0.15 else ("-1.0" if u < 0.18 and idx else "")
            studies[study] = (subject, row)
            reports = root / "reports" / "files" / f"p{str(subject)[:2]}" / f"p{subject}"
            reports.mkdir(parents=True, exist_ok=True)
            (reports / f"s{study}.txt").write_text(
                "FINAL REPORT\n\n" + "".join(f" {k}: {img.report[k]}\n\n"
                                             for k in ("INDICATION", "COMPARISON", "FINDINGS", "IMPRESSION")))
        boxes += _boxes(dicom_id, img)
    with open(root / "mimic-cxr-2.0.0-metadata.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(MIMIC_META_COLUMNS)
        w.writerows(meta)
    with open(root / "mimic-cxr-2.0.0-chexpert.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["subject_id", "study_id"] + CHEXPERT_COLUMNS)
        for study, (subject, row) in studies.items():
            w.writerow([subject, study] + [row[c] for c in CHEXPERT_COLUMNS])
    _write_boxes(root, boxes)
    return {"kind": "mimic", "root": str(root)}


def write_openi(images: Iterable[SynthImage], root: Path, site: str, rng: np.random.Generator,
                label_set: str) -> dict:
    (root / "ecgen-radiology").mkdir(parents=True, exist_ok=True)
    by_study: dict[int, list[SynthImage]] = {}
    image_ids: dict[int, list[str]] = {}
    boxes, phi_by_patient = [], {}
    for img in images:
        by_study.setdefault(img.study, []).append(img)
        phi = phi_by_patient.setdefault(img.patient, planted_phi(img.patient, site, rng))
        image_id = f"CXR{img.study}_{len(by_study[img.study])}_IM-{img.patient:04d}-{1000 + img.index:04d}"
        view = {"PA": "PA", "AP": "AP"}.get(img.projection) or str(rng.choice(["LL", "LATERAL"]))
        if rng.random() < 0.25:
            view = ""  # a third of real Open-i DICOMs have no View Position
        write_dicom(root / "images" / f"{image_id}.dcm", img.pixels, img.projection, phi,
                    monochrome1=bool(rng.random() < 0.5), bits_stored=int(rng.choice([12, 15])), view_position=view,
                    study_uid=generate_uid(entropy_srcs=[site, str(img.study)]))
        image_ids.setdefault(img.study, []).append(image_id)
        img.pixels = img.pixels[:0]  # the pixels are on disk now; keep memory flat for large sites
        boxes += _boxes(image_id, img)
    for study, imgs in by_study.items():
        first = imgs[0]
        e = ET.Element("eCitation")
        ET.SubElement(e, "uId", id=f"CXR{study}")
        art = ET.SubElement(ET.SubElement(e, "MedlineCitation"), "Article")
        ab = ET.SubElement(art, "Abstract")
        for label in ("COMPARISON", "INDICATION", "FINDINGS", "IMPRESSION"):
            t = ET.SubElement(ab, "AbstractText", Label=label)
            t.text = first.report.get(label, "")
        mesh = ET.SubElement(e, "MeSH")
        terms = _source_terms("openi", _positive_classes(first, label_set), label_set, rng)
        for term in terms or ["No Indexing"]:
            qualifier = str(rng.choice(["", "/mild", "/left", "/right"])) if term != "normal" else ""
            ET.SubElement(mesh, "major").text = term + qualifier
        for image_id in image_ids[study]:
            pi = ET.SubElement(e, "parentImage", id=image_id)
            ET.SubElement(pi, "caption").text = "Chest radiograph."
        ET.ElementTree(e).write(root / "ecgen-radiology" / f"{study}.xml", encoding="utf-8", xml_declaration=True)
    _write_boxes(root, boxes)
    return {"kind": "openi", "root": str(root)}


def write_dicom_folder(images: Iterable[SynthImage], root: Path, site: str, rng: np.random.Generator,
                       label_set: str) -> dict:
    ls = load_label_set(label_set)
    rows, boxes, phi_by_patient = [], [], {}
    for img in images:
        phi = phi_by_patient.setdefault(img.patient, planted_phi(img.patient, site, rng))
        rel = Path("dicom") / f"pt{img.patient:05d}" / f"st{img.study:05d}" / f"im{img.index:06d}.dcm"
        write_dicom(root / rel, img.pixels, img.projection, phi, monochrome1=bool(rng.random() < 0.3),
                    study_uid=generate_uid(entropy_srcs=[site, str(img.study)]))
        rows.append([rel.as_posix(), "|".join(ls.classes[c] for c in _positive_classes(img, label_set))])
        boxes += _boxes(rel.as_posix(), img)
    with open(root / "labels.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "labels"])
        w.writerows(rows)
    _write_boxes(root, boxes)
    return {"kind": "dicom", "root": str(root)}


WRITERS = {"padchest": write_padchest, "mimic": write_mimic, "openi": write_openi, "dicom": write_dicom_folder}
