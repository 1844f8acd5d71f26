import json
import subprocess
import sys

import numpy as np
import torch
from PIL import Image

from shared_models.networks import PROJECTIONS, build_model
from shared_models.ontology import load_label_set
from shared_models.tta import DEFAULT_TTA, predict_with_tta


def test_tta_averages_probabilities_over_the_transforms():
    torch.manual_seed(0)
    model = build_model("tiny", 4).eval()
    x, proj = torch.randn(2, 1, 32, 32), torch.tensor([0, -1])
    same = predict_with_tta(model, x, proj, {"a": lambda t: t, "b": lambda t: t})
    assert torch.allclose(same, torch.sigmoid(model(x, proj)), atol=1e-6)
    tta = predict_with_tta(model, x, proj)
    manual = torch.stack([torch.sigmoid(model(t(x), proj)) for t in DEFAULT_TTA.values()]).mean(0)
    assert torch.allclose(tta, manual, atol=1e-6)
    assert "hflip" not in " ".join(DEFAULT_TTA)  # anatomy is not mirror-symmetric


def _checkpoint(tmp_path):
    torch.manual_seed(0)
    classes = load_label_set().seen
    model = build_model("tiny", len(classes))
    path = tmp_path / "round-001.pt"
    torch.save({"state_dict": model.state_dict(), "round": 1, "model_preset": "tiny", "classes": list(classes),
                "image_size": 32}, path)
    return path


def test_predict_cli(tmp_path, synth_sites):
    ckpt = _checkpoint(tmp_path)
    png = tmp_path / "x.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)).save(png)
    dcm = next((synth_sites["dicom"].parent / "data" / "dicom").rglob("*.dcm"))
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not an image")
    r = subprocess.run([sys.executable, "-m", "client.cli", "predict", str(png), str(dcm), str(bad), "--checkpoint",
                        str(ckpt), "--json", "--tta"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2  # one file could not be read
    out = json.loads(r.stdout)
    assert out[0]["projection_from"] == "router" and out[0]["projection"] in PROJECTIONS
    assert out[1]["projection_from"] == "metadata"
    assert len(out[0]["probabilities"]) == 30 and all(0 <= p <= 1 for p in out[0]["probabilities"].values())
    assert "cannot decode" in out[2]["error"]
    r = subprocess.run([sys.executable, "-m", "client.cli", "predict", str(png), "--checkpoint", str(ckpt),
                        "--projection", "LAT"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "projection LAT (given)" in r.stdout


def test_predict_refuses_a_foreign_checkpoint(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"weights": {}}, path)
    r = subprocess.run([sys.executable, "-m", "client.cli", "predict", str(path), "--checkpoint", str(path)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "lacks 'state_dict'" in r.stderr and "Traceback" not in r.stderr
