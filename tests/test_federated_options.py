"""The options that close the federated / pooled gap, each asserted by its effect: server momentum (FedAvgM), the
learning-rate schedule over rounds sent in each round's train config, FedBN (normalisation layers kept at the
site, never sent, put back each round) and FedProx's proximal term."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord

from client import fedbn
from client.index import SiteData
from client.local_round import outgoing_state
from client.training import train_local
from server.aggregation import RunningMean, ServerOptimizer, SiteUpdate
from server.records import to_record
from server.schedule import round_lr
from server.validation import reference_of, validate_update
from shared_models.networks import build_model, group_keys, norm_keys
from tests.test_run_options import _strategy, in_a_run  # noqa: F401 - fixture
from tests.test_rounds import FakeGrid

CLASSES = 4


def _data(n: int = 24, seed: int = 0, brightness: float = 0.0) -> SiteData:
    rng = np.random.default_rng(seed)
    pixels = np.clip(rng.normal(128 + brightness, 40, (n, 32, 32)), 0, 255).astype(np.uint8)
    targets = (rng.random((n, CLASSES)) < 0.3).astype(np.float32)
    return SiteData(pixels, np.zeros(n, np.int64), targets, np.ones((n, CLASSES), np.float32))


def test_fedavgm_is_heavy_ball_momentum_on_the_pseudo_gradient_and_plain_fedavg_at_momentum_0():
    groups = {"g": ["g.w", "g.bn.running_mean", "g.bn.num_batches_tracked"]}
    cur = {"g.w": np.array([1.0, 2.0], np.float32), "g.bn.running_mean": np.zeros(2, np.float32),
           "g.bn.num_batches_tracked": np.array(3)}
    delta = np.array([0.5, -0.25])
    agg = {"g.w": (cur["g.w"] + delta).astype(np.float32), "g.bn.running_mean": np.array([4.0, 5.0], np.float32),
           "g.bn.num_batches_tracked": np.array(7)}
    avgm = ServerOptimizer("fedavgm", eta=0.0, momentum=0.9)  # server-lr 0: the optimiser's own, 1.0
    assert avgm.eta == 1.0 and ServerOptimizer("fedadam", eta=0.0).eta == 0.01
    first = avgm.step(cur, agg, {"g": ["s"]}, groups)
    np.testing.assert_allclose(first["g.w"], cur["g.w"] + delta, rtol=1e-6)  # v = delta
    # running statistics and counters are the sites' average, never stepped
    np.testing.assert_array_equal(first["g.bn.running_mean"], agg["g.bn.running_mean"])
    assert first["g.bn.num_batches_tracked"] == 7
    second_agg = {**agg, "g.w": (first["g.w"] + delta).astype(np.float32)}
    second = avgm.step(first, second_agg, {"g": ["s"]}, groups)
    np.testing.assert_allclose(second["g.w"], first["g.w"] + 1.9 * delta, rtol=1e-6)  # v = 0.9 delta + delta
    idle = avgm.step(second, {**second_agg, "g.w": np.zeros(2, np.float32)}, {"g": []}, groups)
    np.testing.assert_array_equal(idle["g.w"], np.zeros(2, np.float32))  # nobody sent the group: no step
    plain = ServerOptimizer("fedavgm", eta=1.0, momentum=0.0)
    for _ in range(2):
        np.testing.assert_allclose(plain.step(cur, agg, {"g": ["s"]}, groups)["g.w"], agg["g.w"], rtol=1e-6)
    with pytest.raises(ValueError, match="momentum"):
        ServerOptimizer("fedavgm", momentum=1.0)


def test_cosine_schedule_runs_from_lr_to_its_floor_over_the_run():
    assert round_lr(1e-3, "constant", 7, 10) == 1e-3
    lrs = [round_lr(1e-3, "cosine", r, 4, min_factor=0.1) for r in range(1, 5)]
    assert lrs[0] == pytest.approx(1e-3)
    assert lrs[2] == pytest.approx(1e-4 + 0.9e-3 * 0.5)  # round 3 of 4: half-way, half of the span
    assert lrs[-1] == pytest.approx(1e-4 + 0.9e-3 * 0.5 * (1 - math.sqrt(0.5)))  # the last round still trains
    assert all(a > b for a, b in zip(lrs, lrs[1:]))
    assert round_lr(1e-3, "cosine", 12, 10, min_factor=0.1) == pytest.approx(1e-4)  # past the end: the floor
    with pytest.raises(ValueError, match="lr-schedule"):
        round_lr(1e-3, "step", 1, 10)
    with pytest.raises(ValueError, match="lr-min-factor"):
        round_lr(1e-3, "cosine", 1, 10, min_factor=2.0)


def test_the_strategy_sends_each_rounds_learning_rate_in_the_train_config(tmp_path, in_a_run):  # noqa: F811
    grid = FakeGrid({1: 0.0, 2: 0.0})
    arrays = to_record({"router.w": torch.zeros(2)})
    strat = _strategy(tmp_path, fraction_train=1.0, lr_at=lambda r: round_lr(0.01, "cosine", r, 3))
    sent = {r: sorted(float(m.content["config"]["lr"]) for m in strat.configure_train(
        r, arrays, ConfigRecord({"lr": 0.01}), grid)) for r in (1, 2, 3)}
    assert sent == {1: pytest.approx([0.01] * 2), 2: pytest.approx([0.0075] * 2), 3: pytest.approx([0.0025] * 2)}
    constant = _strategy(tmp_path / "c", fraction_train=1.0)
    assert {float(m.content["config"]["lr"]) for m in constant.configure_train(3, arrays, ConfigRecord({"lr": 0.01}),
                                                                                grid)} == {0.01}


def test_norm_keys_are_batch_norm_and_under_dp_group_norm():
    plain, dp = build_model("tiny", CLASSES), build_model("tiny", CLASSES, dp_compatible=True)
    keys, dp_keys = norm_keys(plain), norm_keys(dp)
    assert keys and all(type(dict(plain.named_modules())[k.rsplit(".", 1)[0]]).__name__ == "BatchNorm2d"
                        for k in keys)
    assert any(k.endswith("running_var") for k in keys)
    assert dp_keys and all(type(dict(dp.named_modules())[k.rsplit(".", 1)[0]]).__name__ == "GroupNorm"
                           for k in dp_keys)
    assert not any("conv" in k and k.endswith(".weight") and k not in keys for k in keys)


def test_fedbn_keeps_the_sites_normalisation_state_between_rounds_and_never_sends_it(padchest_site):
    site = padchest_site
    torch.manual_seed(0)
    global_model = build_model("tiny", CLASSES)
    global_state = {k: v.clone() for k, v in global_model.state_dict().items()}
    model = build_model("tiny", CLASSES)
    model.load_state_dict(global_state)
    assert not fedbn.restore(model, site, "run-a")  # first round: nothing of the site's own yet
    train_local(model, _data(brightness=60.0), 1, 1e-2, 8, torch.device("cpu"))
    trained = {k: v.clone() for k, v in model.state_dict().items()}
    kept = fedbn.keep(model, site, "run-a")
    assert set(kept) == set(norm_keys(model))
    counts = {g: 1.0 for g in group_keys(trained)}
    sent = outgoing_state(model, site, counts, fedavg=False, local=kept)
    assert sent and not set(sent) & set(kept)  # nothing of the normalisation layers leaves
    assert set(sent) | set(kept) == set(trained)
    # next round: the global model comes back; the site's own normalisation state goes over it
    fresh = build_model("tiny", CLASSES)
    fresh.load_state_dict(global_state)
    assert fedbn.restore(fresh, site, "run-a")
    state = fresh.state_dict()
    moved = [k for k in kept if k.endswith("running_mean") and not torch.equal(trained[k], global_state[k])]
    assert moved  # training moved the statistics, and they come back from the site's file
    assert all(torch.equal(state[k], trained[k]) for k in kept)
    others = [k for k in state if k not in kept]
    assert all(torch.equal(state[k], global_state[k]) for k in others)  # the rest is the global model's
    other_run = build_model("tiny", CLASSES)
    other_run.load_state_dict(global_state)
    assert not fedbn.restore(other_run, site, "run-b")  # one file per run
    with pytest.raises(ValueError, match="does not fit"):
        fedbn.restore(build_model("tiny-generalist", CLASSES), site, "run-a")


def test_fedbn_server_groups_accept_updates_without_norms_and_keep_the_global_norms():
    model = build_model("tiny", CLASSES)
    current = {k: v.numpy().copy() for k, v in model.state_dict().items()}
    local = set(norm_keys(model))
    update = {k: (v + 1.0).astype(v.dtype) if np.issubdtype(v.dtype, np.floating) else v
              for k, v in current.items() if k not in local}
    all_groups = group_keys(current)
    assert "incomplete" in validate_update(update, reference_of(current), all_groups)  # without fedbn: rejected
    groups = group_keys(k for k in current if k not in local)  # what FedChestAvg uses with local_keys
    assert validate_update(update, reference_of(current), groups) is None
    acc = RunningMean(current, groups)
    acc.add(SiteUpdate("s", update, {g: 10.0 for g in groups}))
    new, who = acc.result()
    assert all(np.array_equal(new[k], current[k]) for k in local)  # the global norms stay as they were
    conv = next(k for k in update if k.endswith("conv.weight") or k.endswith("fc.weight"))
    np.testing.assert_allclose(new[conv], current[conv] + 1.0, rtol=1e-6)


def test_fedprox_proximal_term_keeps_the_site_model_near_the_global_one():
    data = _data(48, seed=3)

    def drift(mu: float) -> float:
        torch.manual_seed(0)
        model = build_model("tiny", CLASSES)
        start = [p.detach().clone() for p in model.parameters()]
        train_local(model, data, 2, 1e-2, 8, torch.device("cpu"), proximal_mu=mu)
        return math.sqrt(sum(float(((p.detach() - s) ** 2).sum()) for p, s in zip(model.parameters(), start)))

    assert drift(10.0) < 0.8 * drift(0.0)


def test_run_config_refuses_fedbn_with_plain_fedavg(tmp_path):
    from flwr.app import Context, RecordDict

    from server.server_app import run_rounds

    ctx = Context(run_id=1, node_id=0, node_config={}, state=RecordDict(),
                  run_config={"fedbn": True, "aggregation": "fedavg", "out-dir": str(tmp_path)})
    with pytest.raises(ValueError, match="fedbn"):
        run_rounds(None, ctx)
    bad = dataclasses.replace(ctx, run_config={"lr-schedule": "step", "out-dir": str(tmp_path)})
    with pytest.raises(ValueError, match="lr-schedule"):
        run_rounds(None, bad)
