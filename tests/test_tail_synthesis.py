"""Tail-class synthesis: the diffusion model's schedule, loss and sampler; that the condition steers what it makes;
tail-class selection and labelling of synthetic images at a site; a federated run where synthetic images train
locally and nothing of them or of the generator is sent."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from client.index import SiteData
from client.tail_synthesis import tail_classes, with_synthetic
from shared_models.synthesis import ConditionalUNet, DiffusionSchedule, ddim_sample, diffusion_loss
from shared_models.ontology import load_label_set
from shared_models.synthesis.config import SynthesisConfigError, check_synthesis_run, spec_config, synthesis_spec
from tests.salts import pin_split_salt


def test_schedule_and_sampler_basics():
    ab = DiffusionSchedule(steps=50).alpha_bar()
    assert ab.shape == (50,) and (ab[1:] < ab[:-1]).all() and 0 < float(ab[-1]) < 0.05 < float(ab[0]) <= 1
    model = ConditionalUNet(width=8, emb=32)
    cond = torch.randn(3, 384)
    a = ddim_sample(model, cond, 8, DiffusionSchedule(steps=50), 5, generator=torch.Generator().manual_seed(1))
    b = ddim_sample(model, cond, 8, DiffusionSchedule(steps=50), 5, generator=torch.Generator().manual_seed(1))
    assert a.shape == (3, 1, 8, 8) and torch.equal(a, b) and a.abs().max() <= 1


def test_the_condition_steers_the_generated_images():
    """Two 'classes': a bright upper half or a bright lower half. After a short training, samples under each
    class's condition are brighter where that class is."""
    torch.manual_seed(0)
    n, s = 256, 8
    x = -torch.ones(n, 1, s, s)
    upper = torch.arange(n) % 2 == 0
    x[upper, :, : s // 2] = 1.0
    x[~upper, :, s // 2:] = 1.0
    codes = torch.nn.functional.normalize(torch.randn(2, 384), dim=1)
    cond = codes[(~upper).long()]
    model = ConditionalUNet(width=8, emb=32)
    schedule = DiffusionSchedule(steps=100)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(300):
        idx = torch.randint(0, n, (32,), generator=g)
        loss = diffusion_loss(model, x[idx], cond[idx], schedule, g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    out = ddim_sample(model, codes.repeat_interleave(8, 0), s, schedule, 20, 2.0, torch.Generator().manual_seed(2))
    gap = out[:, 0, : s // 2].mean((1, 2)) - out[:, 0, s // 2:].mean((1, 2))
    assert (gap[:8] > 0.2).float().mean() >= 0.75 and (gap[8:] < -0.2).float().mean() >= 0.75


def _data(n: int = 1000, c: int = 4) -> SiteData:
    rng = np.random.default_rng(0)
    targets = np.zeros((n, c), np.float32)
    targets[:100, 0] = 1  # head
    targets[:6, 1] = 1  # tail (prevalence 0.006) with 6 positives
    targets[:1, 2] = 1  # tail with 1 positive
    mask = np.ones((n, c), np.float32)
    return SiteData(rng.integers(0, 255, (n, 8, 8), dtype=np.uint8), np.zeros(n, np.int64), targets, mask,
                    ("r",) * n, np.arange(n))


def test_tail_classes_need_low_prevalence_and_enough_positives_here():
    data = _data()
    assert tail_classes({}, data, 4, 5).tolist() == [1]  # class 2 is tail but has one positive; 3 has none
    assert tail_classes({"class-prevalence": [0.001, 0.5, 0.0, 0.0]}, data, 4, 5).tolist() == [0]


def test_synthetic_images_are_labelled_with_their_class_only():
    data = _data()
    out = with_synthetic(data, np.zeros((3, 8, 8), np.uint8), np.array([1, 1, 2]))
    assert len(out) == 1003 and (out.projection[1000:] == -1).all() and out.rows[1000:].tolist() == [-1] * 3
    assert out.targets[1000:].tolist() == [[0, 1, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0]]
    assert out.mask[1000:].tolist() == out.targets[1000:].tolist()  # every other class unknown
    assert np.array_equal(out.pixels[:1000], data.pixels) and out.reports[1000:] == ("", "", "")


def test_config_round_trips_and_refusals():
    assert synthesis_spec({}) is None
    spec = synthesis_spec({"tail-synthesis": True, "tail-synthesis-size": 16})
    assert synthesis_spec(spec_config(spec)) == spec
    with pytest.raises(SynthesisConfigError, match="multiple of 4"):
        synthesis_spec({"tail-synthesis": True, "tail-synthesis-size": 30})
    with pytest.raises(SynthesisConfigError, match="dp = false"):
        check_synthesis_run({"tail-synthesis": True, "dp": True})


def test_a_federated_run_trains_on_synthetic_tail_images_and_sends_nothing_of_them(tmp_path):
    import json
    import sqlite3

    from client.index import load_split
    from client.site_config import load_site_config
    from client.synth import synthesize_site
    from consortium.simulation import run_in_process

    sites = tmp_path / "sites"
    # site-a's 400 images hold classes under 1 % prevalence with at least two positives; site-b's 240 none. The
    # split salts are fixed: with salt 0 site-a's training split holds four such classes (some salts give one,
    # whose four images fall under the small-count rule, or none)
    for name, fmt, n, seed in (("a", "padchest", 400, 1), ("b", "mimic", 240, 2)):
        pin_split_salt(synthesize_site(sites / name, fmt, f"site-{name}", n_images=n, image_size=32, seed=seed), 0)
    out = tmp_path / "run"
    run_in_process({"num-server-rounds": 2, "local-epochs": 1, "model-preset": "tiny", "image-size": 32,
                    "min-nodes": 2, "out-dir": str(out), "sim-sites-dir": str(sites), "tail-synthesis": True,
                    "tail-synthesis-steps": 20, "tail-synthesis-per-class": 4, "tail-synthesis-size": 16,
                    "tail-synthesis-min-positives": 2}, 2)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed"
    con = sqlite3.connect(out / "registry.db")
    made = dict(con.execute("SELECT site, value FROM metrics WHERE name = 'synth_images' AND round = 1").fetchall())
    examples = dict(con.execute("SELECT site, value FROM metrics WHERE name = 'num-examples' AND round = 1").fetchall())
    assert made["site-a"] >= 8 and made["site-b"] == 0
    for name in ("a", "b"):
        cfg = load_site_config(sites / name / "site.toml")
        site = cfg.name
        train = load_split(cfg, "train")
        tails = tail_classes({}, train, load_label_set(cfg.label_set).num_seen, 2)  # round 1: the site's own counts
        assert made[site] == cfg.privacy.suppress(4 * len(tails))  # 4 per tail class, under the small-count rule
        assert examples[site] == len(train)  # the update is weighted by real images only
        cache = list((cfg.work_dir / "tail-synthesis").glob("*.npz"))
        assert len(cache) == 1  # made once per run, kept at the site
        with np.load(cache[0]) as z:
            assert len(z["labels"]) == made[site] or made[site] == 0  # (0 when under the small-count rule)
    # the global model holds the routed experts only: no generator tensors reached the server
    state = torch.load(out / "checkpoints" / "round-002.pt", weights_only=True)["state_dict"]
    assert all(k.split(".")[0] in ("experts", "router") for k in state)
