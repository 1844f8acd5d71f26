import math

import pytest
import torch

from shared_models.losses import AsymmetricLoss, prevalence_class_weights


def _asl_by_hand(x, y, gn=4.0, gp=0.0, clip=0.05):
    p = 1 / (1 + math.exp(-x))
    if y == 1:
        return -((1 - p) ** gp) * math.log(p)
    pm = max(p - clip, 0.0)
    return -(pm**gn) * math.log(max(1 - pm, 1e-8))


def test_asl_matches_formula():
    logits = torch.tensor([[2.0, -1.0, 0.3], [-3.0, 0.0, 4.0]])
    targets = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    loss = AsymmetricLoss(gamma_neg=4, gamma_pos=0, clip=0.05)(logits, targets)
    expected = sum(_asl_by_hand(float(logits[i, j]), int(targets[i, j])) for i in range(2) for j in range(3)) / 2
    assert float(loss) == __import__("pytest").approx(expected, rel=1e-5)


def test_asl_ignores_masked_entries():
    logits = torch.randn(4, 5)
    targets = (torch.rand(4, 5) < 0.3).float()
    mask = torch.ones(4, 5)
    mask[:, 2] = 0
    loss_fn = AsymmetricLoss()
    a = loss_fn(logits, targets, mask)
    logits2 = logits.clone()
    logits2[:, 2] = 50.0  # anything in a masked column must not matter
    targets2 = targets.clone()
    targets2[:, 2] = 1 - targets2[:, 2]
    assert torch.allclose(a, loss_fn(logits2, targets2, mask))


def test_asl_gradient_flows_and_clip_zeroes_easy_negatives():
    logits = torch.tensor([[-5.0]], requires_grad=True)  # p ~ 0.0067 < clip: shifted prob is 0
    loss = AsymmetricLoss()(logits, torch.zeros(1, 1))
    loss.backward()
    assert float(loss.detach()) == 0.0 and float(logits.grad) == 0.0


def test_prevalence_weights():
    wp, wn = prevalence_class_weights(torch.tensor([0.0, 0.5, 1.0]))
    assert torch.allclose(wp, torch.exp(torch.tensor([1.0, 0.5, 0.0])))
    assert torch.allclose(wn, torch.exp(torch.tensor([0.0, 0.5, 1.0])))


def test_asl_defaults_are_the_papers_settings():
    """AsymmetricLoss() is ASL with gamma- = 4, gamma+ = 0 and clip 0.05 (Ridnik et al.'s multi-label setting)."""
    torch.manual_seed(0)
    logits = 3 * torch.randn(6, 5)
    targets = (torch.rand(6, 5) < 0.4).float()
    expected = sum(_asl_by_hand(float(logits[i, j]), int(targets[i, j])) for i in range(6) for j in range(5)) / 6
    assert float(AsymmetricLoss()(logits, targets)) == __import__("pytest").approx(expected, rel=1e-5)


def test_asl_without_clip_and_with_class_weights():
    """clip 0: the negative term is the plain focal log(1 - p); class weights multiply each class's positive and
    negative terms (w+ = exp(1 - prev), w- = exp(prev))."""
    logits = torch.tensor([[2.0, -1.0, 0.3], [-3.0, 0.5, 4.0]])
    targets = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    for gn, gp in ((2, 1), (1, 0), (0, 1)):  # either focusing exponent alone switches focusing on
        loss = AsymmetricLoss(gamma_neg=gn, gamma_pos=gp, clip=0.0)(logits, targets)
        expected = sum(_asl_by_hand(float(logits[i, j]), int(targets[i, j]), gn=gn, gp=gp, clip=0.0)
                       for i in range(2) for j in range(3)) / 2
        assert float(loss) == pytest.approx(expected, rel=1e-5), (gn, gp)
    assert float(AsymmetricLoss()(torch.zeros(0, 3), torch.zeros(0, 3))) == 0.0  # an empty batch
    prev = torch.tensor([0.5, 0.1, 0.02])
    weighted = AsymmetricLoss(class_weights=prevalence_class_weights(prev))(logits, targets)
    wp, wn = torch.exp(1 - prev), torch.exp(prev)
    expected = sum(_asl_by_hand(float(logits[i, j]), int(targets[i, j]))
                   * float(wp[j] if targets[i, j] else wn[j]) for i in range(2) for j in range(3)) / 2
    assert float(weighted) == pytest.approx(expected, rel=1e-5)


def test_the_bce_loss_option_is_masked_binary_cross_entropy():
    import numpy as np

    from client.index import SiteData
    from client.training import objective
    from shared_models.networks import build_model

    torch.manual_seed(0)
    model = build_model("tiny", 4)
    data = SiteData(np.zeros((3, 8, 8), np.uint8), np.zeros(3, np.int64), np.eye(3, 4, dtype=np.float32),
                    np.ones((3, 4), np.float32))
    loss_fn, _ = objective(model, data, None, False, 0.0, torch.device("cpu"), "bce")
    logits, targets = torch.randn(5, 4), (torch.rand(5, 4) < 0.4).float()
    mask = (torch.rand(5, 4) < 0.7).float()
    expected = (torch.nn.functional.binary_cross_entropy_with_logits(logits, targets, reduction="none")
                * mask).sum() / 5
    assert float(loss_fn(logits, targets, mask)) == pytest.approx(float(expected), rel=1e-5)
    with pytest.raises(ValueError, match="loss 'focal'"):
        objective(model, data, None, False, 0.0, torch.device("cpu"), "focal")


def test_affine_augmentation_keeps_the_anatomy_side_and_refuses_unknown_kinds():
    from client.training import augment

    x = torch.zeros(4, 1, 32, 32)
    x[:, :, 8:24, 2:10] = 1.0  # a bright block on the image's left
    out = augment(x, torch.Generator().manual_seed(0), "affine")
    assert out.shape == x.shape and not torch.equal(out, x)
    left, right = out[:, :, :, :16].mean((1, 2, 3)), out[:, :, :, 16:].mean((1, 2, 3))
    assert bool((left > right).all())  # no flips: the block stays on the left
    with pytest.raises(ValueError, match="augment 'flip'"):
        augment(x, torch.Generator(), "flip")
