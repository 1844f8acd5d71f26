import torch

from shared_models.networks import PROJECTIONS, build_model, parameter_group


def test_routing_sends_each_projection_to_its_expert():
    torch.manual_seed(0)
    model = build_model("tiny", 5).eval()
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
    assert {parameter_group(k) for k in keys} == {"experts.PA", "experts.AP", "experts.LAT"}
