import csv
import hashlib
from pathlib import Path

import numpy as np
import pydicom
import pytest

from client.synth import synthesize_site
from client.synth.catalog import load_catalog
from client.synth.labels import draw_findings
from shared_models.ontology import load_label_set


def _digest(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file() and p.suffix != ".dcm":  # DICOM UIDs are random by design
            h.update(p.relative_to(folder).as_posix().encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def test_deterministic_per_seed(tmp_path):
    a = synthesize_site(tmp_path / "a", "padchest", "x", n_images=20, image_size=32, seed=5)
    b = synthesize_site(tmp_path / "b", "padchest", "x", n_images=20, image_size=32, seed=5)
    c = synthesize_site(tmp_path / "c", "padchest", "x", n_images=20, image_size=32, seed=6)
    assert _digest(a.parent / "data") == _digest(b.parent / "data") != _digest(c.parent / "data")


def test_catalog_signatures_are_unique_and_zero_shot_reuses_seen_attributes():
    cat = load_catalog()
    sigs = [c.signature for c in cat.findings]
    assert len(set(sigs)) == len(sigs)
    zs = set(load_label_set().zeroshot)
    seen = [c for c in cat.findings if c.name not in zs]
    for c in cat.findings:
        if c.name in zs:
            for k in range(4):
                assert c.signature[k] in {s.signature[k] for s in seen}, (c.name, k)


def test_label_draws_follow_prevalence_and_co_occur():
    cat = load_catalog()
    pos = draw_findings(cat, 40000, np.random.default_rng(0))
    names = [c.name for c in cat.findings]
    for i, c in enumerate(cat.findings):
        if not c.implies and c.name != "Support Devices":
            assert abs(pos[:, i].mean() - c.prevalence) < 4 * np.sqrt(c.prevalence / 40000) + 1e-3, c.name
    card, eff = pos[:, names.index("cardiomegaly")], pos[:, names.index("pleural effusion")]
    assert (card & eff).mean() > 1.5 * card.mean() * eff.mean()  # positively associated
    cvc, sd = pos[:, names.index("central venous catheter")], pos[:, names.index("Support Devices")]
    assert not (cvc & ~sd).any()


def test_padchest_layout(synth_sites):
    root = synth_sites["padchest"].parent / "data"
    rows = list(csv.DictReader(open(root / "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv")))
    assert {"ImageID", "Projection", "MethodProjection", "Labels", "BitsStored_DICOM"} <= set(rows[0])
    assert {r["Projection"] for r in rows} <= {"PA", "L", "AP", "AP_horizontal"}
    from PIL import Image

    r = rows[0]
    arr = np.asarray(Image.open(root / r["ImageDir"] / r["ImageID"]))
    assert arr.dtype in (np.uint16, np.int32) and arr.max() <= (1 << int(r["BitsStored_DICOM"])) - 1


def test_mimic_layout(synth_sites):
    root = synth_sites["mimic"].parent / "data"
    meta = list(csv.DictReader(open(root / "mimic-cxr-2.0.0-metadata.csv")))
    r = meta[0]
    assert (root / "files" / f"p{r['subject_id'][:2]}" / f"p{r['subject_id']}" / f"s{r['study_id']}"
            / f"{r['dicom_id']}.jpg").exists()
    labels = list(csv.DictReader(open(root / "mimic-cxr-2.0.0-chexpert.csv")))
    values = {v for row in labels for k, v in row.items() if k not in ("subject_id", "study_id")}
    assert values <= {"1.0", "0.0", "-1.0", ""}


def test_dicoms_carry_planted_phi_and_half_are_monochrome1(synth_sites):
    files = list((synth_sites["openi"].parent / "data" / "images").glob("*.dcm"))
    assert files
    photometric = set()
    for f in files:
        ds = pydicom.dcmread(f)
        assert str(ds.PatientName) and ds.PatientID.startswith("MRN") and ds.InstitutionName
        photometric.add(ds.PhotometricInterpretation)
    assert photometric == {"MONOCHROME1", "MONOCHROME2"}


def test_boxes_side_file(synth_sites):
    rows = list(csv.DictReader(open(synth_sites["dicom"].parent / "data" / "boxes.csv")))
    assert rows and all(float(r["w"]) > 0 and float(r["h"]) > 0 for r in rows)


@pytest.mark.real
def test_nih_derived_prevalences_match_the_real_table(real_data):
    import pandas as pd

    df = pd.read_csv(real_data / "nih" / "Data_Entry_2017_v2020.csv.gz", usecols=["Finding Labels"])
    counts = df["Finding Labels"].str.split("|").explode().value_counts()
    cat = load_catalog()
    checked = 0
    for c in cat.findings:
        if c.source.startswith("nih "):
            term, count = c.source.split()[1], int(c.source.split()[2].replace(",", ""))
            assert counts[term] == count, c.name
            assert c.prevalence == pytest.approx(count / len(df), abs=5e-5), c.name
            checked += 1
    assert checked >= 8


@pytest.mark.parametrize("fmt,n", [("padchest", 37), ("openi", 50), ("mimic", 23)])
def test_generator_yields_exactly_the_requested_images(fmt, n):
    from client.synth import site_profile
    from client.synth.cohort import generate

    for seed in range(4):
        images = list(generate(load_catalog(), n, 16, site_profile(fmt, seed), np.random.default_rng(seed)))
        assert len(images) == n
        assert {i.projection for i in images} <= {"PA", "AP", "LAT"}


def test_nih_label_model_draws_nihs_real_co_occurrence():
    """Under the nih label model, the NIH classes' joint law is NIH's (a pair's rate matches the table; effusion
    and atelectasis co-occur well above independence, as in NIH), the other classes keep the copula's marginals,
    and a site's prevalence scale reweights the sets."""
    from client.synth.labels import nih_label_sets

    cat = load_catalog()
    names = [s.name for s in cat.findings]
    sets, counts, annotated = nih_label_sets("cxrlt2026")
    n = 40_000
    pos = draw_findings(cat, n, np.random.default_rng(0), label_model="nih")
    eff, atel = names.index("pleural effusion"), names.index("atelectasis")
    p = counts / counts.sum()
    want_eff = sum(w for s, w in zip(sets, p) if "pleural effusion" in s)
    want_atel = sum(w for s, w in zip(sets, p) if "atelectasis" in s)
    want_both = sum(w for s, w in zip(sets, p) if {"pleural effusion", "atelectasis"} <= set(s))
    assert pos[:, eff].mean() == pytest.approx(want_eff, abs=0.006)
    assert (pos[:, eff] & pos[:, atel]).mean() == pytest.approx(want_both, abs=0.003)
    assert want_both > 2 * want_eff * want_atel  # the real lift the copula only approximates
    copula = draw_findings(cat, n, np.random.default_rng(0))
    other = [i for i, s in enumerate(cat.findings) if s.name not in annotated and not s.implies]
    np.testing.assert_allclose(pos[:, other].mean(0), copula[:, other].mean(0), atol=0.01)
    scaled = draw_findings(cat, n, np.random.default_rng(1), {"pleural effusion": 2.0}, label_model="nih")
    assert scaled[:, eff].mean() > 1.6 * pos[:, eff].mean()
    with pytest.raises(ValueError, match="label model"):
        draw_findings(cat, 10, np.random.default_rng(0), label_model="nihh")


def test_view_dependent_appearance_changes_a_lateral_finding_not_a_pa_one():
    from client.synth.phantom import VIEW_APPEARANCE, DeviceProfile, render

    spec = load_catalog().by_name("Nodule")
    device = DeviceProfile(noise=0.0)

    def lesion(view: str, dependent: bool) -> float:
        with_it, _ = render(view, [spec], 64, device, np.random.default_rng(3), dependent)
        without, _ = render(view, [], 64, device, np.random.default_rng(3), dependent)
        return float(np.abs(with_it - without).max())

    assert lesion("PA", True) == pytest.approx(lesion("PA", False))
    assert lesion("LAT", True) < 0.8 * lesion("LAT", False)
    assert VIEW_APPEARANCE["LAT"][0] < VIEW_APPEARANCE["AP"][0] < VIEW_APPEARANCE["PA"][0]


def test_real_structure_site_is_written_and_the_default_generator_is_unchanged(tmp_path):
    """--real-structure changes the labels a site gets; off (the default) it is the generator as it was: the
    copula draw consumes the random stream first and the label-set draw only follows it under the nih model."""
    plain = synthesize_site(tmp_path / "a", "padchest", "s", n_images=60, image_size=32, seed=5)
    again = synthesize_site(tmp_path / "b", "padchest", "s", n_images=60, image_size=32, seed=5, real_structure=False)
    real = synthesize_site(tmp_path / "c", "padchest", "s", n_images=60, image_size=32, seed=5, real_structure=True)
    table = lambda toml: sorted((toml.parent / "data").glob("*.csv"))[0].read_text()  # noqa: E731
    assert table(plain) == table(again) and table(real) != table(plain)


def test_held_out_rate_plants_the_zero_shot_findings(tmp_path):
    """--held-out-rate draws each held-out class at that rate (their real-world rates are 0.2-3 %) and nothing
    else changes its rate; an out-of-range rate or an unknown class name is refused."""
    from client.index import load_split, prepare_site
    from client.site_config import load_site_config

    ls = load_label_set()
    held = [ls.index(c) for c in ls.zeroshot]
    rates = {}
    for rate in (0.0, 0.15):
        cfg = load_site_config(synthesize_site(tmp_path / f"r{rate}", "padchest", "s", n_images=400, image_size=32,
                                               seed=2, held_out_rate=rate))
        prepare_site(cfg)
        data = [load_split(cfg, s) for s in ("train", "val", "test")]
        targets = np.concatenate([d.targets for d in data])
        rates[rate] = targets[:, held].mean(0)
    assert (rates[0.15] > 0.09).all() and (rates[0.0] < 0.06).all(), rates
    with pytest.raises(ValueError, match="held-out rate"):
        synthesize_site(tmp_path / "bad", "padchest", "s", n_images=10, image_size=32, held_out_rate=0.7)
    with pytest.raises(ValueError, match="not findings"):
        synthesize_site(tmp_path / "bad2", "padchest", "s", n_images=10, image_size=32, prevalence_scale={"nope": 2})
