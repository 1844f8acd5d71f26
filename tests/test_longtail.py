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


def _site(n: int, targets: np.ndarray, seed: int = 0, size: int = 32):
    from client.index import SiteData

    rng = np.random.default_rng(seed)
    return SiteData(rng.integers(0, 255, (n, size, size), dtype=np.uint8), rng.integers(0, 3, n), targets,
                    np.ones_like(targets))


class Recorder:
    """client.training.objective with its loss wrapped: every call's logits, targets, mask and ASL value; with the
    training step's batch indices (client.training._batch) in ``drawn``."""

    def __init__(self, monkeypatch) -> None:
        import client.training as training

        self.calls, self.drawn, self.loss_fns = [], [], []
        real_objective, real_batch = training.objective, training._batch

        def objective(*args, **kwargs):
            loss_fn, offset = real_objective(*args, **kwargs)
            self.loss_fns.append(loss_fn)

            def recorded(logits, y, m):
                value = loss_fn(logits, y, m)
                self.calls.append((logits.detach().clone(), y.clone(), m.clone(), float(value.detach())))
                return value
            return recorded, offset

        def batch(data, idx, *args):
            self.drawn.append(np.asarray(idx).copy())
            return real_batch(data, idx, *args)

        monkeypatch.setattr(training, "objective", objective)
        monkeypatch.setattr(training, "_batch", batch)


class LinearModel(torch.nn.Module):
    """What train_local needs of a model, as one linear layer on the pixels: these tests are about what the loop
    does with the batches and the logits, not about the experts (so they run in a second, not a minute)."""

    def __init__(self, pixels: int, classes: int) -> None:
        super().__init__()
        self.num_classes = classes
        self.fc = torch.nn.Linear(pixels, classes)

    def forward_with_router(self, x: torch.Tensor, projection: torch.Tensor):
        return self.fc(x.flatten(1)), None


def _train(monkeypatch, data, classes: int, **kwargs) -> Recorder:
    from client.training import train_local

    with monkeypatch.context() as patch:
        rec = Recorder(patch)
        torch.manual_seed(0)
        model = LinearModel(data.pixels[0].size, classes)
        opts = {"epochs": 1, "lr": 0.0, "batch_size": 8, **kwargs}
        train_local(model, data, opts.pop("epochs"), opts.pop("lr"), opts.pop("batch_size"), torch.device("cpu"),
                    **opts)
    return rec


def test_logit_adjustment_shifts_the_training_logits_by_tau_log_prior_odds(monkeypatch):
    """With lr = 0 the model never changes, so the logits the loss sees with tau differ from those without by
    exactly tau * log(p / (1 - p)) of the consortium prevalence, at every step."""
    prev = np.array([0.5, 0.2, 0.01, 0.9], np.float32)
    data = _site(24, (np.random.default_rng(1).random((24, 4)) < 0.3).astype(np.float32))
    plain = _train(monkeypatch, data, 4, prevalence=prev)
    tau = 0.7
    adjusted = _train(monkeypatch, data, 4, prevalence=prev, logit_adjust_tau=tau)
    shift = torch.tensor(tau * np.log(prev / (1 - prev)), dtype=torch.float32)
    assert len(plain.calls) == len(adjusted.calls) == 3
    for (a, *_), (b, *_) in zip(plain.calls, adjusted.calls):
        assert torch.allclose(b - a, shift.expand_as(a), atol=1e-5)


def _asl_by_hand(x: np.ndarray, y: np.ndarray, w_pos: np.ndarray, w_neg: np.ndarray) -> float:
    """ASL (gamma- = 4, gamma+ = 0, clip 0.05) with per-class weights on each term, mean over the batch."""
    p = 1 / (1 + np.exp(-x))
    pm = np.maximum(p - 0.05, 0.0)
    pos = -w_pos * np.log(p)
    neg = -w_neg * pm**4 * np.log(1 - pm)
    return float(np.where(y > 0, pos, neg).sum() / len(x))


def test_asl_class_weights_weigh_each_class_by_the_consortium_prevalence(monkeypatch):
    """asl-class-weights: the training loss weighs class c's positives by exp(1 - prev_c) and its negatives by
    exp(prev_c), with the prevalence the server sent (not the site's own)."""
    prev = np.array([0.5, 0.05, 0.01, 0.3], np.float32)
    data = _site(16, (np.random.default_rng(2).random((16, 4)) < 0.4).astype(np.float32))
    for weighted in (False, True):
        rec = _train(monkeypatch, data, 4, prevalence=prev, asl_class_weights=weighted)
        w_pos, w_neg = (np.exp(1 - prev), np.exp(prev)) if weighted else (np.ones(4), np.ones(4))
        for logits, y, _, value in rec.calls:
            assert value == pytest.approx(_asl_by_hand(logits.double().numpy(), y.numpy(), w_pos, w_neg), rel=1e-4)


@pytest.mark.parametrize("mode, rate", [("none", 4 / 100), ("class-balanced", 1 / 2.6),
                                        ("sqrt", 2 / (96 / 60**0.5 + 2))])
def test_sampling_draws_the_tail_images_at_the_stated_rate(monkeypatch, mode, rate):
    """100 images: 60 carry the common class, 4 the rare one, 36 neither. Class-balanced draws each image with
    weight 1 / n of its rarest class (none: as the commonest), so the rare images are drawn with probability
    4 * 1/4 / (60/60 + 4/4 + 36/60) = 1 / 2.6; square-root with 2 / (96 / sqrt(60) + 2); plain shuffling 4 %."""
    targets = np.zeros((100, 2), np.float32)
    targets[:60, 0] = 1
    targets[60:64, 1] = 1
    rec = _train(monkeypatch, _site(100, targets, size=16), 2, epochs=20, batch_size=50, sampling=mode)
    drawn = np.concatenate(rec.drawn)
    assert len(drawn) == 2000
    assert np.mean((drawn >= 60) & (drawn < 64)) == pytest.approx(rate, abs=0.03)  # 2.7 standard errors or more
    if mode == "none":  # every image once per epoch
        assert np.array_equal(np.bincount(drawn, minlength=100), np.full(100, 20))


def test_fedprox_pulls_local_weights_towards_the_global_model(monkeypatch):
    """proximal_mu adds mu/2 ||w - w_global||^2 to the loss: the reported training loss carries the term, and a
    strong pull keeps the weights much closer to the global model than plain local training does."""
    from client.training import train_local

    data = _site(16, (np.random.default_rng(3).random((16, 4)) < 0.3).astype(np.float32), size=16)
    distance = {}
    for mu in (0.0, 50.0):
        torch.manual_seed(0)
        model = LinearModel(16 * 16, 4)
        start = [p.detach().clone() for p in model.parameters()]
        train_local(model, data, 3, 0.01, 8, torch.device("cpu"), proximal_mu=mu)  # 6 steps
        distance[mu] = float(sum(((p.detach() - s) ** 2).sum() for p, s in zip(model.parameters(), start)) ** 0.5)
    assert distance[50.0] < 0.5 * distance[0.0], distance
