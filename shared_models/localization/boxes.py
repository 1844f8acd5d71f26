"""Box geometry, Hungarian matching and the DETR-style set loss of the prompt localiser (ChEX, Müller et al. 2024).

Boxes are ``(cx, cy, w, h)`` relative to the image (0-1) unless a name says ``xyxy``. For one (image, prompt)
pair the decoder proposes R regions, each a box and a presence logit. Supervision per pair:

- **boxes** (the class is annotated present and the site has its boxes): regions are matched one-to-one to the
  ground-truth boxes by the Hungarian algorithm on DETR's cost (L1 + generalised IoU - presence); matched
  regions learn their box (L1 and GIoU losses) and presence 1, unmatched regions presence 0;
  presence is Deformable DETR's sigmoid focal loss (alpha 0.25, gamma 2) summed over the supervised regions and
  divided by the matched boxes, as the box terms are: averaged over every region instead (the first version), the
  few matched regions' pull was ~1/3000 of a batch's presence loss and presence stayed near its 0.01 start;
- **absent** (the class is annotated absent): every region learns presence 0;
- **weak** (annotated present, no boxes at this site): the pair's strongest region learns presence 1 (multiple-
  instance learning; the box itself gets no gradient);
- unannotated pairs are left out.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.ops import box_convert, box_iou, generalized_box_iou, sigmoid_focal_loss


def to_xyxy(boxes: torch.Tensor) -> torch.Tensor:
    return box_convert(boxes, "cxcywh", "xyxy")


def to_cxcywh(boxes: torch.Tensor) -> torch.Tensor:
    return box_convert(boxes, "xyxy", "cxcywh")


def pixel_boxes_to_relative(boxes_xywh: np.ndarray, height: int, width: int, size: int) -> np.ndarray:
    """Boxes ``(x, y, w, h)`` in pixels of the original image as relative ``(cx, cy, w, h)`` on the site's
    ``size`` x ``size`` cache, which holds the image resized with its aspect ratio kept and centred on a zero
    canvas (client.imaging.resize_square)."""
    b = np.asarray(boxes_xywh, np.float64).reshape(-1, 4)
    scale = size / max(height, width)
    nh, nw = max(1, round(height * scale)), max(1, round(width * scale))
    top, left = (size - nh) // 2, (size - nw) // 2
    x, y = b[:, 0] * nw / width + left, b[:, 1] * nh / height + top
    w, h = b[:, 2] * nw / width, b[:, 3] * nh / height
    out = np.stack([x + w / 2, y + h / 2, w, h], axis=1) / size
    return np.clip(out, 0.0, 1.0).astype(np.float32)


@dataclass(frozen=True)
class SetLossWeights:
    """Deformable DETR's weights: L1 5, GIoU 2, presence 2 (the same in the matching cost and in the loss)."""

    l1: float = 5.0
    giou: float = 2.0
    presence: float = 2.0
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0


def match(boxes: torch.Tensor, logits: torch.Tensor, target: torch.Tensor, w: SetLossWeights = SetLossWeights()
          ) -> tuple[np.ndarray, np.ndarray]:
    """Region indices and target indices of the minimum-cost one-to-one assignment (R regions, G targets)."""
    from scipy.optimize import linear_sum_assignment  # scipy: imported by runs with the localiser only

    with torch.no_grad():
        cost = (w.l1 * torch.cdist(boxes.float(), target.float(), p=1)
                - w.giou * generalized_box_iou(to_xyxy(boxes.float()), to_xyxy(target.float()))
                - w.presence * torch.sigmoid(logits.float())[:, None])
    rows, cols = linear_sum_assignment(cost.cpu().numpy())
    return rows, cols


def set_loss(boxes: torch.Tensor, logits: torch.Tensor, targets: list[torch.Tensor | None], present: torch.Tensor,
             w: SetLossWeights = SetLossWeights()) -> dict[str, torch.Tensor]:
    """Loss over N (image, prompt) pairs. ``boxes`` (N, R, 4), ``logits`` (N, R); ``targets[n]`` the pair's
    ground-truth boxes (G, 4), or None when it has none; ``present[n]`` 1 annotated present, 0 annotated
    absent, -1 unannotated. Box terms are averaged over matched boxes, presence over supervised regions."""
    n, r = logits.shape
    zero = boxes.sum() * 0.0
    presence_target = torch.zeros_like(logits)
    presence_weight = torch.zeros_like(logits)
    l1, giou, matched = zero, zero, 0
    weak = []
    for i in range(n):
        p = float(present[i])
        t = targets[i]
        if p < 0:
            continue
        if p > 0 and t is not None and len(t):
            rows, cols = match(boxes[i], logits[i], t, w)
            pb, tb = boxes[i, rows], t[cols].to(boxes.dtype)
            l1 = l1 + F.l1_loss(pb, tb, reduction="sum")
            giou = giou + (1.0 - torch.diag(generalized_box_iou(to_xyxy(pb), to_xyxy(tb)))).sum()
            matched += len(rows)
            presence_target[i, torch.as_tensor(rows)] = 1.0
            presence_weight[i] = 1.0
        elif p > 0:
            weak.append(i)
        else:
            presence_weight[i] = 1.0
    focal = sigmoid_focal_loss(logits, presence_target, alpha=w.focal_alpha, gamma=w.focal_gamma, reduction="none")
    presence = (focal * presence_weight).sum() / max(matched, 1)
    if weak:
        strongest = logits[torch.as_tensor(weak)].max(dim=1).values
        weak_loss = F.binary_cross_entropy_with_logits(strongest, torch.ones_like(strongest))
    else:
        weak_loss = zero
    l1 = l1 / max(matched, 1)  # DETR: summed over coordinates and matched boxes, divided by the boxes
    giou = giou / max(matched, 1)
    total = w.l1 * l1 + w.giou * giou + w.presence * (presence + weak_loss)
    return {"total": total, "l1": l1.detach(), "giou": giou.detach(), "presence": presence.detach(),
            "weak": weak_loss.detach(), "matched": torch.tensor(float(matched))}


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of relative (cx, cy, w, h) boxes, (len(a), len(b))."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    return box_iou(to_xyxy(torch.as_tensor(a, dtype=torch.float64)),
                   to_xyxy(torch.as_tensor(b, dtype=torch.float64))).numpy()
