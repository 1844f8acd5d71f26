"""Open-i / Indiana University: `ecgen-radiology/*.xml` reports (a folder or the .tgz as distributed)
joined to their images (DICOM or PNG under `images/`) and, when present, to the DICOM metadata table
(`nlmcxr_dicom_metadata.csv[.gz]`, `imageid` + `View Position`). Labels come from the MeSH major and
automatic terms through the ontology's Open-i map."""

from __future__ import annotations

import re
import tarfile
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from client.file_errors import FileProblem, reason_for
from client.sources.base import Record, Rejection, Source, TableError, harmonise_view

SECTIONS = ("COMPARISON", "INDICATION", "FINDINGS", "IMPRESSION")


@dataclass
class OpenIReport:
    report_id: str
    sections: dict[str, str]
    mesh_major: list[str]
    mesh_automatic: list[str]
    images: list[str] = field(default_factory=list)


def parse_report(data: bytes, name: str) -> OpenIReport:
    """One ecgen-radiology XML; raises ValueError with the reason."""
    try:
        root = ET.fromstring(data)
    except ET.ParseError as exc:
        raise FileProblem(f"XML report does not parse ({exc})") from None
    uid = root.find("uId")
    sections = {s: "" for s in SECTIONS}
    for a in root.iter("AbstractText"):
        if a.get("Label") in sections:
            sections[a.get("Label")] = (a.text or "").strip()
    return OpenIReport(
        report_id=uid.get("id", name) if uid is not None else name,
        sections=sections,
        mesh_major=[(m.text or "").strip() for m in root.findall("MeSH/major") if (m.text or "").strip()],
        mesh_automatic=[(m.text or "").strip() for m in root.findall("MeSH/automatic") if (m.text or "").strip()],
        images=[pi.get("id", "") for pi in root.findall("parentImage") if pi.get("id")],
    )


def iter_reports(location: Path) -> Iterator[tuple[str, bytes]]:
    """(name, bytes) of every XML report in a folder or a .tgz archive, in a stable order."""
    if location.is_file() and location.name.endswith((".tgz", ".tar.gz")):
        with tarfile.open(location, "r:gz") as tar:
            for m in sorted((m for m in tar.getmembers() if m.isfile() and m.name.endswith(".xml")),
                            key=lambda m: m.name):
                yield f"{location}!{m.name}", tar.extractfile(m).read()
    else:
        for p in sorted(location.glob("*.xml")):
            yield str(p), p.read_bytes()


def metadata_key(image_id: str) -> str:
    """The DICOM metadata table drops the per-report image counter: CXR1_1_IM-0001-3001 -> CXR1_IM-0001-3001."""
    return re.sub(r"^(CXR\d+)_\d+_(IM-)", r"\1_\2", image_id)


def mesh_terms(term: str) -> list[str]:
    """A MeSH entry and its prefixes, most specific first: 'Lung/hypoinflation/mild' -> ['Lung/hypoinflation/mild',
    'Lung/hypoinflation', 'Lung']."""
    parts = [p.strip() for p in term.split("/")]
    return ["/".join(parts[:k]) for k in range(len(parts), 0, -1)]


class OpenISource(Source):
    kind = "openi"

    def _reports_location(self) -> Path:
        folder = self.root / self.option("reports", "ecgen-radiology")
        if folder.exists():
            return folder
        for archive in (self.root / "NLMCXR_reports.tgz", *sorted(self.root.glob("*.tgz"))):
            if archive.exists():
                return archive
        return folder

    def _metadata(self) -> dict[str, dict]:
        for name in (self.option("metadata", "nlmcxr_dicom_metadata.csv"), "nlmcxr_dicom_metadata.csv.gz"):
            path = self.root / name
            if path.exists():
                try:
                    df = self.table(path)
                    self.require_columns(df, path, ("imageid",))
                except TableError as exc:
                    self.note(exc.path, exc.message + "; continuing without the metadata table")
                    return {}
                return {str(r["imageid"]): r for r in df.to_dict("records")}
        return {}

    def _encode_mesh(self, report: OpenIReport):
        positives = []
        for term in report.mesh_major + report.mesh_automatic:
            match = next((t for t in mesh_terms(term) if self.smap.lookup(t) is not None), None)
            positives.append(match or term.split("/")[0].strip())
        return self.encode(positives)

    def scan(self) -> Iterator[Record | Rejection]:
        boxes = self.load_boxes("boxes.csv")
        location = self._reports_location()
        if not location.exists():
            yield Rejection(str(location),
                            "no Open-i reports (expected an ecgen-radiology/ folder or NLMCXR_reports.tgz)")
            return
        images = self.root / self.option("images", "images")
        metadata = self._metadata()
        for name, data in iter_reports(location):
            try:  # the per-report guard: any error parsing this XML file is its rejection
                report = parse_report(data, name)
            except Exception as exc:
                yield Rejection(name, reason_for(exc))
                continue
            if not report.images:
                yield Rejection(name, "report lists no images (parentImage)")
                continue
            if not report.sections["FINDINGS"]:
                self.note(name,
                          "empty FINDINGS section (labels still come from MeSH; text-based heads see IMPRESSION only)")
            target, mask = self._encode_mesh(report)
            text = " ".join(report.sections[s] for s in ("FINDINGS", "IMPRESSION") if report.sections[s])
            for image_id in report.images:
                path = next((images / f"{image_id}{ext}" for ext in (".dcm", ".png")
                             if (images / f"{image_id}{ext}").exists()),
                            images / f"{image_id}.dcm")
                meta = metadata.get(metadata_key(image_id)) or metadata.get(image_id)
                projection, method, vendor = None, "unknown", ""
                if meta is not None:
                    projection = harmonise_view(meta.get("View Position"))
                    vendor = str(meta.get("Manufacturer", ""))
                reader = "raster" if path.suffix == ".png" else "dicom"  # DICOM without a table view: header at decode
                if projection:
                    method = "metadata"
                yield Record(
                    source=self.kind, boxes=boxes.get(image_id, []), key=image_id, path=path,
                    patient_key=report.report_id, projection=projection,
                    projection_method=method, targets=target, mask=mask, reader=reader, report=text or None,
                    vendor=vendor,
                )
