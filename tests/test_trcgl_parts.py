"""TRCGL-Net's parts (issue 12): squeeze-and-excitation and CSRA against their reference formulas, the ML-GCN
adjacency on a hand-computed example, and co-occurrence counts summed over sites equal to the pooled counts."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from shared_models.labelgraph import GraphClassifier, adjacency, cooccurrence, normalised
from shared_models.networks.attention import CSRA, CSRA_TEMPERATURES, SqueezeExcite


def test_squeeze_excite_is_the_gated_channel_mean():
    torch.manual_seed(0)
    se = SqueezeExcite(32, reduction=16)
    assert se.fc1.out_features == 2
    x = torch.randn(3, 32, 5, 4)
    z = x.mean((2, 3))
    s = torch.sigmoid(se.fc2.weight @ torch.relu(se.fc1.weight @ z.T + se.fc1.bias[:, None]) + se.fc2.bias[:, None]).T
    assert torch.allclose(se(x), x * s[:, :, None, None], atol=1e-6)


@pytest.mark.parametrize("heads", [1, 2, 4])
def test_csra_logit_is_mean_plus_lambda_attention_per_head(heads):
    torch.manual_seed(1)
    csra = CSRA(16, 5, heads=heads, lam=0.3)
    x = torch.randn(2, 16, 4, 3)
    want = torch.zeros(2, 5)
    for i, t in enumerate(CSRA_TEMPERATURES[heads]):
        w = csra.weight[:, i]
        for b in range(2):
            for k in range(5):
                score = (x[b] * w[k][:, None, None]).sum(0).flatten() / w[k].norm()
                att = score.max() if t == 99 else (torch.softmax(t * score, 0) * score).sum()
                want[b, k] += score.mean() + 0.3 * att
    assert torch.allclose(csra(x), want, atol=1e-5)
    maps = csra.last_maps
    assert maps.shape == (2, 5, 4, 3) and torch.allclose(maps.sum((2, 3)), torch.ones(2, 5))
    with pytest.raises(ValueError, match="CSRA heads"):
        CSRA(16, 5, heads=3)


def test_ml_gcn_adjacency_on_a_hand_computed_example():
    y = np.array([[1, 1, 0], [1, 1, 0], [1, 0, 1], [0, 1, 0], [1, 0, 0]])
    m, d = cooccurrence(y)
    n = np.diag(d)
    assert n.tolist() == [4, 3, 1] and m[0, 1] == 2 and m[0, 2] == 1 and m[1, 2] == 0
    assert (d == n[:, None]).all()  # every class annotated: each row of D is N_i
    # P(j | i) = M_ij / N_i: row 0 (.5, .25) -> (1, 0); row 1 (.67, 0) -> (1, 0); row 2 (1, 0) -> (1, 0) at tau 0.4;
    # columns re-weighted to sum to 0.25 (column 0 has two neighbours: 0.125 each), plus the identity
    a = adjacency(m, n)
    assert np.allclose(a, [[1, 0.25, 0], [0.125, 1, 0], [0.125, 0, 1]], atol=1e-5)
    r = a.sum(1)
    assert np.allclose(normalised(a), a.T / np.sqrt(np.outer(r, r)))
    assert np.array_equal(adjacency(m, n), a)  # the reference's N_i vector gives the same graph


def test_label_graph_is_unbiased_where_sites_annotate_different_classes():
    # the truth everywhere: P(B | A) = 0.5. Site 1 annotates A and B; site 2 annotates A and C only (B unknown there)
    a_and_b = np.array([[1, 1, 0]] * 50 + [[1, 0, 0]] * 50)
    site1, mask1 = a_and_b, np.array([[1, 1, 0]] * 100)
    site2, mask2 = np.array([[1, 0, 0]] * 100), np.array([[1, 0, 1]] * 100)  # 100 more A positives, B never annotated
    m = sum(cooccurrence(y, mk)[0] for y, mk in ((site1, mask1), (site2, mask2)))
    d = sum(cooccurrence(y, mk)[1] for y, mk in ((site1, mask1), (site2, mask2)))
    assert m[0, 1] / d[0, 1] == pytest.approx(0.5)  # over the same images: both classes annotated
    assert m[0, 1] / np.diag(d)[0] == pytest.approx(0.25)  # the old M / N_i: biased by site 2's unannotated B
    a = adjacency(m, d)
    assert a[0, 1] > 0  # the edge survives tau = 0.4; with M / N_i it would not
    assert adjacency(m, np.diag(d))[0, 1] == 0


def test_cooccurrence_sums_over_sites_equal_the_pooled_counts():
    rng = np.random.default_rng(0)
    y = (rng.random((300, 6)) < 0.3).astype(np.float32)
    mask = (rng.random((300, 6)) < 0.8).astype(np.float32)
    parts = [cooccurrence(y[i::3], mask[i::3]) for i in range(3)]
    m, d = cooccurrence(y, mask)
    assert np.array_equal(sum(p[0] for p in parts), m) and np.array_equal(sum(p[1] for p in parts), d)


def test_graph_classifier_propagates_over_the_adjacency():
    torch.manual_seed(0)
    g = GraphClassifier(3, 8, 16, hidden=4)
    g.set_graph(torch.randn(3, 8))
    alone = g()
    g.set_graph(a_hat=normalised(adjacency(*cooccurrence(np.array([[1, 1, 0], [1, 1, 0], [0, 0, 1]])))))
    linked = g()
    assert alone.shape == (3, 16)
    assert not torch.allclose(alone[0], linked[0]) and {"a_hat", "embeddings"} <= set(g.state_dict())


def test_run_config_options_and_refusals():
    from shared_models.networks.heads import HeadConfigError, head_spec, spec_config

    assert head_spec({}) is None
    spec = head_spec({"se": True, "csra-heads": 2, "label-graph": True})
    assert head_spec(spec_config(spec)) == spec
    with pytest.raises(HeadConfigError, match="csra-heads"):
        head_spec({"csra-heads": 3})
    from server.secagg_app import SecAggRefusal, check_secagg_config
    from server.server_app import DEFAULTS

    with pytest.raises(SecAggRefusal, match="label-graph"):
        check_secagg_config({**DEFAULTS, "aggregation": "fedavg", "secagg-num-shares": 3,
                             "secagg-reconstruction-threshold": 2, "label-graph": True})


def test_experts_with_se_csra_and_the_label_graph_train_federated(tmp_path):
    """Two sites, two rounds, every TRCGL option on: the graph in round 2's model comes from the sites' summed
    counts (not the identity), the label embeddings are the class descriptions', a checkpoint loads back with its
    options, and the class attention maps are there to inspect."""
    import json

    from client.index import load_split
    from client.predict import load_global_model
    from client.site_config import load_site_config
    from client.synth import synthesize_site
    from client.training import _batch
    from consortium.simulation import run_in_process

    sites = tmp_path / "sites"
    synthesize_site(sites / "a", "padchest", "site-a", n_images=120, image_size=32, seed=1)
    synthesize_site(sites / "b", "mimic", "site-b", n_images=120, image_size=32, seed=2)
    out = tmp_path / "run"
    run_in_process({"num-server-rounds": 2, "local-epochs": 1, "model-preset": "tiny", "image-size": 32,
                    "min-nodes": 2, "out-dir": str(out), "sim-sites-dir": str(sites), "se": True, "csra-heads": 2,
                    "label-graph": True, "aggregation": "projection+class"}, 2)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["config"]["csra-heads"] == 2
    model, classes, _ = load_global_model(out / "checkpoints" / "round-002.pt")
    expert = model.experts["PA"]
    a_hat = expert.graph.a_hat
    assert not torch.allclose(a_hat, torch.eye(len(classes)))  # edges from the co-occurrence counts
    assert torch.equal(a_hat, model.experts["LAT"].graph.a_hat) and float(expert.graph.embeddings.abs().sum()) > 0
    # the graph is the ML-GCN adjacency of both sites' training counts, summed after each site's small-count rule
    pairs, dens = 0, 0
    for name in ("a", "b"):
        cfg = load_site_config(sites / name / "site.toml")
        train = load_split(cfg, "train")
        m, d = cooccurrence(train.targets[:, :len(classes)], train.mask[:, :len(classes)])
        pairs = pairs + np.vectorize(cfg.privacy.suppress)(m)
        dens = dens + np.vectorize(cfg.privacy.suppress)(d)
    assert torch.allclose(a_hat, torch.as_tensor(normalised(adjacency(pairs, dens)), dtype=torch.float32))
    data = load_split(load_site_config(sites / "a" / "site.toml"), "test")
    x, p, _, _ = _batch(data, np.arange(4), torch.device("cpu"), len(classes))
    with torch.no_grad():
        model(x, torch.zeros_like(p))
    assert expert.attention_maps().shape[:2] == (4, len(classes))


def test_noisy_pair_counts_bound_each_image_and_have_the_stated_noise():
    from client.cooccurrence import bounded_labels, noisy_pairs, pair_sensitivity

    rng = np.random.default_rng(0)
    y = (rng.random((400, 8)) < 0.5).astype(np.int64)
    b = bounded_labels(y, 3, rng)
    assert b.sum(1).max() <= 3 and (b <= y).all() and (b.sum(1) == np.minimum(y.sum(1), 3)).all()
    # one image with 3 positives: 3 pairs of M, 3 x 7 off-diagonal entries of D, 3 diagonal entries, each +1
    assert pair_sensitivity(3, 8) == pytest.approx((3 + 21 + 3) ** 0.5)
    annotated = np.ones_like(b)
    y = b  # at most 3 labels per image: bounding leaves it as it is, so only the noise varies
    true_m, true_d = cooccurrence(y, annotated)
    draws = [noisy_pairs(y, annotated, 2.0, 3, np.random.default_rng((1, s))) for s in range(200)]
    ms, ds = np.stack([m for m, _ in draws]), np.stack([d for _, d in draws])
    assert (ms == ms.transpose(0, 2, 1)).all() and (ms >= 0).all() and (ms <= ds).all()
    assert (ms[:, np.arange(8), np.arange(8)] == ds[:, np.arange(8), np.arange(8)]).all()  # one noised N for both
    std = 2.0 * pair_sensitivity(3, 8)
    iu = np.triu_indices(8, 1)
    for got, true in ((ms[:, iu[0], iu[1]], true_m[iu]), (ds[:, iu[1], iu[0]], true_d[iu[1], iu[0]]),
                      (ds[:, np.arange(8), np.arange(8)], np.diag(true_d))):
        err = got - true  # counts here are far from 0, so clipping does not bias them
        assert abs(err.mean()) < 4 * std / np.sqrt(err.size) and err.std() == pytest.approx(std, rel=0.05)


def test_a_noisy_release_is_charged_once_and_re_sent_unchanged(padchest_site):
    from opacus.accountants import RDPAccountant

    from client.cooccurrence import HEAD, site_pair_counts
    from client.index import load_split
    from client.local_round import ledger_for
    from client.privacy import PolicyRefusal

    site = padchest_site
    data = load_split(site, "train")
    config = {"label-graph-noise": 1.5, "label-graph-max-labels": 4, "run-id": "r1", "server-round": 1}
    first = site_pair_counts(site, data, 30, config)
    again = site_pair_counts(site, data, 30, {**config, "server-round": 2})
    assert first == again and len(first[0]) == len(first[1]) == 900
    entries = [e for e in ledger_for(site).entries() if e["head"] == HEAD]
    assert len(entries) == 1
    acc = RDPAccountant()
    acc.history = [(1.5, 1.0, 1)]
    assert entries[0]["epsilon_after"] == pytest.approx(acc.get_epsilon(site.privacy.delta))
    import dataclasses

    strict = dataclasses.replace(site, privacy=dataclasses.replace(site.privacy, require_dp=True))
    with pytest.raises(PolicyRefusal, match="label-graph-noise"):
        site_pair_counts(strict, data, 30, {"run-id": "r2"})
    with pytest.raises(PolicyRefusal, match="label-graph-noise"):  # a DP run never sends exact pair counts
        site_pair_counts(site, data, 30, {"run-id": "r2", "dp": True})
    poor = dataclasses.replace(site, privacy=dataclasses.replace(site.privacy, epsilon_budget=0.5))
    with pytest.raises(PolicyRefusal, match="privacy budget"):
        site_pair_counts(poor, data, 30, {**config, "run-id": "r3"})
