"""FedBN (Li et al., ICLR 2021) at a site: the normalisation layers' affine parameters and running statistics are
the site's own. They are trained with the rest, kept in the site's work dir between rounds (one file per run) and
never sent; each round the site puts them back over the global model it receives, for training and evaluation
alike. They fit the site's imaging chain (scanner, processing, AP/PA mix), the feature shift FedBN is for.

Under DP-SGD the model has group norm instead of batch norm (shared_models/privacy/compat.py); FedBN then keeps the
group-norm affine parameters at the site. They are trained under the same DP-SGD step as every other parameter and
nothing about them leaves, so the site releases less than without FedBN and its epsilon is unchanged."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from client.site_config import SiteConfig
from shared_models.networks import norm_keys


def enabled(config: Mapping[str, Any]) -> bool:
    return bool(config.get("fedbn", False))


def local_path(site: SiteConfig, run_id: str) -> Path:
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in run_id) or "run"
    return site.work_dir / "fedbn" / f"{safe}.pt"


def restore(model: torch.nn.Module, site: SiteConfig, run_id: str) -> bool:
    """Put the site's own normalisation state of this run over the model's (loaded from the global model); False
    before the site's first round of the run (the global model's initial values are used)."""
    path = local_path(site, run_id)
    if not path.is_file():
        return False
    saved = torch.load(path, map_location="cpu", weights_only=True)
    keys = set(norm_keys(model))
    if set(saved) != keys:
        raise ValueError(f"{path}: the saved normalisation state does not fit this run's model ({len(saved)} keys, "
                         f"the model has {len(keys)}); remove the file to start this site's FedBN state afresh")
    model.load_state_dict(saved, strict=False)
    return True


def keep(model: torch.nn.Module, site: SiteConfig, run_id: str) -> list[str]:
    """Save the model's normalisation state as the site's own for this run; returns the keys that stay."""
    keys = norm_keys(model)
    state = model.state_dict()
    path = local_path(site, run_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save({k: state[k].detach().cpu().clone() for k in keys}, tmp)
    tmp.replace(path)
    return keys
