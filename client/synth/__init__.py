"""Synthetic consortium generator: chest-like phantoms in real on-disk formats (`fedchest-site synth`).

Synthetic data shows that the machinery works; figures measured on it are not clinical results.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np

from client.synth.catalog import load_catalog
from client.synth.cohort import SiteProfile, generate
from client.synth.phantom import DeviceProfile
from client.synth.writers import FORMATS, WRITERS

# Case and projection mix per kind of hospital the format stands for (PA, AP, LAT).
PROFILES = {
    "padchest": dict(projection_mix=(0.55, 0.15, 0.30)),  # general hospital: PA with laterals
    "mimic": dict(projection_mix=(0.25, 0.55, 0.20),  # ICU-heavy: portable AP, devices, effusions
                  prevalence_scale={"Support Devices": 1.6, "central venous catheter": 2.0, "pleural effusion": 1.5,
                                    "atelectasis": 1.4}),
    "openi": dict(projection_mix=(0.50, 0.05, 0.45),  # outpatient: PA + lateral, few devices
                  prevalence_scale={"Support Devices": 0.3, "central venous catheter": 0.3}),
    "dicom": dict(projection_mix=(0.45, 0.30, 0.25)),
}


def site_profile(fmt: str, seed: int, projection_mix: tuple[float, float, float] | None = None,
                 prevalence_scale: dict[str, float] | None = None, real_structure: bool = False) -> SiteProfile:
    """The format's default hospital profile, optionally with another projection mix or case mix; with
    ``real_structure``, NIH's real label co-occurrence and view-dependent appearance."""
    rng = np.random.default_rng([seed, zlib.crc32(fmt.encode())])
    kwargs = dict(PROFILES[fmt])
    if projection_mix is not None:
        if len(projection_mix) != 3 or min(projection_mix) < 0 or not 0.99 < sum(projection_mix) < 1.01:
            raise ValueError(f"projection mix {projection_mix} must be three shares (PA, AP, LAT) summing to 1")
        kwargs["projection_mix"] = tuple(projection_mix)
    if prevalence_scale is not None:
        kwargs["prevalence_scale"] = {**kwargs.get("prevalence_scale", {}), **prevalence_scale}
    if real_structure:
        kwargs.update(label_model="nih", view_dependent=True)
    return SiteProfile(device=DeviceProfile.random(rng), **kwargs)


def synthesize_site(
    out_dir: Path,
    fmt: str,
    name: str,
    n_images: int = 400,
    image_size: int = 64,
    seed: int = 0,
    label_set: str = "cxrlt2026",
    projection_mix: tuple[float, float, float] | None = None,
    prevalence_scale: dict[str, float] | None = None,
    real_structure: bool = False,
    held_out_rate: float = 0.0,
) -> Path:
    """Write one site (data in ``fmt`` under ``out_dir/data``) and its ``site.toml``; returns the toml path.
    ``real_structure``: label sets with NIH's real co-occurrence and long tail, findings that look different on
    AP and lateral views (the benchmark testbed); off, the generator writes what it always has.
    ``held_out_rate`` > 0: the label set's held-out (zero-shot) findings at that rate instead of their real-world
    0.2-3 % (a small site's test split then holds enough of them to score zero-shot prompts)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    catalog = load_catalog(label_set)
    if held_out_rate:
        if not 0 < held_out_rate < 0.5:
            raise ValueError(f"held-out rate {held_out_rate:g}: expected a rate between 0 and 0.5")
        rates = {c.name: c.prevalence for c in catalog.findings}
        held_out = {c: held_out_rate / rates[c] for c in sorted(catalog.held_out)}
        prevalence_scale = {**held_out, **(prevalence_scale or {})}
    unknown = sorted(set(prevalence_scale or {}) - {c.name for c in catalog.findings})
    if unknown:
        raise ValueError(f"prevalence scale for {unknown}: not findings of label set {label_set!r} (the names are "
                         "the label set's, e.g. 'pleural effusion', 'Scoliosis')")
    profile = site_profile(fmt, seed + zlib.crc32(name.encode()), projection_mix, prevalence_scale, real_structure)
    images = generate(catalog, n_images, image_size, profile, rng)
    WRITERS[fmt](images, out_dir / "data", name, rng, label_set)
    return write_site_toml(out_dir, name, fmt, label_set, f"image_size = {image_size}\n")


def write_site_toml(out_dir: Path, name: str, kind: str, label_set: str, extra: str = "") -> Path:
    """The site.toml of a synthetic site: one source of ``kind`` under ``data/``; ``extra`` lines go in [site]."""
    toml = Path(out_dir) / "site.toml"
    toml.write_text(
        "# fedchest site configuration (written by `fedchest-site synth`; SYNTHETIC data)\n"
        "[site]\n"
        f'name = "{name}"\n'
        'work_dir = "work"\n'
        "synthetic = true\n"
        f'label_set = "{label_set}"\n'
        f"{extra}\n"
        "[split]\nval = 0.1\ntest = 0.2\n\n"
        f'[[sources]]\nkind = "{kind}"\nroot = "data"\n'
    )
    return toml
