"""fedchest ClientApp: a hospital site trains and evaluates the global model on its own data.

Which site this node is: `site-config` in the SuperNode's node config (deployment:
`flower-supernode --node-config 'site-config="/data/site.toml"'`), or, in simulation, the i-th
`*/site.toml` under `sim-sites-dir` (run config or message config; folders separated by commas) for virtual
node `partition-id` i.
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from client.audit import outbound_guard, refusal
from client.ct.index import is_ct_site
from client import fedbn
from client.evaluation import evaluation_summary
from client.index import SiteData, load_split, prepare_site
from client.dp_release import ReleasedCounts, evaluation_release
from client.local_round import outgoing_state, site_release, train_round
from client.records import from_record, to_record
from client.reply import summary_record, train_record
from client.site_config import SiteConfig, SiteConfigError, load_site_config
from client.small_records import small_records_mod
from client.timeline import mark_ready, timeline_mod
from client.training import predict
from shared_models.boxlatent import BoxLatentNet, build_box_model
from shared_models.boxlatent.config import box_spec
from shared_models.ct.model import CT_PREFIX
from shared_models.localization.config import loc_spec
from shared_models.localization.model import LOC_PREFIX
from shared_models.device import limit_threads, select_device
from shared_models.messages import (EVAL_SECONDS, EVALUATE_FIRST, EVALUATION, ROUTER_CORRECT, ROUTER_TOTAL,
                                     STAGE_ERRORS, TRAIN_LOSS, TRAIN_SECONDS, EvalSummary, TrainReply)
from shared_models.metrics import HistogramSpec
from shared_models.networks import PROJECTIONS, RoutedExperts, build_model, parameter_group, radiograph_state
from shared_models.ontology import load_label_set
from shared_models.networks.heads import head_spec
from shared_models.synthesis.config import synthesis_spec
from shared_models.zeroshot.config import zeroshot_spec

# the guard sees the timeline stamps it lets out; the small records travel as one (client/small_records.py)
app = ClientApp(mods=[small_records_mod, outbound_guard, timeline_mod])
_DATA: dict[tuple[str, str], tuple[float, SiteData]] = {}


class SiteNotConfigured(RuntimeError):
    pass


def resolve_site(context: Context, config: ConfigRecord) -> SiteConfig:
    node = context.node_config
    if "site-config" in node:
        path = Path(str(node["site-config"]))
    else:
        sites_dir = str(context.run_config.get("sim-sites-dir", "") or config.get("sim-sites-dir", ""))
        if not sites_dir or "partition-id" not in node:
            raise SiteNotConfigured(
                "this node has no site: start the SuperNode with --node-config 'site-config=\"/path/site.toml\"' "
                "or, in simulation, set the run config sim-sites-dir to a folder of */site.toml")
        sites = sorted(p for d in sites_dir.split(",") for p in Path(d).glob("*/site.toml"))
        pid = int(node["partition-id"])
        if pid >= len(sites):
            raise SiteNotConfigured(f"virtual node {pid} has no site: {sites_dir} holds {len(sites)} site(s)")
        path = sites[pid]
    cfg = load_site_config(path)
    if "work-dir" in node:  # containers: site.toml and data read-only, the work dir a writable volume
        cfg = dataclasses.replace(cfg, work_dir=Path(str(node["work-dir"])))
    if not is_ct_site(cfg) and not cfg.index_path.exists():
        prepare_site(cfg)
    return cfg


def site_data(cfg: SiteConfig, split: str) -> SiteData:
    """The split's arrays, kept in memory while the index is unchanged (simulation actors live long)."""
    key = (str(cfg.path), split)
    mtime = os.path.getmtime(cfg.index_path)
    hit = _DATA.get(key)
    if hit is None or hit[0] != mtime:
        _DATA[key] = (mtime, load_split(cfg, split))
    return _DATA[key][1]


def global_state(arrays: ArrayRecord, part: str = "") -> dict[str, torch.Tensor]:
    """The part of the global model a model at this site uses: the radiograph model's (``part`` empty), or a side
    model's keys, still under their prefix (``CT_PREFIX`` at a CT site, ``LOC_PREFIX`` for the localiser). The record
    is a pack (shared_models/wire.py); each tensor is a copy of its slice, so the site may train it in place."""
    state = from_record(arrays)
    state = {k: v for k, v in state.items() if k.startswith(part)} if part else radiograph_state(state)
    return {k: torch.from_numpy(np.array(v)) for k, v in state.items()}


def _setup(config: ConfigRecord, arrays: ArrayRecord, split: str, site: SiteConfig):
    """What every radiograph handler starts with: the site's split's data and the global model."""
    model = run_model(config, site)
    data = site_data(site, split)
    model.load_state_dict(global_state(arrays))
    if fedbn.enabled(config):  # the site's own normalisation layers over the global model's (client/fedbn.py)
        fedbn.restore(model, site, str(config.get("run-id", "")))
    mark_ready()
    return data, model


def _site(msg: Message, context: Context) -> SiteConfig:
    limit_threads()
    return resolve_site(context, msg.content["config"])


def run_model(config, site: SiteConfig) -> RoutedExperts | BoxLatentNet:
    """The run's model architecture (preset, label set, input size, DP-compatible or not) at this site, after
    checking that the site caches images at the run's size."""
    size = int(config.get("image-size", site.image_size))
    if size != site.image_size:
        raise SiteConfigError(
            f"{site.path}: this run trains at image-size {size} px but the site caches {site.image_size} px; set "
            f"site.image_size = {size} in site.toml and run `fedchest-site check --config {site.path}`")
    label_set = load_label_set(str(config["label-set"]))
    box = box_spec(config)
    if box is not None:
        return build_box_model(str(config["model-preset"]), label_set.num_seen, box, image_size=size)
    return build_model(str(config["model-preset"]), label_set.num_seen, image_size=size,
                       dp_compatible=bool(config.get("dp", False)), zeroshot=zeroshot_spec(config, label_set),
                       heads=head_spec(config))


def group_statistics(data: SiteData, num_classes: int, groups: set[str] | None = None
                     ) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Samples and per-class positives behind each expert group. Images of unknown projection train every
    expert (uniform soft routing), so each expert counts a third of them. The zero-shot head's groups (in
    ``groups``): an expert's image projection counts as its expert, the rest every image."""
    unknown = data.projection < 0
    counts, positives = {}, {}
    labelled = data.targets[:, :num_classes] * data.mask[:, :num_classes]
    for i, p in enumerate(PROJECTIONS):
        w = (data.projection == i) + unknown / len(PROJECTIONS)
        counts[f"experts.{p}"] = float(w.sum())
        positives[f"experts.{p}"] = (labelled * w[:, None]).sum(0)
    counts["router"] = float((~unknown).sum())  # the router learns from images with a trusted view
    counts["generalist"] = float(len(data))  # used when the preset has a generalist member
    positives["generalist"] = labelled.sum(0)
    for g in sorted(groups or ()):
        if g.startswith("zeroshot."):
            counts[g] = counts.get(f"experts.{g.rsplit('.', 1)[-1]}", float(len(data)))
    return counts, positives


def update_statistics(model, data: SiteData, aggregation: str
                      ) -> tuple[dict[str, float], dict[str, np.ndarray], bool]:
    """(samples per group, positives per group, plain FedAvg or not) for the update this site sends. A box-latent
    model trains and sends its head only: the frozen backbone never travels back."""
    c = model.num_classes
    if isinstance(model, BoxLatentNet):
        return {"box": float(len(data))}, {"box": (data.targets[:, :c] * data.mask[:, :c]).sum(0)}, False
    counts, positives = group_statistics(data, c, {parameter_group(k) for k in model.state_dict()})
    if aggregation == "fedavg":
        counts = {g: float(len(data)) for g in counts}
    return counts, positives, aggregation == "fedavg"


def exact_train_metrics(model, data: SiteData, site: SiteConfig, aggregation: str, stats: dict[str, float]
                        ) -> tuple[TrainReply, dict[str, float], bool]:
    """(train reply, group counts, plain FedAvg) of a round without DP: exact counts under the small-count rule."""
    c = model.num_classes
    counts, positives, fedavg = update_statistics(model, data, aggregation)
    k = site.privacy.suppress
    train_pos, train_annotated = data.class_counts(c)
    reply = TrainReply(
        len(data), {g: k(v) for g, v in counts.items()},
        {g: [k(float(x)) for x in v] for g, v in positives.items()},
        train_pos=[int(k(v)) for v in train_pos], train_annotated=[int(k(v)) for v in train_annotated],
        views={p: int(k(int((data.projection == i).sum()))) for i, p in enumerate(PROJECTIONS)},
        extra={TRAIN_LOSS: float(stats[TRAIN_LOSS]),
               **{key: float(stats[key]) for key in ("contrastive_loss", "box_gap") if key in stats}})
    return reply, counts, fedavg


def released_train_metrics(model: RoutedExperts, release: ReleasedCounts, aggregation: str
                           ) -> tuple[TrainReply, dict[str, float], bool]:
    """(train reply, group counts, plain FedAvg) of a DP round: every count from the site's released statistics
    (post-processing of a charged Gaussian release); no loss, no clipped fraction, nothing exact."""
    counts, positives = release.group_statistics({parameter_group(k) for k in model.state_dict()})
    fedavg = aggregation == "fedavg"
    if fedavg:
        counts = {g: float(release.public_size) for g in counts}
    train_pos, train_annotated = release.class_counts()
    reply = TrainReply(
        release.public_size, {g: float(v) for g, v in counts.items()},
        {g: [float(x) for x in v] for g, v in positives.items()},
        train_pos=[int(v) for v in train_pos], train_annotated=[int(v) for v in train_annotated],
        views={p: int(round(float(v))) for p, v in zip(PROJECTIONS, release.views)})
    return reply, counts, fedavg


def _site_record(site: SiteConfig) -> ConfigRecord:
    return ConfigRecord({"name": site.name, "synthetic": site.synthetic})


@app.train()
def train(msg: Message, context: Context) -> Message:
    """A round of local training. When the server asks (``evaluate-first``: the run's evaluate-with-train), the
    site first evaluates the model the message carries, as an evaluate message of that model's round would, and
    the reply carries that summary too: one exchange per round instead of two. Either stage may fail on its own
    (a DP site's policy refusing one of them): its redacted reason travels in the reply's ``stage-errors``."""
    site = _site(msg, context)
    config = msg.content["config"]
    evaluated = int(config.get(EVALUATE_FIRST, 0))
    if not evaluated:
        return _train(msg, site)
    errors: dict[str, str] = {}
    evaluation = None
    try:
        evaluation = _evaluation(ConfigRecord({**config, "server-round": evaluated}), msg.content["arrays"], site)
    except Exception as exc:  # noqa: BLE001 - reported to the server, redacted, as an error reply would be
        errors["evaluate"] = refusal(exc)
    try:
        reply = _train(msg, site)
    except Exception as exc:  # noqa: BLE001 - as above
        errors["train"] = refusal(exc)
        reply = Message(RecordDict({"site": _site_record(site)}), reply_to=msg)
    if evaluation is not None:
        reply.content[EVALUATION] = evaluation
    if errors:
        reply.content[STAGE_ERRORS] = ConfigRecord(errors)
    return reply


def _train(msg: Message, site: SiteConfig) -> Message:
    t0 = time.perf_counter()
    if is_ct_site(site):  # the CT and box-latent modules are imported by the runs that use them
        from client.ct.federated import train_ct_round

        state, reply = train_ct_round(msg.content["config"], site, global_state(msg.content["arrays"], CT_PREFIX))
        return Message(RecordDict({"arrays": to_record(state), "metrics": train_record(reply),
                                   "site": _site_record(site)}), reply_to=msg)
    config = msg.content["config"]
    data, model = _setup(config, msg.content["arrays"], "train", site)
    c = model.num_classes
    train_data, synthesis = data, {}
    synth = synthesis_spec(config)
    if synth is not None:  # synthetic tail-class images join local training only (client/tail_synthesis.py)
        from client.tail_synthesis import tail_training_data

        train_data, synthesis = tail_training_data(config, site, data, c, synth)
    aggregation = str(config.get("aggregation", "projection"))
    release = site_release(config, site, data, c)  # under DP the only dataset statistics used or sent
    stats, privacy = train_round(config, site, train_data, model, release)
    if release is None:
        reply, counts, fedavg = exact_train_metrics(model, data, site, aggregation, stats)
    else:
        reply, counts, fedavg = released_train_metrics(model, release, aggregation)
    kept = fedbn.keep(model, site, str(config.get("run-id", ""))) if fedbn.enabled(config) else ()
    state = outgoing_state(model, site, counts, fedavg, kept)
    reply.keep_groups({parameter_group(k) for k in state})
    reply.extra.update({TRAIN_SECONDS: time.perf_counter() - t0,  # data loading included: all the site's work
                        **privacy, **synthesis})
    loc = loc_spec(config)
    if loc is not None:  # the prompt localiser trains beside the classifier on the same split
        from client.localization import train_loc_round

        loc_state, loc_counts, loc_metrics = train_loc_round(
            config, site, data, loc, global_state(msg.content["arrays"], part=LOC_PREFIX), c)
        state.update(loc_state)
        reply.group_counts.update(loc_counts)
        reply.extra.update(loc_metrics)
        reply.extra[TRAIN_SECONDS] = time.perf_counter() - t0
    spec = head_spec(config)
    if spec is not None and spec.label_graph:  # pair counts for the consortium's label graph (server/label_graph.py)
        from client.cooccurrence import site_pair_counts

        reply.cooc, reply.cooc_den = site_pair_counts(site, data, c, config)
    content = RecordDict({
        "arrays": to_record(state),  # the packed wire format (shared_models/wire.py)
        "metrics": train_record(reply),
        "site": _site_record(site),
    })
    return Message(content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    site = _site(msg, context)
    summary = _evaluation(msg.content["config"], msg.content["arrays"], site)
    return Message(RecordDict({"metrics": summary, "site": _site_record(site)}), reply_to=msg)


def _evaluation(config: ConfigRecord, arrays: ArrayRecord, site: SiteConfig) -> MetricRecord:
    """The site's evaluation summary of the model in ``arrays`` (what an evaluate reply carries)."""
    t0 = time.perf_counter()
    split = str(config.get("eval-split", "test"))
    spec = HistogramSpec(int(config.get("hist-bins", 240)), float(config.get("hist-limit", 12.0)))
    if is_ct_site(site):
        from client.ct.federated import evaluate_ct_round

        return summary_record(EvalSummary.from_metrics(
            evaluate_ct_round(config, site, global_state(arrays, CT_PREFIX), spec, split)))
    data, model = _setup(config, arrays, split, site)
    c = model.num_classes
    label_set = load_label_set(str(config["label-set"]))
    zs_spec = zeroshot_spec(config, label_set)
    if isinstance(model, BoxLatentNet):
        from client.boxlatent import box_evaluation

        probs, extra = box_evaluation(model, data, site_data(site, "val"), box_spec(config), select_device(), spec,
                                      site.privacy.min_count, seed=int(config.get("seed", 0)))
        routes = None
    elif zs_spec is None:
        probs, routes = predict(model, data, select_device())
        extra = {}
    else:
        from client.zeroshot import zero_shot_evaluation

        probs, routes, extra = zero_shot_evaluation(model, data, label_set, zs_spec, site,
                                                    site_data(site, "val") if zs_spec.proxy_classes else None)
    bands = np.asarray(config["class-bands"], np.int64) if "class-bands" in config else None
    if bands is not None and bands.shape != (c,):
        raise ValueError(f"run config class-bands: expected {c} band codes (one per class), got {bands.shape}")
    summary = evaluation_summary(probs, data.targets[:, :c], data.mask[:, :c], data.projection, spec,
                                 site.privacy.min_count, bands)
    summary.update(extra)
    loc = loc_spec(config)
    if loc is not None:
        from client.localization import evaluate_loc_round

        summary.update(evaluate_loc_round(config, site, data, split, loc, global_state(arrays, part=LOC_PREFIX), c))
    known = data.projection >= 0
    k = site.privacy.suppress
    summary[ROUTER_TOTAL] = int(k(int(known.sum()))) if routes is not None else 0
    summary[ROUTER_CORRECT] = (int(k(int((routes[known] == data.projection[known]).sum())))
                               if routes is not None and summary[ROUTER_TOTAL] else 0)
    if bool(config.get("dp", False)):  # what a DP site's evaluation may carry (client/dp_release.py)
        summary = evaluation_release(config, site, summary, probs, data.targets[:, :c], data.mask[:, :c],
                                     data.projection, spec, families=bool(extra) or loc is not None)
        summary.setdefault(ROUTER_TOTAL, 0)
        summary.setdefault(ROUTER_CORRECT, 0)
    summary[EVAL_SECONDS] = time.perf_counter() - t0
    return summary_record(EvalSummary.from_metrics(summary))
