"""The prompt localiser learns boxes: on a handful of images with one bright square each, 100 steps of the set
loss (seconds on a quiet CPU) bring every top box to IoU > 0.5 with its square. Fails when the box loss, the
matching or the box parameterisation is broken (a box that does not follow its target, or a presence that does
not single out the matched region); that the matching is the minimum-cost assignment is tested in
test_localization.py."""

from __future__ import annotations

import numpy as np
import torch

from shared_models.localization import PromptLocalizer, set_loss
from shared_models.localization.boxes import iou_matrix


def _squares(n: int, size: int, rng: np.random.Generator) -> tuple[torch.Tensor, list[torch.Tensor]]:
    x = torch.zeros(n, 1, size, size)
    targets = []
    for i in range(n):
        w, h = rng.integers(size // 6, size // 3, 2)
        x0, y0 = rng.integers(0, size - w), rng.integers(0, size - h)
        x[i, 0, y0:y0 + h, x0:x0 + w] = 3.0
        targets.append(torch.tensor([[(x0 + w / 2) / size, (y0 + h / 2) / size, w / size, h / size]]))
    return x, targets


def _top_box_iou(model: PromptLocalizer, x: torch.Tensor, prompt: torch.Tensor, targets: list[torch.Tensor]
                 ) -> np.ndarray:
    with torch.no_grad():
        boxes, logits = model.eval()(x, prompt)
    top = logits[:, 0].argmax(dim=1)
    return np.array([iou_matrix(boxes[i, 0, top[i]][None].numpy(), t.numpy())[0, 0] for i, t in enumerate(targets)])


def test_the_localiser_overfits_a_handful_of_boxes():
    torch.manual_seed(0)
    x, targets = _squares(8, 32, np.random.default_rng(0))
    prompt = torch.nn.functional.normalize(torch.randn(1, 384), dim=1)
    model = PromptLocalizer("loc-tiny", regions=3)
    before = _top_box_iou(model, x, prompt, targets)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    model.train()
    for _ in range(100):
        boxes, logits = model(x, prompt)
        loss = set_loss(boxes.reshape(-1, 3, 4), logits.reshape(-1, 3), targets, torch.ones(len(targets)))
        opt.zero_grad()
        loss["total"].backward()
        opt.step()
    after = _top_box_iou(model, x, prompt, targets)
    assert before.mean() < 0.3
    assert after.min() > 0.5, after
