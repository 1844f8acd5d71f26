"""Prompt-driven localisation: box geometry, Hungarian matching, the set loss against its formulas, the box
metrics against a brute-force reference, the localiser's prompt isolation, and the box loaders (synthetic boxes,
NIH's box list and RSNA's stage-2 labels on the real files)."""

from __future__ import annotations

import csv
import io
import zipfile

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import average_precision_score

from client.index import load_split, prepare_site
from client.localization import evaluate_localizer, site_boxes, tally_summary, train_localizer
from client.site_config import load_site_config
from client.sources.base import TableError
from client.sources.rsna import read_rsna_labels
from client.synth import synthesize_site
from shared_models.localization import BoxTally, LocRunSpec, PromptLocalizer, match, set_loss
from shared_models.localization.boxes import iou_matrix, pixel_boxes_to_relative, to_xyxy
from shared_models.localization.metrics import (ap_from_histograms, average_precision, detection_outcomes,
                                                score_histograms)
from shared_models.ontology import load_label_set
from tests.salts import pin_split_salt


def test_relative_boxes_follow_the_aspect_preserving_cache():
    # a 100 x 200 (h x w) image on a 64 px cache: scale 0.32, 32 rows centred (16 px of padding above)
    rel = pixel_boxes_to_relative(np.array([[0, 0, 200, 100], [50, 25, 100, 50]]), 100, 200, 64)
    assert np.allclose(rel[0], [0.5, 0.5, 1.0, 0.5])
    assert np.allclose(rel[1] * 64, [32, 32, 32, 16])


def test_hungarian_matching_is_the_minimum_cost_assignment_not_greedy():
    # region 0 is closest to both targets; greedy would give it target 0 and leave region 1 with target 1 far away
    boxes = torch.tensor([[0.50, 0.50, 0.2, 0.2], [0.20, 0.50, 0.2, 0.2]])
    targets = torch.tensor([[0.45, 0.50, 0.2, 0.2], [0.60, 0.50, 0.2, 0.2]])
    rows, cols = match(boxes, torch.zeros(2), targets)
    assert dict(zip(rows.tolist(), cols.tolist())) == {0: 1, 1: 0}
    # brute force over both assignments with the same cost
    from torchvision.ops import generalized_box_iou

    def cost(a):
        return sum(5 * (boxes[r] - targets[c]).abs().sum()
                   - 2 * generalized_box_iou(to_xyxy(boxes[r:r + 1]), to_xyxy(targets[c:c + 1]))[0, 0]
                   for r, c in enumerate(a))
    assert cost([1, 0]) < cost([0, 1])


def test_set_loss_against_its_formulas():
    boxes = torch.tensor([[[0.3, 0.3, 0.2, 0.2], [0.7, 0.7, 0.1, 0.1]],
                          [[0.5, 0.5, 0.3, 0.3], [0.2, 0.2, 0.1, 0.1]],
                          [[0.5, 0.5, 0.3, 0.3], [0.2, 0.2, 0.1, 0.1]],
                          [[0.5, 0.5, 0.3, 0.3], [0.2, 0.2, 0.1, 0.1]]], requires_grad=True)
    logits = torch.tensor([[0.5, -1.0], [0.2, 0.1], [1.0, 3.0], [0.0, 0.0]], requires_grad=True)
    gt = torch.tensor([[0.32, 0.28, 0.2, 0.25]])
    # pair 0: present with one box; pair 1: absent; pair 2: present, no boxes (weak); pair 3: unannotated
    out = set_loss(boxes, logits, [gt, None, None, None], torch.tensor([1.0, 0.0, 1.0, -1.0]))
    l1 = (boxes[0, 0] - gt[0]).abs().sum()
    from torchvision.ops import generalized_box_iou

    giou = 1 - generalized_box_iou(to_xyxy(boxes[0, :1]), to_xyxy(gt))[0, 0]
    # presence: sigmoid focal loss (alpha 0.25, gamma 2) over the supervised regions, per matched box
    p, t = torch.sigmoid(logits[:2]), torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    p_t = p * t + (1 - p) * (1 - t)
    focal = (0.25 * t + 0.75 * (1 - t)) * (1 - p_t) ** 2 * F.binary_cross_entropy_with_logits(logits[:2], t,
                                                                                            reduction="none")
    presence = focal.sum() / 1
    weak = F.binary_cross_entropy_with_logits(logits[2].max(), torch.tensor(1.0))
    expected = 5 * l1 + 2 * giou + 2 * (presence + weak)
    assert torch.allclose(out["total"], expected, atol=1e-6)
    assert float(out["matched"]) == 1
    out["total"].backward()
    assert boxes.grad[0, 0].abs().sum() > 0  # the matched region learns its box
    assert boxes.grad[0, 1].abs().sum() == 0 and boxes.grad[1:].abs().sum() == 0  # nothing else learns a box
    assert logits.grad[3].abs().sum() == 0  # unannotated pairs are left out
    assert logits.grad[2, 0] == 0 and logits.grad[2, 1] != 0  # weak: the strongest region only


def test_detection_outcomes_match_each_ground_truth_once_in_score_order():
    gt = np.array([[0.5, 0.5, 0.2, 0.2]])
    dets = np.array([[0.5, 0.5, 0.2, 0.2], [0.51, 0.5, 0.2, 0.2], [0.1, 0.1, 0.05, 0.05]])
    assert detection_outcomes(dets, np.array([0.2, 0.9, 0.5]), gt).tolist() == [False, True, False]
    assert iou_matrix(dets[:1], gt)[0, 0] == pytest.approx(1.0)


def _random_detections(rng, images=40):
    per_image = []
    for _ in range(images):
        g = rng.integers(0, 3)
        gt = np.c_[rng.uniform(0.2, 0.8, (g, 2)), rng.uniform(0.1, 0.3, (g, 2))]
        d = rng.integers(1, 5)
        near = gt[rng.integers(0, g, d)] + rng.normal(0, 0.04, (d, 4)) if g else np.zeros((d, 4))
        boxes = np.where(rng.random((d, 1)) < 0.6, near,
                         np.c_[rng.uniform(0.2, 0.8, (d, 2)), rng.uniform(0.1, 0.3, (d, 2))])
        boxes[:, 2:] = np.abs(boxes[:, 2:]) + 0.01
        per_image.append((boxes, rng.random(d), gt))
    return per_image


def test_average_precision_equals_a_brute_force_reference():
    rng = np.random.default_rng(0)
    per_image = _random_detections(rng)
    scores = np.concatenate([s for _, s, _ in per_image])
    tp = np.concatenate([detection_outcomes(b, s, g) for b, s, g in per_image])
    n_gt = sum(len(g) for *_, g in per_image)
    # brute force: precision at every rank where a true positive appears, summed over all ground truths
    order = np.argsort(-scores)
    hits, ref = 0, 0.0
    for k, i in enumerate(order, start=1):
        if tp[i]:
            hits += 1
            ref += hits / k
    assert average_precision(scores, tp, n_gt) == pytest.approx(ref / n_gt)
    # with every ground truth found, it is sklearn's average precision
    found = tp.sum()
    assert average_precision(scores, tp, int(found)) == pytest.approx(average_precision_score(tp, scores))
    # pooled histograms with fine bins give the same AP, and site tallies sum to the pooled tally
    t, f = score_histograms(scores, tp, 100_000)
    assert ap_from_histograms(t, f, n_gt) == pytest.approx(ref / n_gt, abs=1e-9)
    a, b, pooled = BoxTally(1, 50), BoxTally(1, 50), BoxTally(1, 50)
    for k, (bx, s, g) in enumerate(per_image):
        (a if k % 2 else b).add(0, bx, s, g)
        pooled.add(0, bx, s, g)
    a.merge(b)
    assert np.array_equal(a.tp, pooled.tp) and np.array_equal(a.fp, pooled.fp) and a.n_gt[0] == n_gt
    assert a.per_class()["AP50"][0] == pytest.approx(pooled.per_class()["AP50"][0])


def test_a_perfect_localiser_scores_one_and_the_summary_withholds_small_classes():
    tally = BoxTally(2, 20)
    gt = np.array([[0.4, 0.4, 0.2, 0.2]])
    for _ in range(6):
        tally.add(0, np.r_[gt, [[0.8, 0.8, 0.1, 0.1]]], np.array([0.9, 0.1]), gt)
    tally.add(1, gt, np.array([0.9]), gt)
    per = tally.per_class()
    assert per["AP50"][0] == pytest.approx(1.0) and per["mIoU"][0] == pytest.approx(1.0)
    sent = tally_summary(tally, min_count=5)
    assert sent["loc.images"] == [6, 0] and sent["loc.n_gt"] == [6, 0]  # class 1: 1 image < min_count
    assert sum(sent["loc.tp"][20:]) == 0 and sent["loc.iou_sum"][1] == 0


def test_prompts_attend_only_to_their_own_regions():
    torch.manual_seed(0)
    model = PromptLocalizer("loc-tiny", regions=3).eval()
    x, prompts = torch.rand(2, 1, 64, 64), torch.randn(3, 384)
    boxes, logits = model(x, prompts)
    assert boxes.shape == (2, 3, 3, 4) and logits.shape == (2, 3, 3)
    assert boxes.min() >= 0 and boxes.max() <= 1
    changed = prompts.clone()
    changed[2] = torch.randn(384)
    boxes2, logits2 = model(x, changed)
    assert torch.allclose(boxes[:, :2], boxes2[:, :2], atol=1e-6)
    assert torch.allclose(logits[:, :2], logits2[:, :2], atol=1e-6)
    assert not torch.allclose(logits[:, 2], logits2[:, 2])


@pytest.fixture(scope="module")
def boxed_site(tmp_path_factory):
    root = tmp_path_factory.mktemp("loc-site")
    toml = synthesize_site(root, "padchest", "loc-site", n_images=240, seed=3)
    pin_split_salt(toml, 0)
    cfg = load_site_config(toml)
    prepare_site(cfg)
    return cfg


def test_synthetic_boxes_reach_the_right_images_and_classes(boxed_site):
    cfg = boxed_site
    data = load_split(cfg, None)
    boxes = site_boxes(cfg, data)
    assert boxes.boxes and not boxes.unmatched
    names = load_label_set(cfg.label_set).classes
    with open(cfg.sources[0].root / "boxes.csv") as fh:
        written = list(csv.DictReader(fh))
    assert sum(len(v) for v in boxes.boxes.values()) >= len(written)  # a label may map to several classes
    for (i, c), b in boxes.boxes.items():
        assert data.targets[i, c] == 1 and data.mask[i, c] == 1  # a box is always on a positive, annotated class
        assert b.shape[1] == 4 and (b[:, 2:] > 0).all()
    assert {names[c] for _, c in boxes.boxes} <= set(names)


def test_a_short_local_training_moves_boxes_towards_the_ground_truth(boxed_site):
    cfg = boxed_site
    train = load_split(cfg, "train")
    boxes = site_boxes(cfg, train)
    c = load_label_set(cfg.label_set).num_seen
    torch.manual_seed(0)
    prompts = F.normalize(torch.randn(c, 384), dim=1)  # random unit prompts: no text encoder in this test
    model = PromptLocalizer("loc-tiny", 3)
    spec = LocRunSpec(lr=2e-3, batch_size=32)
    history = [train_localizer(model, train, boxes, prompts, spec, epochs=1, seed=e) for e in range(20)]
    # the GIoU term falls slowly and unevenly (first epoch ~1.0; after 20 epochs 0.70-0.80 over eight split salts,
    # one epoch's value ~0.05 either way): compare the mean of the last three epochs with the first
    for key in ("loc_giou_loss", "loc_l1_loss"):
        assert np.mean([h[key] for h in history[-3:]]) < 0.9 * history[0][key], key
    tally = evaluate_localizer(model, train, boxes, prompts)
    assert tally.images.sum() == sum(k < c for _, k in boxes.boxes)  # every seen-class pair with boxes is scored
    assert np.nanmean(tally.per_class()["mIoU"]) > 0


@pytest.mark.real
def test_rsna_stage2_labels_on_the_real_file(real_data):
    path = real_data / "rsna" / "kaggle_stage_2_train_labels.csv.zip"
    studies, bad = read_rsna_labels(path)
    with zipfile.ZipFile(path) as z:
        rows = list(csv.DictReader(io.TextIOWrapper(z.open(z.namelist()[0]), "utf-8")))
    assert not bad and len(studies) == len({r["patientId"] for r in rows})
    assert sum(len(s.boxes) for s in studies.values()) == sum(r["Target"] == "1" for r in rows)
    first_box = next(r for r in rows if r["Target"] == "1")
    box = studies[first_box["patientId"]].boxes[0]
    assert box == ("Lung Opacity", float(first_box["x"]), float(first_box["y"]), float(first_box["width"]),
                   float(first_box["height"]))


def test_rsna_bad_rows_are_named_and_the_rest_kept(tmp_path):
    p = tmp_path / "stage_2_train_labels.csv"
    p.write_text("patientId,x,y,width,height,Target\n"
                 "a,10,20,30,40,1\n"
                 "b,,,,,0\n"
                 "c,10,20,x,40,1\n"
                 "d,1,1,1,1,2\n"
                 "a,50,60,10,10,1\n")
    studies, bad = read_rsna_labels(p)
    assert sorted(studies) == ["a", "b", "c"] and len(studies["a"].boxes) == 2
    assert studies["c"].target == 1 and not studies["c"].boxes  # a bad box keeps its image's label
    reasons = {r.path.rsplit(":", 1)[1]: r.reason for r in bad}
    assert "numeric" in reasons["4"] and "Target '2'" in reasons["5"]
    headless = tmp_path / "no_target.csv"
    headless.write_text("patientId,x,y,width,height\na,10,20,30,40\n")
    with pytest.raises(TableError, match=r"missing required column\(s\) \['Target'\]") as err:
        read_rsna_labels(headless)
    assert err.value.path == str(headless)


def test_localiser_trains_federated_and_localize_draws_an_overlay(tmp_path, monkeypatch):
    """Two sites, two rounds with localizer = true: the summary and registry carry pooled box AP and mIoU equal
    to the sum of the sites' tallies, the checkpoint's localiser moved, the classifier still loads from the same
    checkpoint, and ``fedchest-site localize`` prints boxes and writes an overlay for a synthetic image with a
    planted lesion."""
    import json
    import sqlite3

    from PIL import Image

    from client.cli import main as site_main
    from client.predict import load_global_model
    from consortium.simulation import run_in_process

    sites = tmp_path / "sites"
    # fixed splits: with random salts, site-a's 32-image test split once held too few images with boxes of any
    # class (under min_count), so it sent no localiser tallies
    pin_split_salt(synthesize_site(sites / "a", "padchest", "site-a", n_images=160, image_size=32, seed=1), 0)
    pin_split_salt(synthesize_site(sites / "b", "mimic", "site-b", n_images=160, image_size=32, seed=2), 0)
    out = tmp_path / "run"
    run_in_process({"num-server-rounds": 2, "local-epochs": 1, "model-preset": "tiny", "image-size": 32,
                    "min-nodes": 2, "out-dir": str(out), "sim-sites-dir": str(sites), "localizer": True}, 2)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed"
    last = summary["localization"]["last"]
    assert set(last["sites"]) == {"site-a", "site-b"} and last["pooled"]["per_class"]
    pooled_pairs = sum(e["images_with_boxes"] for e in last["sites"].values())
    assert last["pooled"]["images_with_boxes"] == pooled_pairs
    for c, e in last["pooled"]["per_class"].items():
        assert e["boxes"] == sum(s["per_class"].get(c, {}).get("boxes", 0) for s in last["sites"].values())
        assert 0.0 <= e["AP50"] <= 1.0 and 0.0 <= e["mIoU"] <= 1.0
    con = sqlite3.connect(out / "registry.db")
    assert con.execute("SELECT COUNT(*) FROM metrics WHERE name = 'box_AP50'").fetchone()[0] > 0
    from tests.test_dashboard import _app, _charts

    at = _app(summary["db_url"], monkeypatch, page="localization", run=summary["run_id"])
    assert not at.exception and at.header[0].value == "Localisation" and len(_charts(at)) == 2
    assert set(at.dataframe[0].value["site"]) == {"site-a", "site-b", "pooled"}
    ckpt = out / "checkpoints" / "round-002.pt"
    state = torch.load(ckpt, weights_only=True)["state_dict"]
    assert any(k.startswith("loc.backbone.") for k in state) and any(k.startswith("loc.decoder") or
                                                                     k.startswith("loc.box_head") for k in state)
    load_global_model(ckpt)  # the classifier ignores the localiser's keys
    # a synthetic image with a planted lesion, at 128 px
    from client.synth.catalog import load_catalog
    from client.synth.phantom import DeviceProfile, render

    spec = load_catalog("cxrlt2026").by_name("pleural effusion")
    pixels, boxes = render("PA", [spec], 128, DeviceProfile(), np.random.default_rng(0))
    assert boxes
    image = tmp_path / "lesion.png"
    Image.fromarray((pixels * 255).astype(np.uint8)).save(image)
    overlay = tmp_path / "overlay.png"
    assert site_main(["localize", str(image), "pleural effusion", "left lung", "--checkpoint", str(ckpt),
                      "--out", str(overlay), "--threshold", "0.0"]) == 0
    drawn = np.asarray(Image.open(overlay))
    assert drawn.shape == (128, 128, 3) and (drawn[..., 0] != drawn[..., 1]).any()  # coloured boxes on grey
    assert site_main(["localize", str(image), "x", "--checkpoint", str(tmp_path / "missing.pt")]) == 2


def test_localize_maps_relative_boxes_back_to_the_original_pixels():
    from client.localize import relative_to_pixels

    box = np.array([[30.0, 40.0, 50.0, 20.0]])  # x, y, w, h in a 100 x 200 (h x w) image
    rel = pixel_boxes_to_relative(box, 100, 200, 64)[0]
    assert np.allclose(relative_to_pixels(rel, 100, 200, 64), box[0], atol=1e-3)
    # a box reaching into the padding is cut at the image's edge
    assert np.allclose(relative_to_pixels(np.array([0.5, 0.2, 0.2, 0.2]), 100, 200, 64), (80.0, 0.0, 40.0, 10.0),
                       atol=1e-3)
