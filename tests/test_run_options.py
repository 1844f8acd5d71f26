"""Run-config options and their effect where they act: fraction-train and proximal-mu in the strategy's train
messages, the training options reaching train_local at a site, hist-bins / hist-limit and eval-split in a site's
evaluation, and pretrained-weights in the ServerApp's model."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord, Context, Message, Metadata, RecordDict

from server.records import to_record
from server.registry import Registry
from server.strategy import FedChestAvg
from shared_models.metrics import HistogramSpec
from tests.salts import pin_split_salt
from tests.test_rounds import FakeGrid


@pytest.fixture
def in_a_run(monkeypatch):
    from flwr.supercore.task_identity import TaskIdentity

    monkeypatch.setattr(TaskIdentity, "_run_id", 1)  # messages are made inside a run
    monkeypatch.setattr(TaskIdentity, "_node_id", 0)
    monkeypatch.setattr(TaskIdentity, "_task_id", 1)


def _strategy(tmp_path, **kwargs) -> FedChestAvg:
    registry = Registry(f"sqlite:///{tmp_path / 'r.db'}")
    run = registry.create_run("t", "s", "h", "cxrlt2026", 1, {}, True)
    return FedChestAvg(registry=registry, run_id=run, classes=("A", "B"), spec=HistogramSpec(),
                       reference=to_record({"router.w": torch.zeros(2)}), min_available_nodes=2, quorum=1,
                       node_wait=0.1, min_train_nodes=2, min_evaluate_nodes=2, **kwargs)


def test_fraction_train_samples_that_share_of_the_nodes_and_fedprox_mu_reaches_them(tmp_path, in_a_run):
    grid = FakeGrid({i: 0.0 for i in range(1, 9)})
    arrays = to_record({"router.w": torch.zeros(2)})
    strat = _strategy(tmp_path, fraction_train=0.5, fraction_evaluate=1.0, proximal_mu=0.25)
    train = strat.configure_train(1, arrays, ConfigRecord({}), grid)
    assert len(train) == 4 and len({m.metadata.dst_node_id for m in train}) == 4  # half of the 8 nodes
    assert all(m.content["config"]["proximal-mu"] == 0.25 for m in train)
    assert len(strat.configure_evaluate(1, arrays, ConfigRecord({}), grid)) == 8  # evaluation asks everyone
    plain = _strategy(tmp_path / "b", fraction_train=1.0)
    sent = plain.configure_train(1, arrays, ConfigRecord({}), grid)
    assert len(sent) == 8 and all("proximal-mu" not in m.content["config"] for m in sent)  # plain FedAvg: no term


def test_local_round_hands_the_run_config_training_options_to_train_local(padchest_site, monkeypatch):
    import client.local_round as local_round

    seen = {}
    monkeypatch.setattr(local_round, "train_local", lambda model, data, **kw: seen.update(kw) or {"steps": 0})
    config = {"local-epochs": 2, "batch-size": 4, "lr": 0.01, "server-round": 3, "seed": 1, "label-set": "cxrlt2026",
              "proximal-mu": 0.3, "sampling": "sqrt", "asl-class-weights": True, "logit-adjust-tau": 0.5,
              "class-prevalence": [0.2, 0.1], "weight-decay": 0.05, "loss": "bce", "augment": "affine"}
    local_round.train_round(config, padchest_site, data=None, model=None)
    assert (seen["proximal_mu"], seen["sampling"], seen["asl_class_weights"], seen["logit_adjust_tau"]) == (
        0.3, "sqrt", True, 0.5)
    assert (seen["weight_decay"], seen["loss"], seen["progress_round"], seen["augmentation"]) == (
        0.05, "bce", 3, "affine")
    assert seen["prevalence"].tolist() == [0.2, 0.1] and (seen["epochs"], seen["seed"]) == (2, 1003)


def _evaluate(site, config: dict):
    """client_app.evaluate on a hand-made message carrying the run's model (tiny preset, 32 px)."""
    from client.client_app import evaluate, run_model

    torch.manual_seed(0)
    model = run_model(config, site)
    meta = Metadata(run_id=1, message_id="m1", src_node_id=0, dst_node_id=1, reply_to_message_id="",
                    group_id="1", created_at=time.time(), ttl=600.0, message_type="evaluate")
    msg = Message(content=RecordDict({"arrays": to_record(model.state_dict()), "config": ConfigRecord(config)}),
                  metadata=meta)
    context = Context(run_id=1, node_id=1, node_config={"site-config": str(site.path), "work-dir": str(site.work_dir)},
                      state=RecordDict(), run_config={})
    reply = evaluate(msg, context)
    return model, dict(next(iter(reply.content.metric_records.values())))


@pytest.fixture
def open_site(tmp_path):
    """A small PadChest site whose privacy policy lets every count leave (min_count 0), so that the histograms it
    sends are not all withheld at this size."""
    from client.index import prepare_site
    from client.site_config import load_site_config
    from client.synth import synthesize_site

    toml = synthesize_site(tmp_path / "open", "padchest", "open-site", n_images=80, image_size=32, seed=1)
    toml.write_text(toml.read_text() + "\n[privacy]\nmin_count = 0\n")
    # a fixed split: with an unpinned salt, CI once drew splits whose histograms held no negative in range
    pin_split_salt(toml, 3)
    cfg = load_site_config(toml)
    prepare_site(cfg)
    return cfg


def test_evaluation_reads_eval_split_and_the_histogram_spec(open_site):
    """A site evaluates the split the server names (eval-split), and bins its scores with the run's hist-bins /
    hist-limit: its histograms equal those of the model's scores on that split under that spec (the untrained
    model's logits lie within +-0.25, so a limit of 0.2 spreads them where the default 12 would not)."""
    from client.evaluation import scope_summary
    from client.index import load_split
    from client.training import predict

    site = open_site
    base = {"model-preset": "tiny", "label-set": "cxrlt2026", "image-size": 32, "seed": 0, "server-round": 1}
    sizes = {s: len(load_split(site, s)) for s in ("val", "test")}
    assert sizes["val"] != sizes["test"]
    for split in ("val", "test"):
        config = {**base, "eval-split": split, "hist-bins": 24, "hist-limit": 0.2}
        model, summary = _evaluate(site, config)
        data = load_split(site, split)
        c = model.num_classes
        assert summary["num-examples"] == summary["n.all"] == sizes[split]
        probs, _ = predict(model, data, torch.device("cpu"))
        args = (probs, data.targets[:, :c], data.mask[:, :c])
        want = scope_summary(*args, HistogramSpec(24, 0.2), site.privacy.min_count)
        assert len(summary["hist_pos.all"]) == c * 24
        assert list(summary["hist_pos.all"]) == want["hist_pos.all"]
        assert list(summary["hist_neg.all"]) == want["hist_neg.all"] and sum(want["hist_neg.all"]) > 0
        default = scope_summary(*args, HistogramSpec(24, 12.0), site.privacy.min_count)
        assert default["hist_neg.all"] != want["hist_neg.all"]  # the limit matters for these scores


def test_evaluation_summarises_the_consortiums_bands(open_site):
    """With `class-bands` in the evaluate config the site sends its exact head/medium/tail mAP per scope
    (band_map), computed from its scores before the small-count rule; a band list of the wrong length is refused."""
    from client.evaluation import band_summary
    from client.index import load_split
    from client.training import predict
    from shared_models.metrics import per_class_metrics

    base = {"model-preset": "tiny", "label-set": "cxrlt2026", "image-size": 32, "seed": 0, "server-round": 1}
    model, plain = _evaluate(open_site, base)
    c = model.num_classes
    bands = [i % 3 for i in range(c)]
    model, summary = _evaluate(open_site, {**base, "class-bands": bands})
    assert "band_map.all" not in plain and len(summary["band_map.all"]) == 3
    data = load_split(open_site, "test")
    probs, _ = predict(model, data, torch.device("cpu"))
    t, m = data.targets[:, :c], data.mask[:, :c]
    pos, neg = (t * m).sum(0), ((1 - t) * m).sum(0)
    want = band_summary(per_class_metrics(t, probs, m)["ap"], pos, neg, np.array(bands), 0)
    np.testing.assert_allclose(summary["band_map.all"], want)
    assert np.isfinite(want).any()
    with pytest.raises(ValueError, match="class-bands"):
        _evaluate(open_site, {**base, "class-bands": bands[:-1]})


def test_pretrained_weights_run_config_loads_the_file_into_its_member(tmp_path):
    """`pretrained-weights = "PA=FILE"` puts FILE's tensors into the global model's PA expert (the other experts
    keep their random init); a resumed run takes its weights from the checkpoint instead."""
    from server.server_app import DEFAULTS, _build
    from shared_models.networks import build_model
    from shared_models.ontology import load_label_set

    classes = load_label_set("cxrlt2026").seen
    torch.manual_seed(7)
    donor = build_model("tiny", len(classes), image_size=32).experts["PA"]
    path = tmp_path / "pa.pth"
    torch.save(donor.state_dict(), path)
    cfg = {**DEFAULTS, "model-preset": "tiny", "image-size": 32, "pretrained-weights": f"PA={path}"}
    torch.manual_seed(0)
    plain = _build({**cfg, "pretrained-weights": ""}, classes, None, None, resumed=False)
    torch.manual_seed(0)
    model = _build(cfg, classes, None, None, resumed=False)
    got, want = model.experts["PA"].state_dict(), donor.state_dict()
    assert all(torch.equal(got[k], want[k]) for k in want)
    assert not torch.equal(plain.experts["PA"].state_dict()[next(iter(want))], next(iter(want.values())))
    ap, plain_ap = model.experts["AP"].state_dict(), plain.experts["AP"].state_dict()
    assert all(torch.equal(ap[k], plain_ap[k]) for k in ap)
    torch.manual_seed(0)
    resumed = _build(cfg, classes, None, None, resumed=True)
    fresh = resumed.experts["PA"].state_dict()
    assert all(torch.equal(fresh[k], v) for k, v in plain.experts["PA"].state_dict().items())


def test_mimic_uncertain_policy_ones_zeros_ignore(synth_sites):
    """site.toml `uncertain` for MIMIC's -1.0 labels: `ones` reads them as positives, `zeros` as negatives, `ignore`
    (the default) masks them out; every other entry is the same under the three policies."""
    from client.site_config import SourceConfig
    from client.sources import Record, make_source

    root = synth_sites["mimic"].parent / "data"
    assert any("-1" in line for line in (root / "mimic-cxr-2.0.0-chexpert.csv").read_text().splitlines()[1:])
    read = {}
    for policy in ("ignore", "ones", "zeros"):
        src = make_source(SourceConfig("mimic", root, {"uncertain": policy}), "cxrlt2026")
        recs = [r for r in src.scan() if isinstance(r, Record)]
        read[policy] = (np.stack([r.targets for r in recs]), np.stack([r.mask for r in recs]))
    (t_ign, m_ign), (t_one, m_one), (t_zero, m_zero) = read["ignore"], read["ones"], read["zeros"]
    uncertain = (m_ign == 0) & (m_one > 0)
    assert uncertain.sum() >= 5
    assert (t_one[uncertain] == 1).all() and (t_zero[uncertain] == 0).all() and (m_zero[uncertain] > 0).all()
    assert np.array_equal(m_one, m_zero) and np.array_equal(t_one[~uncertain], t_zero[~uncertain])
    sure = m_ign > 0
    assert np.array_equal(t_ign[sure], t_one[sure]) and np.array_equal(m_ign[sure], m_one[sure])


def test_evaluate_with_train_asks_each_train_message_to_evaluate_the_round_before(tmp_path, in_a_run):
    """evaluate-with-train: round 1 evaluates nothing; round r's train messages carry r - 1, the round of the model
    they hold, and the class bands an evaluation needs; only the last round gets an evaluation stage. With
    fraction-train < 1 (evaluation asks every site, training a sample) rounds keep their own evaluation stage."""
    from shared_models.messages import EVALUATE_FIRST

    grid = FakeGrid({i: 0.0 for i in range(1, 4)})
    arrays = to_record({"router.w": torch.zeros(2)})
    strat = _strategy(tmp_path, fraction_train=1.0, fraction_evaluate=1.0, evaluate_with_train=True)
    strat.last_round = 3
    config = ConfigRecord({})
    sent = strat.configure_train(1, arrays, config, grid)
    assert {m.content["config"][EVALUATE_FIRST] for m in sent} == {0}
    strat.train_pos, strat.train_annotated = np.array([1, 2]), np.array([10, 10])
    strat.aggregate_train(1, [])  # no reply: the round's model is still the one round 2 evaluates
    assert strat.configure_evaluate(1, arrays, ConfigRecord({}), grid) == []
    sent = strat.configure_train(2, arrays, config, grid)
    assert {m.content["config"][EVALUATE_FIRST] for m in sent} == {1}
    assert all(len(m.content["config"]["class-bands"]) == 2 for m in sent)
    strat.aggregate_train(2, [])
    strat.configure_train(3, arrays, config, grid)
    strat.aggregate_train(3, [])
    assert len(strat.configure_evaluate(3, arrays, ConfigRecord({}), grid)) == 3  # the last round's own stage
    sampled = _strategy(tmp_path / "b", fraction_train=0.5, fraction_evaluate=1.0, evaluate_with_train=True)
    sampled.last_round = 3
    assert not sampled.fold and len(sampled.configure_evaluate(1, arrays, ConfigRecord({}), grid)) == 3
