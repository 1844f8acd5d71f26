"""`fedchest-site predict`: the routed ensemble on image files (PNG, JPEG or DICOM) with a global checkpoint.

The projection comes from `--projection`, else the DICOM ViewPosition, else the model's router. Everything
runs at the site; nothing is sent anywhere.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch

from client import dicom_io
from client.imaging import ImageReadError, read_raster, resize_square
from client.sources import harmonise_view
from client.training import PIXEL_MEAN, PIXEL_STD
from shared_models.boxlatent import BoxLatentNet, build_box_model
from shared_models.boxlatent.config import box_spec
from shared_models.device import select_device
from shared_models.networks import PROJECTIONS, build_model, radiograph_state
from shared_models.networks.heads import head_spec
from shared_models.ontology import load_label_set
from shared_models.zeroshot.config import zeroshot_spec
from shared_models.tta import predict_with_tta


def read_checkpoint(checkpoint: Path) -> dict:
    """A round checkpoint's contents (tensors only, never pickled code); ValueError naming the file otherwise."""
    try:
        return torch.load(checkpoint, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, pickle.UnpicklingError, EOFError) as exc:  # missing, truncated, not torch's format
        raise ValueError(f"{checkpoint}: not a readable fedchest checkpoint "
                         f"({str(exc).splitlines()[0][:200]})") from None


def load_global_model(checkpoint: Path):
    """The model a round checkpoint holds (preset and classes are stored in it)."""
    ckpt = read_checkpoint(checkpoint)
    for key in ("state_dict", "model_preset", "classes"):
        if key not in ckpt:
            raise ValueError(f"{checkpoint}: checkpoint lacks {key!r} (expected one written by the fedchest ServerApp)")
    size = int(ckpt.get("image_size", 0) or 0)
    box = box_spec(ckpt.get("box") or {})
    if box is not None:
        model = build_box_model(str(ckpt["model_preset"]), len(ckpt["classes"]), box, image_size=size or None)
    else:
        zs = zeroshot_spec(ckpt.get("zeroshot") or {}, load_label_set(str(ckpt.get("label_set", "cxrlt2026"))))
        model = build_model(str(ckpt["model_preset"]), len(ckpt["classes"]), image_size=size or None,
                            dp_compatible=bool(ckpt.get("dp_compatible", False)), zeroshot=zs,
                            heads=head_spec(ckpt.get("heads") or {}))
    try:
        # a mixed run's checkpoint also holds the CT model (ct.) and the localiser (loc.): not this model's
        model.load_state_dict(radiograph_state(ckpt["state_dict"]))
    except RuntimeError as exc:
        first = str(exc).splitlines()[1].strip()[:160] if "\n" in str(exc) else str(exc)[:160]
        raise ValueError(f"{checkpoint}: weights do not fit preset {ckpt['model_preset']!r} of this fedchest "
                         f"version (written by another version?): {first}") from None
    return model.eval(), list(ckpt["classes"]), size


def read_image(path: Path) -> tuple[torch.Tensor, str | None]:
    """(1, 1, H, W) float in [0, 1] and the metadata view when the file carries one."""
    if path.suffix.lower() in (".dcm", ".dicom"):
        pixels, ds = dicom_io.decode(path)
        return torch.from_numpy(pixels.array)[None, None], harmonise_view(ds.get("ViewPosition"))
    return torch.from_numpy(read_raster(path).array)[None, None], None


def model_input(img: torch.Tensor, size: int, device: torch.device) -> torch.Tensor:
    """(1, 1, size, size) normalised input from a (1, 1, H, W) image in [0, 1]."""
    x = torch.from_numpy(resize_square(img[0, 0].numpy(), size)).float().div(255).sub(PIXEL_MEAN).div(PIXEL_STD)
    return x[None, None].to(device)


def projection_of(model, x: torch.Tensor, view: str | None, projection: str | None) -> tuple[str | None, str]:
    """The view an image is routed by, and where it came from (given, metadata, or the router's guess)."""
    if projection:
        return projection, "given"
    if view:
        return view, "metadata"
    router = model.backbone.router if isinstance(model, BoxLatentNet) else model.router
    with torch.no_grad():
        return (PROJECTIONS[int(router(x).argmax(1))] if router is not None else None), "router"


def predict_files(paths: list[Path], checkpoint: Path, image_size: int | None = None, projection: str | None = None,
                  tta: bool = False) -> list[dict]:
    model, classes, ckpt_size = load_global_model(checkpoint)
    size = image_size or ckpt_size or 224
    device = select_device()
    model.to(device)
    results = []
    for path in paths:
        try:
            img, view = read_image(path)
        except ImageReadError as exc:
            results.append({"image": str(path), "error": str(exc)})
            continue
        x = model_input(img, size, device)
        given = projection or view
        proj = torch.tensor([PROJECTIONS.index(given) if given else -1], device=device)
        chosen, how = projection_of(model, x, view, projection)
        with torch.no_grad():
            if isinstance(model, BoxLatentNet):  # BL-TTA, uncalibrated (predict --report uses the site's temperature)
                if tta:
                    raise ValueError("--tta is for the routed experts; a box-latent checkpoint averages its own "
                                     "samples")
                probs = model(x, proj, model.samples).probabilities()[0]
            else:
                probs = predict_with_tta(model, x, proj)[0] if tta else torch.sigmoid(model(x, proj))[0]
        results.append({
            "image": str(path), "projection": chosen, "projection_from": how, "tta": tta,
            "probabilities": {c: round(float(p), 4) for c, p in zip(classes, probs.cpu())},
        })
    return results
