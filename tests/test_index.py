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

    table = cfg.sources[0].root / "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv"
    ids = {r["PatientID"] for r in csv.DictReader(open(table))}
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


@pytest.mark.parametrize("layout", ["v2020", "original"])
def test_nih_layouts_on_synthetic_files(tmp_path, layout):
    """NIH ChestX-ray14 in its real layout: Data_Entry table (either header) + PNGs under images_00N/images/."""
    from PIL import Image

    root = tmp_path / "nih"
    (root / "images_001" / "images").mkdir(parents=True)
    header = ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
              "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]" + ("," if layout == "original" else ""))
    lines = [header]
    rng = np.random.default_rng(0)
    for i in range(12):
        name = f"{i:08d}_000.png"
        Image.fromarray(rng.integers(0, 255, (40, 40), dtype=np.uint8)).save(root / "images_001" / "images" / name)
        labels = ["No Finding", "Cardiomegaly|Effusion", "Nodule", "Infiltration"][i % 4]
        age, pid = (f"{50 + i:03d}Y", f"{i // 2:08d}") if layout == "original" else (str(50 + i), str(i // 2))
        lines.append(f"{name},{labels},000,{pid},{age},M,{'PA' if i % 3 else 'AP'},2500,2048,0.143,0.143"
                     + ("," if layout == "original" else ""))
    (root / "Data_Entry_2017_v2020.csv").write_text("\n".join(lines) + "\n")
    (tmp_path / "site.toml").write_text('[site]\nname = "nih"\n[[sources]]\nkind = "nih"\nroot = "nih"\n')
    cfg = load_site_config(tmp_path / "site.toml")
    report = prepare_site(cfg)
    assert report.indexed == 12 and not report.rejected
    assert report.by_projection == {"PA": 8, "AP": 4}
    assert report.by_label["cardiomegaly"] == 3 and report.by_label["pleural effusion"] == 3
    assert report.label_mapping["nih:nih"]["unmapped"] == {}  # Infiltration is known and deliberately unmapped
    data = load_split(cfg, None)
    from shared_models.ontology import load_label_set

    assert data.mask[:, load_label_set().index("Kyphosis")].sum() == 0  # NIH cannot express it: masked


def test_check_cli_json_on_a_synthetic_site(synth_sites):
    import json
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "client.cli", "check", "--config", str(synth_sites["mimic"]), "--json"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["indexed"] == 80 and out["can_train"] is True and out["rejected"] == []
    assert set(out) >= {"indexed", "rejected", "by_projection", "by_label", "can_train", "label_mapping"}
    assert "Nodule" in out["label_mapping"]["mimic:data"]["not_annotated"]
    assert all(isinstance(v, int) or v == "<5" for v in out["by_label"].values())


def test_cnn_inferred_projections_are_left_to_the_router(synth_sites, tmp_path):
    import shutil

    site = tmp_path / "pc"
    shutil.copytree(synth_sites["padchest"].parent, site, ignore=shutil.ignore_patterns("work"))
    cfg = load_site_config(site / "site.toml")
    prepare_site(cfg)
    con = sqlite3.connect(cfg.index_path)
    n_cnn = con.execute("SELECT COUNT(*) FROM samples WHERE projection_method = 'cnn'").fetchone()[0]
    assert n_cnn > 0
    assert (load_split(cfg, None).projection < 0).sum() == n_cnn
    toml = (site / "site.toml").read_text().replace("[site]\n", "[site]\ntrust_cnn_projection = true\n")
    (site / "site.toml").write_text(toml)
    assert (load_split(load_site_config(site / "site.toml"), None).projection < 0).sum() == 0
    untrusted = toml.replace('kind = "padchest"', 'kind = "padchest"\ntrust_projection = false')
    (site / "site.toml").write_text(untrusted)
    assert (load_split(load_site_config(site / "site.toml"), None).projection < 0).all()
