"""Zero-shot branch, first part: losses against their formulas, the prompt bank, CheXzero scoring on a
hand-built example, the offline frozen MiniLM text encoder."""

from __future__ import annotations

import math

import pytest
import torch

from shared_models.zeroshot import (PromptError, TemplatePromptGenerator, class_embeddings, clip_loss,
                                    load_prompt_bank, siglip_loss, zero_shot_probabilities)


def _cos(a, b):
    return float(torch.dot(a, b) / (a.norm() * b.norm()))


def test_clip_loss_matches_its_formula():
    torch.manual_seed(0)
    img, txt, t = torch.randn(5, 8), torch.randn(5, 8), torch.tensor(math.log(1 / 0.07))
    s = math.exp(float(t))
    logits = [[s * _cos(img[i], txt[j]) for j in range(5)] for i in range(5)]
    rows = -sum(logits[i][i] - math.log(sum(math.exp(v) for v in logits[i])) for i in range(5)) / 5
    cols = -sum(logits[j][j] - math.log(sum(math.exp(logits[i][j]) for i in range(5))) for j in range(5)) / 5
    assert float(clip_loss(img, txt, t)) == pytest.approx((rows + cols) / 2, rel=1e-5)
    big = clip_loss(img, txt, torch.tensor(10.0))  # exp(10) > 100: the scale is clamped at 100
    assert float(big) == pytest.approx(float(clip_loss(img, txt, torch.tensor(math.log(100.0)))), rel=1e-6)


def test_siglip_loss_matches_its_formula():
    torch.manual_seed(1)
    img, txt = torch.randn(4, 6), torch.randn(4, 6)
    t, b = torch.tensor(math.log(10.0)), torch.tensor(-10.0)
    total = 0.0
    for i in range(4):
        for j in range(4):
            z = 1.0 if i == j else -1.0
            total += math.log(1 / (1 + math.exp(-z * (10.0 * _cos(img[i], txt[j]) - 10.0))))
    assert float(siglip_loss(img, txt, t, b)) == pytest.approx(-total / 4, rel=1e-5)


def test_chexzero_scoring_on_a_hand_built_example():
    pos = class_embeddings([torch.tensor([[1.0, 0.0, 0.0], [2.0, 0.0, 0.0]]), torch.tensor([[0.0, 1.0, 0.0]])])
    neg = class_embeddings([torch.tensor([[0.0, 0.0, 1.0]]), torch.tensor([[0.0, 0.0, 1.0]])])
    assert torch.allclose(pos[0], torch.tensor([1.0, 0.0, 0.0]))  # prompts normalised, averaged, re-normalised
    image = torch.tensor([[3.0, 0.0, 0.0]])  # along class 0's positive, orthogonal to everything else
    p = zero_shot_probabilities(image, pos, neg)
    assert float(p[0, 0]) == pytest.approx(math.e / (math.e + 1))  # cos 1 vs cos 0
    assert float(p[0, 1]) == pytest.approx(0.5)  # cos 0 vs cos 0
    assert float(zero_shot_probabilities(torch.tensor([[0.0, 0.0, 1.0]]), pos, neg)[0, 0]) == pytest.approx(
        1 / (1 + math.e))


def test_prompt_bank_covers_every_class_and_validates(tmp_path):
    bank = load_prompt_bank("cxrlt2026")
    assert set(bank.positive) == set(bank.label_set.classes) and len(bank.positive) == 36
    for held_out in bank.label_set.zeroshot:
        pos, neg = bank.prompts(held_out)
        assert pos and neg
    assert TemplatePromptGenerator().prompts("Pleural Effusion")[0][0] == "pleural effusion"
    assert TemplatePromptGenerator().prompts("Pleural Effusion")[1][0] == "no pleural effusion"
    bad = tmp_path / "p.toml"
    bad.write_text('[classes."Normal"]\npositive = ["clear"]\nnegative = []\n')
    with pytest.raises(PromptError, match=r"p.toml \[classes.'Normal'\]: `negative` must be a non-empty list"):
        load_prompt_bank("cxrlt2026", bad)
    bad.write_text('[classes."Unicorn"]\npositive = ["x"]\nnegative = ["y"]\n')
    with pytest.raises(PromptError, match="'Unicorn' is not in label set"):
        load_prompt_bank("cxrlt2026", bad)
    bad.write_text('[classes."Normal"]\npositive = ["x"]\nnegative = ["y"]\n')
    with pytest.raises(PromptError, match="no prompts for 35 class"):
        load_prompt_bank("cxrlt2026", bad)


def test_minilm_loads_offline_frozen_and_ranks_sentences_sensibly():
    from shared_models.zeroshot.text_encoder import MiniLMTextEncoder

    enc = MiniLMTextEncoder().eval()
    assert not any(p.requires_grad for p in enc.parameters())
    with torch.no_grad():
        e = enc(["pleural effusion", "fluid layering in the pleural space at the lung base", "fracture of a rib"])
    assert e.shape == (3, 384)
    assert _cos(e[0], e[1]) > _cos(e[0], e[2])
    trainable = MiniLMTextEncoder(trainable_layers=1)
    names = [n for n, p in trainable.named_parameters() if p.requires_grad]
    assert names and all(".encoder.layer.5." in n for n in names)
