"""A CT site in a federated run, framework-free (client_app.py wraps it in Flower messages): the run's grid, the
site's volumes and sentence embeddings kept in memory between rounds, a training round (plain or DP-SGD under the
site's privacy policy) and an evaluation summary.

What leaves the site: the CT model's parameter groups (``ct.encoder``, ``ct.head``, ``ct.text``) with the number of
training volumes behind them, per-class positive counts, and evaluation aggregates (per-class score histograms,
retrieval hit counts, summed depth errors), each under the site's small-count rule. Never a volume, a report, a
sentence or a per-volume row.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from client.ct.index import CTIndex, prepare_ct_site, site_ct_spec
from client.ct.training import CTTrainConfig, SentenceBank, SiteTensors, evaluate_ct, prompt_embeddings, site_data
from client.ct.training import train_ct
from client.ct.volume import CTSpec
from client.dp_release import ReleasedCounts, released_counts
from client.evaluation import EXACT, WITHHELD
from client.local_round import dp_round
from client.privacy import PolicyRefusal
from client.site_config import SiteConfig
from shared_models.ct.config import CTRunSpec, ct_spec
from shared_models.ct.metrics import retrieval_hits
from shared_models.ct.model import CTVLM, ct_parameter_group, prefixed, unprefixed
from shared_models.messages import (DP_EVALUATION, EVAL_SECONDS, NUM_EXAMPLES, TRAIN_LOSS, TRAIN_SECONDS,
                                     TrainReply)
from shared_models.metrics import HistogramSpec
from shared_models.privacy import DPSettings, dp_schedule

HEAD = "ct-vlm"  # the privacy ledger's name for this model
RECALL_KS = (1, 5, 10)


class NotACTRun(RuntimeError):
    pass


@dataclass
class CTSiteData:
    index: CTIndex
    bank: SentenceBank
    prompts: tuple[torch.Tensor, torch.Tensor]
    splits: dict[str, SiteTensors | None]
    grid: CTSpec


_SITES: dict[tuple[str, str], tuple[float, CTSiteData]] = {}


def run_grid(site: SiteConfig, run: CTRunSpec) -> CTSpec:
    """The run's spacing and size with the site's own HU window."""
    return CTSpec(run.spacing, run.size, site_ct_spec(site).window)


def _stamp(site: SiteConfig) -> float:
    """Changes when site.toml changes (sources added or moved): the in-memory volumes are then re-read."""
    return os.path.getmtime(site.path)


def load_ct_site(site: SiteConfig, run: CTRunSpec) -> CTSiteData:
    """The site's volumes on the run's grid (decoded once into the site's cache, then kept in memory while the
    simulation actor or SuperNode process lives), their frozen sentence embeddings and the disease prompts."""
    grid = run_grid(site, run)
    key = (str(site.path), grid.key())
    hit = _SITES.get(key)
    if hit is not None and hit[0] == _stamp(site):
        return hit[1]
    index = prepare_ct_site(site, grid)
    bank = SentenceBank(site.work_dir / "ct-text")
    data = CTSiteData(index, bank, prompt_embeddings(index.classes, bank),
                      {s: site_data(index, s, bank) for s in ("train", "val", "test")}, grid)
    _SITES[key] = (_stamp(site), data)
    return data


def _spec(config: Mapping[str, Any], site: SiteConfig) -> CTRunSpec:
    spec = ct_spec(config)
    if spec is None:
        raise NotACTRun(f"{site.name} is a chest-CT site and this run does not train the CT model (run config ct = "
                        "false); start the run with ct = true, or leave this site out of it")
    return spec


def _model(spec: CTRunSpec, state: Mapping[str, torch.Tensor]) -> CTVLM:
    model = CTVLM(spec.preset)
    model.load_state_dict(unprefixed(state))
    return model


def class_counts(data: SiteTensors) -> tuple[np.ndarray, np.ndarray]:
    m = data.mask.numpy() > 0
    return (data.targets.numpy().astype(bool) & m).sum(0), m.sum(0)


def train_ct_round(config: Mapping[str, Any], site: SiteConfig, state: Mapping[str, torch.Tensor]
                   ) -> tuple[dict[str, torch.Tensor], TrainReply]:
    """One local round; returns (the groups that leave, under the ``ct.`` prefix; the train reply that leaves)."""
    t0 = time.perf_counter()
    spec = _spec(config, site)
    dp = bool(config.get("dp", False))
    sigma, clip = float(config.get("dp-noise-multiplier", 0.0)), float(config.get("dp-max-grad-norm", 0.0))
    site.privacy.check_run(dp, sigma, clip)
    data = load_ct_site(site, spec)
    train = data.splits["train"]
    n = 0 if train is None else int(train.x.shape[0])
    k = site.privacy.suppress
    if n == 0:
        raise ValueError(f"{site.name}: no training volumes on the run's CT grid ({len(data.index.rejected)} "
                         "rejected; see `fedchest-site check`)")
    model = _model(spec, state)
    rnd = int(config["server-round"])
    cfg = CTTrainConfig(epochs=int(config["local-epochs"]), lr=spec.lr, batch_size=spec.batch_size,
                        disease_weight=spec.disease_weight, loc_weight=spec.loc_weight,
                        seed=int(config.get("seed", 0)) * 1000 + rnd)
    if dp:  # counts, sampling rate and positive weights from the site's released counts only (client/dp_release.py)
        release = released_counts(site, config, train.targets.numpy(), train.mask.numpy(),
                                  np.full(n, -1), kind="ct")
        pos, ann = release.class_counts()
        stats, privacy = _train_dp(config, site, model, train, data, cfg, DPSettings(sigma, clip), release)
        count, exact = float(release.public_size), {}
    else:
        pos, ann = class_counts(train)
        stats, privacy = train_ct(model, train, data.prompts, cfg, torch.as_tensor(pos), torch.as_tensor(ann)), {}
        pos, ann = [k(float(v)) for v in pos], [k(float(v)) for v in ann]
        count = float(k(n))
        exact = {TRAIN_LOSS: float(stats["ct_total_loss"]),
                 **{key: float(v) for key, v in stats.items() if key.startswith("ct_") and key.endswith("_loss")}}
    out = {key: v for key, v in prefixed(model.state_dict()).items()
           if count > 0 and not site.privacy.withheld(ct_parameter_group(key))}
    groups = {ct_parameter_group(key) for key in out}
    reply = TrainReply(int(count), {g: count for g in sorted(groups)}, ct_train_pos=[int(v) for v in pos],
                       ct_train_annotated=[int(v) for v in ann],
                       extra={**exact, TRAIN_SECONDS: time.perf_counter() - t0, **privacy})
    return out, reply


def _train_dp(config, site: SiteConfig, model: CTVLM, train: SiteTensors, data: CTSiteData, cfg: CTTrainConfig,
              dp: DPSettings, release: ReleasedCounts) -> tuple[dict[str, float], dict[str, float]]:
    """DP-SGD (client/ct/dp.py) under the site's budget, written to the site's privacy ledger."""
    from client.ct.dp import train_ct_dp

    rate, steps = dp_schedule(release.public_size, cfg.batch_size, cfg.epochs)
    pos, ann = release.class_counts()
    return dp_round(site, config, dp, rate, steps, HEAD,
                    lambda: train_ct_dp(model, train, data.prompts, cfg, dp, release.public_size,
                                        torch.as_tensor(pos, dtype=torch.float32),
                                        torch.as_tensor(ann, dtype=torch.float32)))


def evaluate_ct_round(config: Mapping[str, Any], site: SiteConfig, state: Mapping[str, torch.Tensor],
                      hist: HistogramSpec, split: str = "test") -> dict[str, Any]:
    """The evaluation summary of the global CT model on one split (keys under ``ct.``)."""
    from client.evaluation import scope_summary

    t0 = time.perf_counter()
    spec = _spec(config, site)
    data = load_ct_site(site, spec)
    tensors = data.splits.get(split)
    mode = dp_evaluation_mode(config, site)
    if mode == WITHHELD:
        tensors = None  # a DP site's CT evaluation leaves only by its policy's explicit choice
    k, min_count = site.privacy.suppress, site.privacy.min_count
    c = len(data.index.classes)
    if tensors is None:
        probs, targets, mask = np.zeros((0, c)), np.zeros((0, c)), np.zeros((0, c))
        ev: dict = {"n": 0}
    else:
        model = _model(spec, state)
        ev = evaluate_ct(model, tensors, data.prompts, data.grid.spacing[0])
        probs = 1.0 / (1.0 + np.exp(-float(model.t.detach().exp()) * ev["scores"]))
        targets, mask = tensors.targets.numpy(), tensors.mask.numpy()
    out: dict[str, Any] = {NUM_EXAMPLES: int(k(ev["n"])), "ct.volumes": int(k(ev["n"]))}
    out.update(scope_summary(probs, targets, mask, hist, min_count, "all", prefix="ct."))
    n = ev["n"] if ev["n"] >= max(min_count, 1) else 0
    hits = retrieval_hits(ev["text"], ev["volume"], RECALL_KS) if n else {kk: 0 for kk in RECALL_KS}
    out["ct.r_n"] = n
    out["ct.r_hits"] = [int(hits[kk]) for kk in RECALL_KS]
    m = int(ev.get("loc_n", 0)) if n else 0  # snippets of fewer than min_count volumes stay at the site
    if m and m >= min_count:
        step = data.grid.spacing[0] * 2  # mm per encoder depth position
        out.update({"ct.loc_n": m, "ct.loc_abs_mm": float(ev["loc_errors"].sum() * step),
                    "ct.loc_centre_abs_mm": float(ev["loc_centre_errors"].sum() * step)})
    else:
        out.update({"ct.loc_n": 0, "ct.loc_abs_mm": 0.0, "ct.loc_centre_abs_mm": 0.0})
    if mode is not None:
        out[DP_EVALUATION] = mode
    out[EVAL_SECONDS] = time.perf_counter() - t0
    return out


def dp_evaluation_mode(config: Mapping[str, Any], site: SiteConfig) -> int | None:
    """None without DP; under DP EXACT where the site's policy allows it, else WITHHELD (the CT summary has no
    noised release yet: asking for one is refused rather than sent exact)."""
    if not bool(config.get("dp", False)):
        return None
    if site.privacy.dp_exact_evaluation:
        return EXACT
    if float(config.get("dp-eval-noise-multiplier", 0.0)) > 0:
        raise PolicyRefusal("the CT evaluation summary has no noised release: a DP CT site sends it only with "
                            "[privacy] dp_exact_evaluation = true, or withholds it (dp-eval-noise-multiplier = 0)")
    return WITHHELD

