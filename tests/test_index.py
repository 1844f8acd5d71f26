import os
import sqlite3
import time

import numpy as np
import pytest

from client.index import load_split, patient_split, prepare_site
from client.site_config import SiteConfigError, load_site_config


@pytest.mark.parametrize("fmt", ["padchest", "mimic", "openi", "dicom"])
def test_every_format_indexes(synth_sites, fmt):
    cfg = load_site_config(synth_sites[fmt])
    report = prepare_site(cfg)
    assert report.indexed == 80 and not report.rejected
    train = load_split(cfg, "train")
    assert train.pixels.shape[1:] == (32, 32) and train.pixels.dtype == np.uint8
    assert train.targets.shape[1] == 36 and train.mask.shape == train.targets.shape
    assert set(np.unique(train.projection)) <= {-1, 0, 1, 2}


def test_splits_are_patient_level_and_leak_free(synth_sites):
    cfg = load_site_config(synth_sites["dicom"])
    prepare_site(cfg)
    con = sqlite3.connect(cfg.index_path)
    rows = con.execute("SELECT path, split FROM samples").fetchall()
    by_patient = {}
    for path, split in rows:
        by_patient.setdefault(path.rsplit("/dicom/", 1)[1].split("/")[0], set()).add(split)
    assert all(len(s) == 1 for s in by_patient.values())
    salt = b"x" * 32
    assert patient_split(salt, "p1", 0.1, 0.2) == patient_split(salt, "p1", 0.1, 0.2)


def test_cache_is_reused_and_changed_files_are_reread(synth_sites):
    cfg = load_site_config(synth_sites["padchest"])
    prepare_site(cfg)
    again = prepare_site(cfg)
    assert again.decoded == 0 and again.reused == 80
    some_png = next((cfg.sources[0].root / "0").glob("*.png"))
    later = time.time() + 5
    os.utime(some_png, (later, later))
    third = prepare_site(cfg)
    assert third.decoded == 1 and third.reused == 79


def test_index_never_stores_raw_patient_ids(synth_sites):
    cfg = load_site_config(synth_sites["padchest"])
    prepare_site(cfg)
    import csv

    ids = {r["PatientID"] for r in csv.DictReader(open(cfg.sources[0].root / "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv"))}
    blob = cfg.index_path.read_bytes()
    assert not any(i.encode() in blob for i in ids)


def test_bad_site_config_names_the_field(tmp_path):
    p = tmp_path / "site.toml"
    p.write_text('[site]\nname = "x"\n[[sources]]\nroot = "data"\n')
    with pytest.raises(SiteConfigError, match=r"sources\[0\]\.kind"):
        load_site_config(p)


def test_ground_truth_boxes_are_indexed(synth_sites):
    cfg = load_site_config(synth_sites["openi"])
    report = prepare_site(cfg)
    con = sqlite3.connect(cfg.index_path)
    n = con.execute("SELECT COUNT(*) FROM boxes").fetchone()[0]
    assert n == report.boxes > 0
