"""`fedchest-site evaluate`: a site scores a consortium checkpoint on its own index (figures against scikit-learn,
the per-image scores CSV, and the checkpoint / site mismatches that must stop it with exit 2)."""

from __future__ import annotations

import csv
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, f1_score, roc_auc_score

from client.cli import main
from client.index import load_split, sample_paths
from shared_models.networks import PROJECTIONS, build_model
from shared_models.ontology import load_label_set


def _checkpoint(path: Path, image_size: int = 32, label_set: str = "cxrlt2026", classes=None) -> Path:
    torch.manual_seed(0)
    classes = list(classes if classes is not None else load_label_set(label_set).seen)
    model = build_model("tiny", len(classes))
    torch.save({"state_dict": model.state_dict(), "round": 1, "model_preset": "tiny", "classes": classes,
                "image_size": image_size, "label_set": label_set, "run_id": "test-run"}, path)
    return path


def _evaluate(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "client.cli", "evaluate", *args], capture_output=True, text=True,
                          timeout=300)


def _evaluate_here(capsys, *args: str) -> tuple[int, str, str]:
    """The CLI in this process (no torch import per call): exit code, stdout, stderr."""
    code = main(["evaluate", *args])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture
def site(padchest_site, tmp_path):
    """The synthetic PadChest site (32 px, indexed) in a folder of its own: a site.toml whose work dir is the
    fixture's index, so the CLI reads exactly what the fixture built."""
    text = padchest_site.path.read_text()
    data_root = padchest_site.sources[0].root
    text = text.replace('work_dir = "work"', f'work_dir = "{padchest_site.work_dir}"').replace(
        f'root = "{data_root.name}"', f'root = "{data_root}"')
    toml = tmp_path / "site.toml"
    toml.write_text(text)
    return dataclasses.replace(padchest_site, path=toml)


def test_evaluate_matches_scikit_learn_on_the_written_scores(site, tmp_path):
    ckpt = _checkpoint(tmp_path / "round-001.pt")
    scores = tmp_path / "out" / "scores.csv"
    r = _evaluate("--checkpoint", str(ckpt), "--config", str(site.path), "--scores", str(scores), "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    data = load_split(site, None)
    with scores.open() as f:
        rows = list(csv.reader(f))
    classes = list(load_label_set().seen)
    assert rows[0] == ["image", *classes]
    names = [Path(p).name for p in sample_paths(site, data.rows)]
    assert [row[0] for row in rows[1:]] == names and len(names) == len(data) == out["all"]["images"]
    probs = np.array([[float(v) for v in row[1:]] for row in rows[1:]])
    k = out["min_count"]
    checked = 0
    for j, name in enumerate(classes):
        sel = data.mask[:, j] > 0
        y = data.targets[sel, j] > 0.5
        entry = out["all"]["classes"].get(name)
        if not sel.any():
            assert entry is None and name in out["all"]["not_annotated"]
            continue
        assert entry["positives"] == int(y.sum()) and entry["negatives"] == int((~y).sum())
        if y.sum() < k or y.all():
            assert entry["scored"] is False and "auroc" not in entry
            continue
        p = probs[sel, j]  # the CSV holds every float32 score exactly (ties and order as scored)
        assert entry["auroc"] == pytest.approx(roc_auc_score(y, p), abs=1e-12)
        assert entry["ap"] == pytest.approx(average_precision_score(y, p), abs=1e-12)
        assert entry["f1"] == pytest.approx(f1_score(y, p > 0.5, zero_division=0.0), abs=1e-9)
        checked += 1
    assert checked >= 3 and out["all"]["scored_classes"] == checked
    scored = [e["auroc"] for e in out["all"]["classes"].values() if e["scored"]]
    assert out["all"]["mAUC"] == pytest.approx(np.mean(scored))
    assert set(out["by_projection"]) <= {*PROJECTIONS, "unknown"} and out["by_projection"]
    assert sum(s["images"] for s in out["by_projection"].values()) == len(data)


def test_evaluate_split_and_console_table(site, tmp_path, capsys):
    ckpt = _checkpoint(tmp_path / "round-001.pt")
    code, out, err = _evaluate_here(capsys, "--checkpoint", str(ckpt), "--config", str(site.path), "--split", "test")
    assert code == 0, err
    assert f"on split test: {len(load_split(site, 'test'))} images" in out
    assert "AUROC" in out and "mAUC" in out and "not scored (fewer than 5 positives)" in out


@pytest.mark.parametrize("case, expected", [
    ("image-size", "image size mismatch: checkpoint"),
    ("label-set", "label set mismatch: checkpoint"),
    ("classes", "label set mismatch: checkpoint"),
    ("unreadable", "not a readable fedchest checkpoint"),
    ("missing", "not a readable fedchest checkpoint"),
])
def test_evaluate_refuses_a_checkpoint_that_does_not_fit_the_site(site, tmp_path, capsys, case, expected):
    path = tmp_path / "round-001.pt"
    if case == "image-size":
        _checkpoint(path, image_size=64)
    elif case == "label-set":
        _checkpoint(path, label_set="cxrlt2024")
    elif case == "classes":
        _checkpoint(path, classes=["Normal", "cardiomegaly"])
    elif case == "unreadable":
        path.write_bytes(b"not a checkpoint")
    scores = tmp_path / "scores.csv"
    code, _out, err = _evaluate_here(capsys, "--checkpoint", str(path), "--config", str(site.path), "--scores",
                                     str(scores))
    assert code == 2 and expected in err and str(path) in err and not scores.exists()


def test_evaluate_on_an_unindexed_site_says_to_run_check(synth_sites, tmp_path, capsys):
    text = synth_sites["mimic"].read_text()
    toml = synth_sites["mimic"].parent / "unindexed.toml"
    toml.write_text(text.replace('work_dir = "work"', f'work_dir = "{tmp_path / "empty-work"}"'))
    code, _out, err = _evaluate_here(capsys, "--checkpoint", str(_checkpoint(tmp_path / "round-001.pt")), "--config",
                                     str(toml))
    assert code == 2 and "fedchest-site check" in err
