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
    rng = np.random.default_rng(0)
    data = SiteData(rng.integers(0, 255, (12, 64, 64), dtype=np.uint8), np.array([0, 1, 2] * 4),
                    (rng.random((12, 6)) < 0.3).astype(np.float32), np.ones((12, 6), np.float32))
    stats = train_local(model, data, 1, 1e-3, 6, torch.device("cpu"))
    assert np.isfinite(stats["train_loss"])
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
