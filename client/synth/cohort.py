"""Patients, studies and images of one synthetic site, before any on-disk format is chosen."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from client.synth.catalog import Catalog, ClassSpec
from client.synth.labels import draw_findings
from client.synth.phantom import DeviceProfile, render
from client.synth.reports import write_report


@dataclass
class SynthImage:
    index: int  # running image number within the site
    patient: int
    study: int
    projection: str  # PA / AP / LAT
    findings: list[ClassSpec]
    pixels: np.ndarray  # float32 in [0, 1], MONOCHROME2 sense
    boxes: list[tuple[str, float, float, float, float]]
    report: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class SiteProfile:
    """What makes one hospital differ: projection mix, case mix and imaging chain."""

    projection_mix: tuple[float, float, float] = (0.5, 0.2, 0.3)  # PA, AP, LAT
    prevalence_scale: dict[str, float] = field(default_factory=dict)
    device: DeviceProfile = DeviceProfile()
    second_study_rate: float = 0.3
    min_prevalence: float = 0.003
    label_model: str = "copula"  # or "nih": NIH's real label co-occurrence (client/synth/labels.py)
    view_dependent: bool = False  # a finding looks different on AP and lateral views (client/synth/phantom.py)


def generate(
    catalog: Catalog, n_images: int, image_size: int, profile: SiteProfile, rng: np.random.Generator
) -> Iterator[SynthImage]:
    """Yield ``n_images`` images grouped in studies (one frontal view, sometimes a lateral)."""
    pa, ap, lat = profile.projection_mix
    lateral_rate = lat / max(1e-6, 1.0 - lat)  # studies carry 1 frontal + Bernoulli(q) lateral: LAT share = q/(1+q)
    frontal_pa = pa / max(1e-6, pa + ap)
    n_studies = n_images  # an upper bound: every study has at least one image
    pos = draw_findings(catalog, n_studies, rng, profile.prevalence_scale, profile.min_prevalence, profile.label_model)
    made = patient = study = 0
    while made < n_images:
        patient += 1
        for _ in range(1 + int(rng.random() < profile.second_study_rate)):
            if made >= n_images:
                break
            findings = [catalog.findings[j] for j in np.flatnonzero(pos[study])]
            report = write_report(findings, rng, catalog.held_out)
            views = ["PA" if rng.random() < frontal_pa else "AP"]
            if rng.random() < min(1.0, lateral_rate):
                views.append("LAT")
            study += 1
            for view in views:
                if made >= n_images:
                    break
                pixels, boxes = render(view, findings, image_size, profile.device, rng, profile.view_dependent)
                yield SynthImage(made, patient, study, view, findings, pixels, boxes, report)
                made += 1
