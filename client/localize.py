"""``fedchest-site localize IMAGE "PROMPT" ...``: boxes for text prompts from a checkpoint's prompt localiser,
printed in the image's own pixels and drawn on an overlay PNG. Runs at the site: the image never leaves it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from client.imaging import resize_square
from client.localization import predict_boxes
from client.predict import read_checkpoint, read_image
from shared_models.localization.config import loc_spec
from shared_models.localization.model import PromptLocalizer, unprefixed

COLOURS = ((230, 57, 70), (42, 157, 143), (244, 162, 97), (69, 123, 157), (233, 196, 106), (131, 56, 236))


def load_localizer(checkpoint: Path) -> tuple[PromptLocalizer, int]:
    """The localiser a round checkpoint holds and the image size it was trained at; ValueError when it holds none."""
    ckpt = read_checkpoint(checkpoint)
    spec = loc_spec(ckpt.get("localizer") or {})
    if spec is None or "state_dict" not in ckpt:
        raise ValueError(f"{checkpoint}: this run trained no prompt localiser (start a run with localizer = true)")
    model = PromptLocalizer(spec.preset, spec.regions)
    model.load_state_dict(unprefixed(ckpt["state_dict"]))
    return model.eval(), int(ckpt.get("image_size") or 64)


def relative_to_pixels(box: np.ndarray, height: int, width: int, size: int) -> tuple[float, float, float, float]:
    """A relative (cx, cy, w, h) box on the square cache as (x, y, w, h) in pixels of the original image (the
    inverse of shared_models.localization.boxes.pixel_boxes_to_relative)."""
    scale = size / max(height, width)
    nh, nw = max(1, round(height * scale)), max(1, round(width * scale))
    top, left = (size - nh) // 2, (size - nw) // 2
    cx, cy, w, h = (float(v) * size for v in box)
    x0, x1 = ((cx - w / 2 - left) * width / nw, (cx + w / 2 - left) * width / nw)
    y0, y1 = ((cy - h / 2 - top) * height / nh, (cy + h / 2 - top) * height / nh)
    x0, y0 = min(max(0.0, x0), float(width)), min(max(0.0, y0), float(height))
    x1, y1 = min(max(x0, x1), float(width)), min(max(y0, y1), float(height))
    return x0, y0, x1 - x0, y1 - y0


def localize(image: Path, prompts: list[str], checkpoint: Path, threshold: float = 0.5) -> dict:
    """Per prompt, its regions (pixels of the original image) with presence probabilities, best first; a region
    below ``threshold`` is reported with ``shown = false``."""
    from client.zeroshot import text_encoder

    model, size = load_localizer(checkpoint)
    img, _ = read_image(image)
    h, w = img.shape[-2:]
    pixels = resize_square(img[0, 0].numpy(), size)[None]
    with torch.no_grad():
        emb = text_encoder()([p.strip() for p in prompts])
    boxes, scores = predict_boxes(model, pixels, emb)
    out = {"image": str(image), "height": int(h), "width": int(w), "threshold": threshold, "prompts": []}
    for j, prompt in enumerate(prompts):
        order = np.argsort(-scores[0, j])
        regions = [{"box_xywh": [round(v, 1) for v in relative_to_pixels(boxes[0, j, r], h, w, size)],
                    "presence": float(scores[0, j, r]), "shown": bool(scores[0, j, r] >= threshold)} for r in order]
        out["prompts"].append({"prompt": prompt, "regions": regions})
    return out


def draw_overlay(image: Path, result: dict, out: Path, max_side: int = 1024) -> Path:
    """The image with each prompt's shown regions (or, when none reaches the threshold, its best region dashed
    as 'below threshold') in one colour per prompt, with the prompt and presence written beside each box."""
    img, _ = read_image(image)
    arr = (img[0, 0].numpy() * 255).clip(0, 255).astype(np.uint8)
    canvas = Image.fromarray(arr).convert("RGB")
    scale = min(1.0, max_side / max(canvas.size))
    if scale < 1.0:
        canvas = canvas.resize((round(canvas.width * scale), round(canvas.height * scale)), Image.BILINEAR)
    draw = ImageDraw.Draw(canvas)
    line = max(1, round(max(canvas.size) / 256))
    for k, entry in enumerate(result["prompts"]):
        colour = COLOURS[k % len(COLOURS)]
        regions = [r for r in entry["regions"] if r["shown"]] or entry["regions"][:1]
        for r in regions:
            x, y, w, h = (v * scale for v in r["box_xywh"])
            label = f"{entry['prompt']} {r['presence']:.2f}" + ("" if r["shown"] else " (below threshold)")
            if r["shown"]:
                draw.rectangle([x, y, x + w, y + h], outline=colour, width=line)
            else:
                for i in range(0, 4):  # a dashed outline: presence below the threshold
                    xs = np.linspace(x, x + w, 9) if i < 2 else [x + w * (i - 2)] * 9
                    ys = [y + h * i] * 9 if i < 2 else np.linspace(y, y + h, 9)
                    for a in range(0, 8, 2):
                        draw.line([(xs[a], ys[a]), (xs[a + 1], ys[a + 1])], fill=colour, width=line)
            draw.text((x + 2, max(0, y - 11)), label, fill=colour)
    out.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(out)
    return out
