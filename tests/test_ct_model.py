"""The CT vision-language model (issue 11): shapes, parameter groups, DP-compatibility, and that a site's training
loop can fit a handful of synthetic volumes (SigLIP falls, retrieval on the fitted volumes becomes perfect)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from client.ct.index import prepare_ct_site
from client.ct.training import CTTrainConfig, SentenceBank, evaluate_ct, losses, prompt_embeddings, site_tensors
from client.ct.volume import CTSpec
from client.site_config import load_site_config
from client.synth.ct import synthesize_ct_site
from shared_models.ct.losses import pos_weights
from shared_models.ct.model import CTVLM, ct_parameter_group, feature_valid


def test_encoder_shapes_groups_and_dp_compatibility():
    from opacus.validators import ModuleValidator

    m = CTVLM("ct-tiny")
    v, s = m.encode_volume(torch.randn(3, 1, 16, 32, 32))
    assert v.shape == (3, 128) and s.shape == (3, 8, 128)  # depth kept at half the input slices
    assert m.encode_text(torch.randn(5, 384)).shape == (5, 128)
    groups = {ct_parameter_group(k) for k in m.state_dict()}
    assert groups == {"ct.encoder", "ct.head", "ct.text"}
    assert ModuleValidator.validate(m.encoder, strict=False) == []  # GroupNorm: trains under Opacus as is
    valid = torch.tensor([[1, 1, 1, 0, 0, 0, 0, 0], [1, 1, 1, 1, 1, 1, 1, 1]], dtype=torch.bool)
    assert feature_valid(valid).tolist() == [[True, True, False, False], [True] * 4]
    with pytest.raises(ValueError, match="unknown CT preset"):
        CTVLM("ct-huge")


def test_site_training_fits_a_few_volumes(tmp_path):
    toml = synthesize_ct_site(tmp_path / "site", "dicom-ct", "fit", n_volumes=6, shape=(16, 32, 32),
                              spacing=(6.0, 6.0, 6.0), seed=5)
    cfg = dataclasses.replace(load_site_config(toml), work_dir=tmp_path / "work")
    index = prepare_ct_site(cfg, CTSpec((6.0, 6.0, 6.0), (16, 32, 32)))
    bank = SentenceBank(tmp_path / "work" / "text")
    data = site_tensors(index.volumes, bank)
    prompts = prompt_embeddings(index.classes, bank)
    assert (tmp_path / "work" / "text" / "sentences.npz").exists()  # embedded once, kept at the site
    torch.manual_seed(0)
    model = CTVLM("ct-tiny")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    w = pos_weights((data.targets * data.mask).sum(0), data.mask.sum(0))
    idx = torch.arange(len(index.volumes))
    first = None
    for step in range(60):
        parts = losses(model, data, idx, prompts, w, step % 3, CTTrainConfig())
        first = first if first is not None else {k: float(v.detach()) for k, v in parts.items()}
        opt.zero_grad()
        parts["total"].backward()
        opt.step()
    assert float(parts["siglip"].detach()) < 0.5 * first["siglip"]
    out = evaluate_ct(model, data, prompts, 6.0)
    assert out["recall"][1] == 1.0 and out["n"] == 6
    assert np.isfinite(out.get("loc_mae_mm", 0.0))
