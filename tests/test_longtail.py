import numpy as np
import pytest
import torch

from shared_models.longtail import logit_adjustment, sampling_weights


def test_class_balanced_and_sqrt_sampling_weights():
    targets = np.array([[1, 0], [1, 0], [1, 0], [1, 1], [0, 0]], np.float32)  # class 0: 4 positives, class 1: 1
    mask = np.ones_like(targets)
    assert sampling_weights(targets, mask, "none") is None
    w = sampling_weights(targets, mask, "class-balanced")
    raw = np.array([1 / 4, 1 / 4, 1 / 4, 1.0, 1 / 4])  # image 3 carries the rare class; image 4 has none
    np.testing.assert_allclose(w, raw / raw.sum())
    s = sampling_weights(targets, mask, "sqrt")
    raw = np.array([0.5, 0.5, 0.5, 1.0, 0.5])
    np.testing.assert_allclose(s, raw / raw.sum())
    masked = mask.copy()
    masked[3, 1] = 0  # an unannotated positive does not count
    np.testing.assert_allclose(sampling_weights(targets, masked, "class-balanced"), np.full(5, 0.2))
    with pytest.raises(ValueError):
        sampling_weights(targets, mask, "oversample-everything")


def test_logit_adjustment_is_the_prior_logit():
    adj = logit_adjustment(torch.tensor([0.5, 0.1, 0.0]), tau=1.0)
    assert adj[0] == pytest.approx(0.0, abs=1e-6)
    assert adj[1] == pytest.approx(np.log(0.1 / 0.9), rel=1e-5)
    assert adj[2] < -9  # clamped, finite


def test_train_local_runs_with_every_long_tail_option():
    from client.index import SiteData
    from client.training import train_local
    from shared_models.networks import build_model

    rng = np.random.default_rng(0)
    targets = (rng.random((24, 30)) < 0.1).astype(np.float32)
    data = SiteData(rng.integers(0, 255, (24, 32, 32), dtype=np.uint8), rng.integers(-1, 3, 24), targets,
                    np.ones_like(targets))
    torch.manual_seed(0)
    model = build_model("tiny", 30)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    stats = train_local(model, data, 1, 1e-3, 8, torch.device("cpu"), asl_class_weights=True, sampling="sqrt",
                        logit_adjust_tau=1.0, prevalence=np.full(30, 0.05))
    assert np.isfinite(stats["train_loss"]) and stats["steps"] == 3
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())
