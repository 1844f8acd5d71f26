"""Open-i / Indiana University: ecgen-radiology XML reports joined to their images (DICOM or PNG)."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterator

from client.sources.base import Record, Rejection, Source, harmonise_view
from client.sources.dicom_folder import read_header


class OpenISource(Source):
    kind = "openi"

    def scan(self) -> Iterator[Record | Rejection]:
        reports = self.root / self.option("reports", "ecgen-radiology")
        images = self.root / self.option("images", "images")
        for xml in sorted(reports.glob("*.xml")):
            try:
                tree = ET.parse(xml).getroot()
            except ET.ParseError as exc:
                yield Rejection(str(xml), f"XML report does not parse: {exc}")
                continue
            uid = tree.find("uId")
            report_id = uid.get("id") if uid is not None else xml.stem
            terms = [(m.text or "").split("/")[0].strip() for tag in ("major", "automatic")
                     for m in tree.findall(f"MeSH/{tag}")]
            target, mask = self.encode([t for t in terms if t])
            sections = {a.get("Label"): (a.text or "") for a in tree.iter("AbstractText")}
            text = " ".join(s for s in (sections.get("FINDINGS"), sections.get("IMPRESSION")) if s)
            parents = tree.findall("parentImage")
            if not parents:
                yield Rejection(str(xml), "report lists no images (parentImage)")
                continue
            for pi in parents:
                image_id = pi.get("id", "")
                path = next((images / f"{image_id}{ext}" for ext in (".dcm", ".png") if (images / f"{image_id}{ext}").exists()),
                            images / f"{image_id}.dcm")
                projection, reader = None, "raster" if path.suffix == ".png" else "dicom"
                if reader == "dicom" and path.exists():
                    hdr = read_header(path)
                    if isinstance(hdr, Rejection):
                        yield hdr
                        continue
                    projection = harmonise_view(getattr(hdr, "ViewPosition", None))
                yield Record(
                    source=self.kind, key=image_id, path=path, patient_key=report_id, projection=projection,
                    projection_method="metadata" if projection else "unknown", targets=target, mask=mask,
                    reader=reader, report=text or None,
                )
