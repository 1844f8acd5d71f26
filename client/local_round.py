"""One training round at a site under its privacy policy: check the run's DP settings against the policy,
check the epsilon budget, train (DP-SGD or plain), write the ledger, and shape what may leave (withheld
groups dropped, small counts suppressed). Framework-free: client_app.py wraps it in Flower messages."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

import numpy as np
import torch

from client.dp_training import train_local_dp
from client.dp_release import ReleasedCounts, released_counts
from client.index import SiteData
from client.privacy import PolicyRefusal, PrivacyLedger
from client.site_config import SiteConfig
from client.training import ZeroShotTraining, train_local
from shared_models.boxlatent.config import box_spec
from shared_models.device import select_device
from shared_models.messages import (DP_DELTA, DP_EPSILON, DP_EPSILON_BUDGET, DP_MAX_GRAD_NORM, DP_NOISE_MULTIPLIER,
                                     DP_SAMPLE_RATE, DP_STEPS)
from shared_models.metrics import prevalence as class_prevalence
from shared_models.networks import RoutedExperts, parameter_group
from shared_models.networks.heads import head_spec
from shared_models.ontology import load_label_set
from shared_models.privacy import DPSettings, dp_schedule
from shared_models.zeroshot.config import zeroshot_spec

HEAD = "routed-experts"
T = TypeVar("T")


def ledger_for(site: SiteConfig) -> PrivacyLedger:
    return PrivacyLedger(site.work_dir / "privacy-ledger.sqlite")


def dp_request(config: Mapping[str, Any]) -> tuple[bool, float, float]:
    return (bool(config.get("dp", False)), float(config.get("dp-noise-multiplier", 0.0)),
            float(config.get("dp-max-grad-norm", 0.0)))


def check_dp_config(config: Mapping[str, Any], site: SiteConfig) -> None:
    """Refuse, before anything is trained or charged, a run config that DP-SGD cannot honour at this site: the
    policy's minimum settings, re-sampling (the accountant assumes uniform Poisson sampling), heads without DP
    training, and label co-occurrence counts without noise. No check on class priors is needed: under DP they come
    only from released counts (``train_round``)."""
    dp, sigma, clip = dp_request(config)
    site.privacy.check_run(dp, sigma, clip)
    if not dp:
        return
    if str(config.get("sampling", "none")) != "none":
        raise PolicyRefusal("re-sampling for the long tail is not available under DP-SGD (the accountant assumes "
                            "uniform Poisson sampling and the weights would come from the site's exact counts); "
                            "use sampling = \"none\" with asl-class-weights or logit-adjust-tau, which under DP use "
                            "released counts")
    if box_spec(config) is not None:
        raise PolicyRefusal("the box-latent head has no DP-SGD training; run it with dp = false")
    if bool(config.get("localizer", False)):
        raise PolicyRefusal("the prompt localiser has no DP-SGD training; run it with dp = false")
    spec = head_spec(config)
    if spec is not None and spec.label_graph and float(config.get("label-graph-noise", 0.0)) <= 0:
        raise PolicyRefusal("a DP run sends label co-occurrence counts only through the Gaussian mechanism: set "
                            "label-graph-noise > 0 (or label-graph = false)")


def site_release(config: Mapping[str, Any], site: SiteConfig, data: SiteData, num_classes: int
                 ) -> ReleasedCounts | None:
    """Under DP, the site's released training counts (client/dp_release.py), after the refusals so that nothing is
    charged for a round that cannot run; None without DP."""
    if not bool(config.get("dp", False)):
        return None
    check_dp_config(config, site)
    return released_counts(site, config, data.targets[:, :num_classes], data.mask[:, :num_classes], data.projection)


def train_round(config: Mapping[str, Any], site: SiteConfig, data: SiteData, model: RoutedExperts,
                release: ReleasedCounts | None = None) -> tuple[dict[str, float], dict[str, float]]:
    """Train the model in place; returns (training stats, privacy metrics to report). Under DP, ``release`` (the
    site's released counts, client/dp_release.py) is the only source of dataset statistics: the sampling rate and
    step count come from its public size, and the class prior (ASL class weights, logit adjustment) from the
    consortium's prevalence or else from it, never from the site's exact counts."""
    policy = site.privacy
    dp, sigma, clip = dp_request(config)
    check_dp_config(config, site)
    if policy.withhold and str(config.get("aggregation", "projection")) == "fedavg":
        raise PolicyRefusal(f"site policy withholds parameter groups {list(policy.withhold)}; plain FedAvg needs "
                            "every group from every site (use aggregation = \"projection\")")
    epochs, batch = int(config["local-epochs"]), int(config["batch-size"])
    box = box_spec(config)
    if box is not None:
        from client.boxlatent import train_box  # the box-latent head's code: imported by its runs only

        prevalence = np.asarray(config["class-prevalence"]) if "class-prevalence" in config else None
        return train_box(model, data, box, epochs, float(config["lr"]), batch, select_device(),
                         seed=int(config.get("seed", 0)) * 1000 + int(config["server-round"]), prevalence=prevalence,
                         asl_class_weights=bool(config.get("asl-class-weights", False))), {}
    common = dict(epochs=epochs, lr=float(config["lr"]), batch_size=batch, device=select_device(),
                  seed=int(config.get("seed", 0)) * 1000 + int(config["server-round"]),
                  proximal_mu=float(config.get("proximal-mu", 0.0)),
                  prevalence=np.asarray(config["class-prevalence"]) if "class-prevalence" in config else None,
                  asl_class_weights=bool(config.get("asl-class-weights", False)),
                  logit_adjust_tau=float(config.get("logit-adjust-tau", 0.0)),
                  weight_decay=float(config.get("weight-decay", 1e-4)), loss=str(config.get("loss", "asl")),
                  augmentation=str(config.get("augment", "shift")))
    zs = prompts = None
    if bool(config.get("zeroshot", False)):
        from client.zeroshot import seen_prompt_features, training_text_features

        label_set = load_label_set(str(config["label-set"]))
        spec = zeroshot_spec(config, label_set)
        hidden = tuple(spec.proxy_indices(label_set))
        texts = training_text_features(data, site.work_dir, label_set, set(hidden), spec.text_unit)
        zs = ZeroShotTraining(texts, spec.weight, hidden)
        prompts = seen_prompt_features(label_set, site.work_dir) if dp else None
    if not dp:
        return train_local(model, data, sampling=str(config.get("sampling", "none")), zeroshot=zs,
                           progress_round=int(config["server-round"]), **common), {}
    if release is None:
        raise ValueError("DP-SGD needs the site's released counts (client/dp_release.py) for its sampling rate")
    size = release.public_size
    if common["prevalence"] is None:
        pos, ann = release.class_counts()
        common["prevalence"] = class_prevalence(pos, ann, empty=0.0)
    del common["seed"]  # DP randomness never comes from the run's seed (shared_models/privacy/randomness.py)
    rate, steps = dp_schedule(size, batch, epochs)
    return dp_round(site, config, DPSettings(sigma, clip), rate, steps, HEAD,
                    lambda: train_local_dp(model, data, dp=DPSettings(sigma, clip), zeroshot=zs, prompts=prompts,
                                           dataset_size=size, **common))



def charged(site: SiteConfig, config: Mapping[str, Any], noise_multiplier: float, rate: float, steps: int, head: str,
            work: Callable[[], T], what: str = "this round", declines: str = "train") -> tuple[T, float]:
    """A Gaussian-mechanism release under the site's epsilon budget: refuse if (noise, rate, steps) would exceed
    it, do the work, write the ledger; returns (the work's result, epsilon spent after it)."""
    policy, ledger = site.privacy, ledger_for(site)
    after = ledger.projected(noise_multiplier, rate, steps, policy.delta, policy.accountant)
    if after > policy.epsilon_budget:
        spent = ledger.spent(policy.delta, policy.accountant)
        raise PolicyRefusal(f"privacy budget: {what} would bring epsilon to {after:.2f} (spent {spent:.2f}, "
                            f"budget {policy.epsilon_budget:g} at delta {policy.delta:g}); the site declines to "
                            f"{declines}")
    result = work()
    eps = ledger.append(str(config.get("run-id", "")), int(config["server-round"]), head, noise_multiplier,
                        rate, steps, policy.delta, policy.accountant)
    return result, eps


def dp_round(site: SiteConfig, config: Mapping[str, Any], dp: DPSettings, rate: float, steps: int, head: str,
             train: Callable[[], dict[str, float]]) -> tuple[dict[str, float], dict[str, float]]:
    """A DP-SGD round under the site's epsilon budget (``charged``); returns (training stats, the privacy metrics
    to report). Those are the mechanism's public settings and the ledger's epsilon (every charged release
    composed); data-dependent values (loss, clipped fraction) stay at the site."""
    policy = site.privacy
    stats, eps = charged(site, config, dp.noise_multiplier, rate, steps, head, train)
    report = {DP_EPSILON: eps, DP_DELTA: policy.delta, DP_NOISE_MULTIPLIER: dp.noise_multiplier,
              DP_MAX_GRAD_NORM: dp.max_grad_norm, DP_STEPS: float(steps), DP_SAMPLE_RATE: rate}
    if math.isfinite(policy.epsilon_budget):
        report[DP_EPSILON_BUDGET] = policy.epsilon_budget
    return stats, report


def outgoing_state(model: RoutedExperts, site: SiteConfig, counts: Mapping[str, float], fedavg: bool,
                   local: Iterable[str] = ()) -> dict[str, torch.Tensor]:
    """The parameters that leave: the groups this site trained (all of them under plain FedAvg), minus the
    groups its policy withholds and the ``local`` keys (FedBN's normalisation layers, client/fedbn.py)."""
    state = model.cpu().state_dict()
    keep = (lambda g: True) if fedavg else (lambda g: counts.get(g, 0) > 0)
    stay = set(local)
    return {k: v for k, v in state.items()
            if k not in stay and keep(parameter_group(k)) and not site.privacy.withheld(parameter_group(k))}
