import torch

from shared_models.networks import PROJECTIONS, build_model, parameter_group


def test_routing_sends_each_projection_to_its_expert():
    torch.manual_seed(0)
    model = build_model("tiny", 5).eval()
    model.router = None  # without a router, unknown images get the mean of the experts
    x = torch.randn(4, 1, 32, 32)
    proj = torch.tensor([0, 1, 2, -1])
    with torch.no_grad():
        out = model(x, proj)
        for i, p in enumerate(PROJECTIONS):
            assert torch.allclose(out[i], model.experts[p](x[i:i + 1])[0], atol=1e-5)
        mean = torch.stack([model.experts[p](x[3:4])[0] for p in PROJECTIONS]).mean(0)
        assert torch.allclose(out[3], mean, atol=1e-5)


def test_a_pa_only_batch_leaves_other_experts_without_gradient():
    model = build_model("tiny", 5)
    loss = model(torch.randn(3, 1, 32, 32), torch.zeros(3, dtype=torch.long)).sum()
    loss.backward()
    assert all(p.grad is not None for p in model.experts["PA"].parameters())
    assert all(p.grad is None for p in model.experts["LAT"].parameters())


def test_parameter_groups():
    keys = build_model("tiny", 5).state_dict().keys()
    assert {parameter_group(k) for k in keys} == {"experts.PA", "experts.AP", "experts.LAT", "router"}


def test_router_routes_unknown_images_soft_and_hard():
    torch.manual_seed(0)
    model = build_model("tiny", 5).eval()
    assert model.router is not None
    x = torch.randn(3, 1, 32, 32)
    unknown = torch.full((3,), -1)
    with torch.no_grad():
        soft, router_logits = model.forward_with_router(x, unknown)
        w = torch.softmax(router_logits, 1)
        expected = sum(w[:, i:i + 1] * model.experts[p](x) for i, p in enumerate(PROJECTIONS))
        assert torch.allclose(soft, expected, atol=1e-5)
        model.routing = "hard"
        hard = model(x, unknown)
        for i in range(3):
            chosen = PROJECTIONS[int(router_logits[i].argmax())]
            assert torch.allclose(hard[i], model.experts[chosen](x[i:i + 1])[0], atol=1e-5)
        known = model(x, torch.tensor([2, 2, 2]))  # trusted metadata wins over the router
        assert torch.allclose(known, model.experts["LAT"](x), atol=1e-5)


def test_router_learns_projection_from_trusted_views():
    """A few steps on images whose projection is visible in the pixels: router accuracy rises above chance."""
    import numpy as np

    from client.index import SiteData
    from client.training import predict, train_local

    rng = np.random.default_rng(0)
    n = 96
    proj = rng.integers(0, 3, n)
    px = rng.integers(0, 40, (n, 32, 32)).astype(np.uint8)
    for i, p in enumerate(proj):  # a bright band whose position tells the view
        px[i, :, p * 10:(p * 10) + 8] = 220
    data = SiteData(px, proj, np.zeros((n, 5), np.float32), np.ones((n, 5), np.float32))
    torch.manual_seed(0)
    model = build_model("tiny", 5)
    train_local(model, data, epochs=6, lr=0.003, batch_size=16, device=torch.device("cpu"))
    _, routes = predict(model, data, torch.device("cpu"))
    assert (routes == proj).mean() > 0.8


def test_family_preset_builds_trains_and_groups():
    """ConvNeXt-V2 / Swin / CaiT experts go through the same routing, training and grouping code."""
    import numpy as np

    from client.index import SiteData
    from client.training import train_local
    from shared_models.networks import classifier_keys, group_keys

    torch.manual_seed(0)
    model = build_model("families-tiny", 6)
    archs = {p: type(model.experts[p]).__name__ for p in PROJECTIONS}
    assert archs == {"PA": "ConvNeXt", "AP": "SwinTransformer", "LAT": "Cait"}
    model.eval()
    x = torch.randn(3, 1, 64, 64)
    with torch.no_grad():  # each family's expert answers for its own projection
        out = model(x, torch.tensor([0, 1, 2]))
        for i, p in enumerate(PROJECTIONS):
            assert torch.allclose(out[i], model.experts[p](x[i:i + 1])[0], atol=1e-5), p
    rng = np.random.default_rng(0)
    data = SiteData(rng.integers(0, 255, (12, 64, 64), dtype=np.uint8), np.array([0, 1] * 6),  # PA and AP only
                    (rng.random((12, 6)) < 0.3).astype(np.float32), np.ones((12, 6), np.float32))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    stats = train_local(model, data, 1, 1e-3, 6, torch.device("cpu"))
    assert np.isfinite(stats["train_loss"]) and stats["steps"] == 2
    after = model.state_dict()
    moved = {p: any(not torch.equal(before[k], after[k]) for k in after if k.startswith(f"experts.{p}."))
             for p in PROJECTIONS}
    assert moved == {"PA": True, "AP": True, "LAT": False}  # the CaiT expert saw no lateral image: untouched
    groups = group_keys(model.state_dict().keys())
    heads = classifier_keys(model)
    for p in PROJECTIONS:
        assert heads[f"experts.{p}"] and set(heads[f"experts.{p}"]) <= set(groups[f"experts.{p}"])
        weight = model.state_dict()[heads[f"experts.{p}"][0]]
        assert weight.shape[0] == 6  # first axis is the class, for class-aware aggregation


def test_generalist_member_is_averaged_with_the_routed_logits():
    torch.manual_seed(0)
    model = build_model("small-generalist", 4).eval()
    assert model.generalist is not None
    x = torch.randn(2, 1, 64, 64)
    proj = torch.tensor([0, 2])
    with torch.no_grad():
        routed = torch.stack([model.experts["PA"](x[:1])[0], model.experts["LAT"](x[1:])[0]])
        expected = (routed + model.generalist(x)) / 2
        assert torch.allclose(model(x, proj), expected, atol=1e-5)
    from shared_models.networks import classifier_keys, group_keys

    assert "generalist" in group_keys(model.state_dict().keys()) and "generalist" in classifier_keys(model)


def test_local_pretrained_weights_load_into_one_expert(tmp_path):
    """A user's RGB ImageNet-style checkpoint (3-channel stem, 1000-class head) for the PA expert: the stem is
    summed to one channel, the body is loaded as is, the head is freshly initialised, other experts untouched."""
    import timm
    from safetensors.torch import save_file

    from shared_models.networks import load_preset, parse_weights

    args = {k: tuple(v) for k, v in load_preset("families-tiny")["experts"]["PA"]["args"].items()}
    torch.manual_seed(1)
    rgb = timm.create_model("convnextv2_atto", pretrained=False, in_chans=3, num_classes=1000, **args)
    path = tmp_path / "pa.safetensors"
    save_file(rgb.state_dict(), path)
    torch.manual_seed(2)
    plain = build_model("families-tiny", 6)
    torch.manual_seed(2)
    model = build_model("families-tiny", 6, weights=parse_weights(f"PA={path}"))
    src = rgb.state_dict()
    got = model.experts["PA"].state_dict()
    assert torch.allclose(got["stem.0.weight"], src["stem.0.weight"].sum(1, keepdim=True))
    body = [k for k in got if k.startswith("stages.")]
    assert body and all(torch.equal(got[k], src[k]) for k in body)
    assert got["head.fc.weight"].shape == (6, 128)
    assert not torch.equal(got["stages.0.blocks.0.conv_dw.weight"],
                           plain.experts["PA"].state_dict()["stages.0.blocks.0.conv_dw.weight"])


def test_pretrained_weights_errors_name_the_member_and_file(tmp_path):
    import pytest

    from shared_models.networks import WeightsError, parse_weights

    with pytest.raises(WeightsError, match="MEMBER=PATH"):
        parse_weights("chest=/x.pth")
    with pytest.raises(WeightsError, match="LAT: .*missing.pth is not a file"):
        build_model("families-tiny", 6, weights={"LAT": tmp_path / "missing.pth"})
    wrong = tmp_path / "wrong.pth"
    torch.save({"foo.weight": torch.zeros(3)}, wrong)
    with pytest.raises(WeightsError, match=r"AP: .*wrong.pth does not fit swin"):
        build_model("families-tiny", 6, weights={"AP": wrong})
    with pytest.raises(WeightsError, match="generalist"):
        build_model("families-tiny", 6, weights={"generalist": wrong})


def test_token_experts_follow_the_run_image_size():
    model = build_model("families-tiny", 6, image_size=96).eval()
    with torch.no_grad():
        out = model(torch.randn(3, 1, 96, 96), torch.tensor([0, 1, 2]))
    assert out.shape == (3, 6)


def test_paper_preset_has_the_published_families_at_full_size():
    """Built on the meta device (no memory, no weights): ConvNeXt-V2 / Swin / CaiT at their timm base sizes."""
    from timm.models.cait import Cait
    from timm.models.convnext import ConvNeXt
    from timm.models.swin_transformer import SwinTransformer

    with torch.device("meta"):
        model = build_model("paper", 30, image_size=384)
    kinds = {p: type(model.experts[p]) for p in PROJECTIONS}
    assert kinds == {"PA": ConvNeXt, "AP": SwinTransformer, "LAT": Cait}
    sizes = {p: sum(t.numel() for t in model.experts[p].parameters()) for p in PROJECTIONS}
    assert sizes["PA"] > 80e6 and sizes["AP"] > 80e6 and sizes["LAT"] > 40e6
