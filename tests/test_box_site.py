"""Box-latent head at a site (issue 9): a local round trains and sends the head only, the evaluation summary, the
case index that never appears in anything sent, and `fedchest-site predict --report` on a synthetic image and on
the real chest DICOM."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from client.box_report import DISCLAIMER, report_files
from client.boxlatent import OOD_MAX_IMAGES, box_evaluation, build_site_artefacts
from client.client_app import run_model, update_statistics
from client.index import load_split
from client.local_round import outgoing_state, train_round
from client.privacy import PolicyRefusal
from client.site_config import load_site_config
from server.checkpoints import save_checkpoint
from shared_models.boxlatent import CaseIndex, box_spec
from shared_models.boxlatent.config import spec_config
from shared_models.device import select_device
from shared_models.metrics import HistogramSpec
from shared_models.ontology import load_label_set
from tests.conftest import REPO

LS = load_label_set("cxrlt2026")
BASE = {"model-preset": "tiny", "label-set": "cxrlt2026", "image-size": 32, "local-epochs": 2, "batch-size": 16,
        "lr": 3e-3, "server-round": 1, "seed": 0, "box-latent": True, "box-latent-dim": 16}


@pytest.fixture
def site(padchest_site):
    return padchest_site


def _trained(site):
    model = run_model(BASE, site)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    data = load_split(site, "train")
    stats, privacy = train_round(BASE, site, data, model)
    counts, _, fedavg = update_statistics(model, data, "projection")
    return model, before, outgoing_state(model, site, counts, fedavg), stats, privacy, data


def test_a_round_trains_and_sends_the_head_only(site):
    model, before, sent, stats, privacy, _ = _trained(site)
    assert set(sent) == {k for k in model.state_dict() if k.startswith("box.")}
    assert privacy == {} and stats["steps"] > 0 and stats["box_gap"] >= 0
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in after if k.startswith("backbone."))  # frozen, BN stats too
    assert not torch.equal(before["box.centre.weight"], after["box.centre.weight"])
    with pytest.raises(PolicyRefusal, match="no DP-SGD training"):
        train_round({**BASE, "dp": True, "dp-noise-multiplier": 1.0, "dp-max-grad-norm": 1.0}, site,
                    load_split(site, "train"), run_model(BASE, site))


def test_evaluation_summary(site):
    model, *_ = _trained(site)
    data, val = load_split(site, "test"), load_split(site, "val")
    spec, hist = box_spec(BASE), HistogramSpec()
    probs, out = box_evaluation(model, data, val, spec, select_device(), hist, min_count=0)
    c = LS.num_seen
    assert probs.shape == (len(data), c) and np.all((probs > 0) & (probs < 1))
    for n in (1, 8, 32):
        scored = np.asarray(out[f"box.n{n}.hist_pos"]) .sum() + np.asarray(out[f"box.n{n}.hist_neg"]).sum()
        assert scored == int(data.mask[:, :c].sum())  # every annotated entry once
        table = np.asarray(out[f"box.n{n}.rel_cal"]).reshape(10, 2, 3)
        assert table[..., 0].sum() == int(data.mask[:, :c].sum())
        assert np.isfinite(out[f"box.n{n}.temperature"]) and out[f"box.n{n}.temperature"] > 0
    assert sum(out["box.ood.id"]) == len(data)
    for kind in ("device", "corrupt", "nonchest"):
        assert sum(out[f"box.ood.{kind}"]) == min(len(data), OOD_MAX_IMAGES)
    assert len(out["box.stats.centre"]) == c * 16 and len(out["box.stats.n"]) == c
    # the site's small-count rule: a class with fewer than k positives sends no mean box
    k = 5
    _, strict = box_evaluation(model, data, val, spec, select_device(), hist, min_count=k)
    n = np.asarray(strict["box.stats.n"])
    centres = np.asarray(strict["box.stats.centre"]).reshape(c, 16)
    assert np.all((n == 0) | (n >= k)) and np.all(np.isnan(centres[n == 0]))


def _strings(obj) -> str:
    return json.dumps(obj, default=lambda v: v.tolist() if hasattr(v, "tolist") else str(v))


def test_case_index_never_appears_in_anything_sent(site):
    model, *_ = _trained(site)
    train, val = load_split(site, "train"), load_split(site, "val")
    folder = site.work_dir / "boxlatent" / "test"
    build_site_artefacts(model, train, val, box_spec(BASE), list(LS.seen), folder, select_device())
    index = CaseIndex.load(folder)
    assert any(t and not t.startswith(("Findings:", "No labelled")) for t in index.texts)  # report sentences
    # a second round and an evaluation at the same site, after the index exists
    data = load_split(site, "train")
    train_round({**BASE, "server-round": 2}, site, data, model)
    counts, _, fedavg = update_statistics(model, data, "projection")
    sent = outgoing_state(model, site, counts, fedavg)
    _, metrics = box_evaluation(model, load_split(site, "test"), val, box_spec(BASE), select_device(), HistogramSpec(),
                                site.privacy.min_count)
    text = _strings(metrics)
    assert not any(cid in text for cid in index.case_ids)
    assert not any(t and t in text for t in index.texts)
    values = np.concatenate([np.asarray(v, np.float64).ravel() for v in metrics.values() if isinstance(v, list)]
                            + [v.double().numpy().ravel() for v in sent.values()])
    for boxes in (index.centres, index.radii):
        for row in boxes[:50]:
            assert np.isin(row.astype(np.float64), values).mean() < 0.5  # no training box travels
    assert folder.is_relative_to(site.work_dir)


@pytest.fixture
def box_checkpoint(site, tmp_path):
    model, *_ = _trained(site)
    path, _, _ = save_checkpoint(tmp_path / "ckpt", 1, model.state_dict(), {
        "model_preset": "tiny", "label_set": "cxrlt2026", "classes": list(LS.seen), "image_size": 32,
        "box": spec_config(box_spec(BASE))})
    return path


def test_predict_report_on_a_synthetic_image(site, box_checkpoint):
    image = sorted(site.path.parent.rglob("*.png"))[0]
    (r,) = report_files([image], box_checkpoint, site)
    assert r["samples"] == 8 and r["temperature"] > 0
    assert set(r["ood"]) == {"score", "threshold", "flag"}
    assert all(f["probability"] >= 0.5 and f["tier"] in ("high", "moderate", "low") for f in r["findings"])
    assert len(r["similar_cases"]) == 3 and all(c["case_id"].startswith("case-") for c in r["similar_cases"])
    assert r["draft_report"].startswith(DISCLAIMER) and "Similar prior cases at this site" in r["draft_report"]
    folder = next((site.work_dir / "boxlatent").iterdir())
    stamp = (folder / "calibration.json").stat().st_mtime_ns
    report_files([image], box_checkpoint, site)
    assert (folder / "calibration.json").stat().st_mtime_ns == stamp  # built once per checkpoint


def _site_toml(site, tmp_path):
    """site.toml pointing at the fixture's data and the test's work dir (what the CLI reads)."""
    text = site.path.read_text().replace('work_dir = "work"', f'work_dir = "{site.work_dir}"')
    text = text.replace('root = "data"', f'root = "{site.path.parent / "data"}"')
    path = tmp_path / "site.toml"
    path.write_text(text)
    assert load_site_config(path).work_dir == site.work_dir
    return path


def test_predict_report_cli_on_the_real_chest_dicom(site, box_checkpoint, real_data, tmp_path):
    cmd = [sys.executable, "-m", "client.cli", "predict", str(real_data / "dicom" / "RG1_J2KI.dcm"),
           str(real_data / "dicom" / "RG3_J2KI.dcm"), "--checkpoint", str(box_checkpoint), "--config",
           str(_site_toml(site, tmp_path)), "--report", "--json"]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=300)
    assert r.returncode == 2, r.stderr  # the tibia is refused, the chest reported
    chest, tibia = json.loads(r.stdout)
    assert chest["projection"] == "PA" and chest["projection_from"] == "metadata"
    assert chest["draft_report"].startswith(DISCLAIMER) and len(chest["similar_cases"]) == 3
    assert "not a chest examination" in tibia["error"]


def test_predict_report_needs_a_site_and_a_box_checkpoint(site, box_checkpoint, tmp_path):
    image = str(sorted(site.path.parent.rglob("*.png"))[0])
    r = subprocess.run([sys.executable, "-m", "client.cli", "predict", image, "--checkpoint", str(box_checkpoint),
                        "--report"], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert r.returncode == 2 and "--report needs --config" in r.stderr
    from shared_models.networks import build_model

    plain, _, _ = save_checkpoint(tmp_path / "plain", 1, build_model("tiny", LS.num_seen, image_size=32).state_dict(),
                                  {"model_preset": "tiny", "label_set": "cxrlt2026", "classes": list(LS.seen),
                                   "image_size": 32})
    with pytest.raises(ValueError, match="--report needs a box-latent checkpoint"):
        report_files([image], plain, site)
