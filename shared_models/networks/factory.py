"""One factory: architectures and sizes are names in configuration (presets.toml), never code."""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import timm

from shared_models.ct.model import CT_PREFIX, ct_parameter_group
from shared_models.localization.model import LOC_PREFIX, loc_parameter_group
from shared_models.networks.experts import PROJECTIONS, RoutedExperts
from shared_models.networks.heads import HeadSpec, TRCGLExpert
from shared_models.privacy.compat import make_dp_compatible


@lru_cache(maxsize=None)
def _presets() -> dict[str, Any]:
    return tomllib.loads(resources.files("shared_models.networks").joinpath("presets.toml").read_text("utf-8"))


def available_presets() -> list[str]:
    return sorted(_presets())


def load_preset(name: str) -> dict[str, Any]:
    try:
        return _presets()[name]
    except KeyError:
        raise KeyError(f"unknown model preset {name!r}; available: {', '.join(available_presets())}") from None


MEMBERS = (*PROJECTIONS, "router", "generalist")


class WeightsError(ValueError):
    """A local pretrained-weights file that cannot be used for the member it was given for."""


def parse_weights(spec: str) -> dict[str, Path]:
    """``"PA=/w/convnextv2.safetensors,LAT=/w/cait.pth"`` (the run config ``pretrained-weights``) as a mapping
    from ensemble member to a local file. Members: PA, AP, LAT, router, generalist."""
    out: dict[str, Path] = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        member, sep, path = item.partition("=")
        if not sep or member.strip() not in MEMBERS or not path.strip():
            raise WeightsError(f"pretrained-weights entry {item!r}: expected MEMBER=PATH with MEMBER one of "
                               f"{', '.join(MEMBERS)}")
        out[member.strip()] = Path(path.strip()).expanduser()
    return out


def _timm(entry: dict, num_classes: int, image_size: int | None = None, weights: Path | None = None,
          member: str = ""):
    args = {k: tuple(v) if isinstance(v, list) else v for k, v in entry.get("args", {}).items()}
    if image_size and "img_size" in args:  # token models (Swin, CaiT) are built for the run's input size
        args["img_size"] = image_size
    net = timm.create_model(entry["arch"], pretrained=False, in_chans=1, num_classes=num_classes, **args)
    if weights is not None:
        _load_local(net, weights, member, entry["arch"])
    return net


def _load_local(net, path: Path, member: str, arch: str) -> None:
    """A local checkpoint into ``net``, strictly: RGB stems are summed to one channel (timm's
    ``adapt_input_conv``), position tables go through the architecture's own checkpoint filter, a classifier
    of another size is left freshly initialised; any other missing or unexpected key is an error."""
    import sys

    from timm.models import load_state_dict
    from timm.models._manipulate import adapt_input_conv

    where = f"pretrained weights for {member}: {path}"
    if not path.is_file():
        raise WeightsError(f"{where} is not a file")
    try:
        state = load_state_dict(str(path))
    except Exception as exc:  # noqa: BLE001 - any unreadable file becomes one clear message
        raise WeightsError(f"{where} cannot be read as a state dict ({type(exc).__name__}: {exc})") from None
    filter_fn = getattr(sys.modules[type(net).__module__], "checkpoint_filter_fn", None)
    cfg = net.pretrained_cfg
    try:
        if filter_fn is not None:
            state = filter_fn(state, net)
        for conv in _cfg_names(cfg, "first_conv"):
            key = f"{conv}.weight"
            if key in state and state[key].ndim == 4 and state[key].shape[1] != 1:
                state[key] = adapt_input_conv(1, state[key])
    except Exception as exc:  # noqa: BLE001
        raise WeightsError(f"{where} does not fit {arch}: {type(exc).__name__}: {exc}") from None
    own = net.state_dict()
    head = {k for k in own if any(k.startswith(f"{c}.") for c in _cfg_names(cfg, "classifier"))}
    for k in head:
        if k in state and state[k].shape != own[k].shape:
            del state[k]  # another label set: this head starts fresh
    for k in [k for k in state if k not in own and any(k.startswith(f"{c}.") for c in _cfg_names(cfg, "classifier"))]:
        del state[k]  # a backbone built without its classifier (the TRCGL heads bring their own)
    missing = [k for k in own if k not in state and k not in head]
    unexpected = [k for k in state if k not in own]
    wrong = [k for k in state if k in own and state[k].shape != own[k].shape]
    if missing or unexpected or wrong:
        raise WeightsError(
            f"{where} does not fit {arch} with the preset's arguments: {len(missing)} missing "
            f"(e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]}), {len(wrong)} of another "
            f"shape (e.g. {[(k, tuple(state[k].shape), tuple(own[k].shape)) for k in wrong[:2]]})")
    net.load_state_dict(state, strict=False)


def _cfg_names(cfg: dict, key: str) -> list[str]:
    """A timm pretrained_cfg field that holds one module name or several (``first_conv``, ``classifier``)."""
    value = cfg.get(key) or []
    return [value] if isinstance(value, str) else [v for v in value if v]


def build_model(preset: str, num_classes: int, routing: str = "soft", image_size: int | None = None,
                weights: Mapping[str, Path] | None = None, dp_compatible: bool = False,
                zeroshot: Any = None, heads: HeadSpec | None = None) -> RoutedExperts:
    """Routed experts (and the router and generalist, when the preset has them) from timm with ``in_chans=1``.
    Random init unless ``weights`` names a local file for a member; nothing is ever downloaded.
    ``image_size`` sets ``img_size`` for architectures whose preset gives one (Swin, CaiT).
    ``dp_compatible`` swaps batch norm for group norm (and in-place / fused ops for plain ones) so that DP-SGD's
    per-sample gradients are exact; server and sites must agree on it (it changes the parameter names).
    ``zeroshot`` (a ``shared_models.zeroshot.config.ZeroShotSpec``) adds the image-text head: the result is then a
    ``DualBranch``, whose separate image encoder (when asked for) comes from the preset's ``zeroshot`` entry, else
    its ``generalist`` entry. ``heads`` (``shared_models.networks.heads.HeadSpec``) puts TRCGL-Net's options on the
    experts and the generalist: squeeze-and-excitation, CSRA, the label co-occurrence graph."""
    spec = load_preset(preset)
    weights = dict(weights or {})
    unknown = set(weights) - set(MEMBERS) | {m for m in ("router", "generalist") if m in weights and m not in spec}
    if unknown:
        raise WeightsError(f"pretrained weights given for {sorted(unknown)}, which preset {preset!r} does not have")

    def member(name: str, entry: dict, n: int):
        if heads is not None and name != "router":
            return TRCGLExpert(_timm(entry, 0, image_size, weights.get(name), name), n, heads)
        return _timm(entry, n, image_size, weights.get(name), name)

    experts = {proj: member(proj, spec["experts"][proj], num_classes) for proj in PROJECTIONS}
    router = member("router", spec["router"], len(PROJECTIONS)) if "router" in spec else None
    generalist = member("generalist", spec["generalist"], num_classes) if "generalist" in spec else None
    model = RoutedExperts(experts, num_classes, router, routing, generalist)
    if zeroshot is not None:
        from shared_models.zeroshot.config import TEXT_DIM
        from shared_models.zeroshot.model import DualBranch, build_head

        def encoder():
            entry = spec.get("zeroshot") or spec.get("generalist")
            if entry is None:
                raise KeyError(f"preset {preset!r} has neither a zeroshot nor a generalist entry for a separate "
                               "image encoder; use zeroshot-image-encoder = \"experts\"")
            return _timm(entry, 0, image_size)

        model = DualBranch(model, build_head(zeroshot, model, encoder, TEXT_DIM), zeroshot.image_encoder,
                           zeroshot.image_grad)
    if dp_compatible:
        make_dp_compatible(model)
    return model


NORM_LAYERS = ("BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "SyncBatchNorm", "GroupNorm")


def norm_keys(model) -> list[str]:
    """The state-dict keys of the model's normalisation layers (batch norm, and the group norm that replaces it in a
    DP-compatible model): their affine parameters and running statistics, what FedBN keeps at each site."""
    prefixes = [name for name, module in model.named_modules() if type(module).__name__ in NORM_LAYERS]
    return [k for k in model.state_dict() if any(k.rsplit(".", 1)[0] == p for p in prefixes)]


def float_state_keys(state: Mapping[str, Any]) -> list[str]:
    """The floating-point entries of a state dict, in order (what secure aggregation sums; integer buffers such
    as batch-norm counters stay out)."""
    return [k for k, v in state.items() if v.is_floating_point()]


SIDE_MODEL_PREFIXES = (CT_PREFIX, LOC_PREFIX)  # models a run's global state may carry beside the radiograph one


def radiograph_state(state: Mapping[str, Any]) -> dict[str, Any]:
    """The radiograph model's entries of a global state dict: without the CT model (``ct.``) and the prompt
    localiser (``loc.``) a mixed run's state also holds."""
    return {k: v for k, v in state.items() if not k.startswith(SIDE_MODEL_PREFIXES)}


def parameter_group(key: str) -> str:
    """The parameter group a state-dict key belongs to (``experts.PA``, ``zeroshot.image_proj.PA``,
    ``zeroshot.text_proj`` ...), the unit of aggregation."""
    parts = key.split(".")
    if parts[0] == "ct":  # the CT model of a mixed run: ct.encoder, ct.head, ct.text (shared_models/ct/model.py)
        return ct_parameter_group(key)
    if parts[0] == "loc":  # the prompt localiser: loc.backbone, loc.decoder (shared_models/localization/model.py)
        return loc_parameter_group(key)
    if parts[0] == "zeroshot" and len(parts) > 2:
        return ".".join(parts[:3]) if parts[1] == "image_proj" else ".".join(parts[:2])
    return ".".join(parts[:2]) if parts[0] in ("experts", "zeroshot") else parts[0]


def group_keys(keys) -> dict[str, list[str]]:
    """State-dict keys by parameter group, in order."""
    out: dict[str, list[str]] = {}
    for k in keys:
        out.setdefault(parameter_group(k), []).append(k)
    return out


def classifier_keys(model: RoutedExperts) -> dict[str, list[str]]:
    """Per expert group (and the generalist), the state-dict keys of its final classifier, whose first axis
    is the class. A model with its own ``classifier_keys()`` (the box-latent net) answers for itself."""
    if hasattr(model, "classifier_keys"):
        return model.classifier_keys()
    members = {f"experts.{p}": e for p, e in model.experts.items()}
    if model.generalist is not None:
        members["generalist"] = model.generalist
    out = {}
    for group, net in members.items():
        head = net.get_classifier()
        prefix = next(name for name, module in net.named_modules() if module is head)
        out[group] = [f"{group}.{prefix}.{name}" for name, _ in head.named_parameters()]
    return out
