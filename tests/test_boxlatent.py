"""Box-latent head (issue 9, first part): sampling inside the box, BL-TTA, the losses, temperature scaling,
Brier / ECE against hand computations, confidence tiers, retrieval ordering and the local index's file form."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from shared_models.boxlatent.head import sample_in_box
from shared_models.boxlatent import (BoxHead, CaseIndex, box_gap, box_loss, brier_score, confidence_tier,
                                     expected_calibration_error, fit_temperature, volume_regulariser)
from shared_models.losses import AsymmetricLoss


def test_samples_lie_inside_the_box_and_tta_averages_them():
    torch.manual_seed(0)
    head = BoxHead(16, 8, 5)
    h = torch.randn(4, 16)
    out = head(h, samples=32, generator=torch.Generator().manual_seed(1))
    c, r = (v.detach() for v in head.box(h))
    assert torch.all(r > 0) and out.logits.shape == (32, 4, 5)
    z = sample_in_box(c, r, 2000, torch.Generator().manual_seed(1))
    assert torch.all((z - c).abs() <= r + 1e-6)  # inside the box, and filling it
    tol = 0.02 * float(r.max())
    assert torch.allclose(z.amax(0), c + r, atol=tol) and torch.allclose(z.amin(0), c - r, atol=tol)
    assert torch.allclose(out.logits, head.classifier(sample_in_box(c, r, 32, torch.Generator().manual_seed(1))))
    assert torch.allclose(out.probabilities(), torch.sigmoid(out.logits).mean(0))
    centre_only = head(h, samples=0)
    assert torch.allclose(centre_only.logits[0], head.classifier(c))
    assert torch.allclose(out.ood_score(), r.log().mean(1))
    # more samples: the BL-TTA average approaches its expectation (here, at the centre for a linear map on z,
    # probabilities are not linear, so compare two large draws instead)
    a = head(h, samples=4000, generator=torch.Generator().manual_seed(2)).probabilities()
    b = head(h, samples=4000, generator=torch.Generator().manual_seed(3)).probabilities()
    assert torch.allclose(a, b, atol=5e-3)


def test_box_gap_and_volume_terms():
    c1, r1 = torch.tensor([[0.0, 0.0]]), torch.tensor([[1.0, 1.0]])
    assert float(box_gap(c1, r1, torch.tensor([[1.5, 0.0]]), torch.tensor([[1.0, 1.0]]))) == 0.0  # overlapping
    assert float(box_gap(c1, r1, torch.tensor([[3.0, -4.0]]), torch.tensor([[0.5, 1.0]]))) == pytest.approx(1.5 + 2.0)
    r = torch.full((3, 4), float(np.exp(-2.0)))
    assert float(volume_regulariser(r)) == pytest.approx(0.0, abs=1e-10)
    assert float(volume_regulariser(r * np.e)) == pytest.approx(1.0)


def _train(invariance_weight: float):
    torch.manual_seed(0)
    head = BoxHead(6, 4, 3)
    x = torch.randn(64, 6)
    y = (x[:, :3] > 0).float()
    m = torch.ones_like(y)
    shifted = x + 0.3 * torch.randn(x.shape, generator=torch.Generator().manual_seed(9))

    def bce(lg, t, mk):
        return (torch.nn.functional.binary_cross_entropy_with_logits(lg, t, reduction="none") * mk).sum() / len(t)

    opt = torch.optim.Adam(head.parameters(), lr=0.05)
    losses = []
    for _ in range(150):
        loss = box_loss(head(x, 4), y, m, bce, other_view=head(shifted, 4), invariance_weight=invariance_weight)
        losses.append(float(loss.detach()))
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        gap = float(box_gap(*head.box(x), *head.box(shifted)).mean())
        acc = float(((head(x, 8).probabilities() > 0.5).float() == y).float().mean())
    return head, losses, gap, acc, (x, y, m)


def test_box_loss_trains_and_the_invariance_term_pulls_augmented_boxes_together():
    head, losses, gap_with, acc, (x, y, m) = _train(1.0)
    _, _, gap_without, _, _ = _train(0.0)
    assert losses[-1] < 0.5 * losses[0] and acc > 0.9
    assert gap_with < 0.5 * gap_without, (gap_with, gap_without)
    assert float(box_loss(head(x, 4), y, m, AsymmetricLoss()).detach()) > 0  # any masked multi-label loss plugs in


def test_temperature_scaling_recovers_a_known_temperature():
    rng = np.random.default_rng(0)
    true_logits = rng.normal(0, 2, (4000, 3))
    y = (rng.random((4000, 3)) < 1 / (1 + np.exp(-true_logits))).astype(float)
    overconfident = true_logits * 3.0  # a model 3x too sure
    t = fit_temperature(overconfident, y, np.ones_like(y))
    assert t == pytest.approx(3.0, rel=0.1)
    with pytest.raises(ValueError, match="annotated"):
        fit_temperature(overconfident, y, np.zeros_like(y))


def test_brier_and_ece_by_hand():
    p = np.array([[0.9, 0.2], [0.8, 0.1], [0.3, 0.6]])
    y = np.array([[1, 0], [0, 0], [0, 1]])
    m = np.array([[1, 1], [1, 0], [1, 1]])  # one entry not annotated
    entries = [(0.9, 1), (0.2, 0), (0.8, 0), (0.3, 0), (0.6, 1)]
    assert brier_score(p, y, m) == pytest.approx(np.mean([(a - b) ** 2 for a, b in entries]))
    # bins (right-closed tenths): 0.2 -> bin 1, 0.3 -> 2, 0.6 -> 5, 0.8 -> 7, 0.9 -> 8; one entry each
    expected = sum(abs(b - a) for a, b in entries) / 5
    assert expected_calibration_error(p, y, m) == pytest.approx(expected)
    assert confidence_tier(0.95) == "high" and confidence_tier(0.03) == "high"
    assert confidence_tier(0.7) == "moderate" and confidence_tier(0.5) == "low"


def test_retrieval_orders_by_overlap_or_centre_and_round_trips(tmp_path):
    centres = np.array([[0.0, 0.0], [0.5, 0.0], [5.0, 5.0]])
    radii = np.array([[1.0, 1.0], [0.2, 0.2], [1.0, 1.0]])
    index = CaseIndex(centres, radii, ["case-0", "case-1", "case-2"], ["a", "b", "c"])
    q_c, q_r = np.array([0.1, 0.0]), np.array([1.0, 1.0])
    assert [cid for cid, _ in index.query(q_c, q_r, k=3, mode="overlap")] == ["case-0", "case-1", "case-2"]
    assert [cid for cid, _ in index.query(np.array([0.6, 0.0]), q_r, k=2, mode="centre")] == ["case-1", "case-0"]
    index.save(tmp_path / "cases")
    back = CaseIndex.load(tmp_path / "cases")
    assert back.case_ids == index.case_ids and back.texts == index.texts and np.array_equal(back.radii, radii)
    with pytest.raises(ValueError, match="mode"):
        index.query(q_c, q_r, mode="cosine")
    with pytest.raises(ValueError, match="same number"):
        CaseIndex(centres, radii, ["only-one"])
