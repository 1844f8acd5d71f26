"""fedchest ServerApp: builds the global model, runs FedChestAvg rounds, checkpoints every round and
records everything in the registry. Outputs go to absolute paths (`out-dir`): the ServerApp may run in a
subprocess with an uncontrolled working directory."""

from __future__ import annotations

import functools
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp

from server.aggregation import MODES, SERVER_OPTIMIZERS, ServerOptimizer
from server.schedule import check_schedule, round_lr
from server.checkpoints import save_checkpoint
from server.records import from_record, to_record
from server.registry import Registry, resolve_db_url
from server.report import round_table
from server.robust import RobustRule
from server.rounds import ReplyTimer
from server.resume import restore_strategy_state, resume_point, strategy_state
from server.strategy import FedChestAvg
from server.label_graph import LabelGraph, class_embeddings
from server.link_guard import LinkKeeper
from server.timeline import round_rows
from server.loc_eval import check_loc_run
from server.zeroshot_eval import zero_shot_sets
from shared_models.boxlatent import build_box_model
from shared_models.boxlatent.config import DEFAULTS as BOX_DEFAULTS
from shared_models.boxlatent.config import box_spec
from shared_models.boxlatent.config import spec_config as box_config
from shared_models.boxlatent.model import load_backbone_weights
from shared_models.ct.config import DEFAULTS as CT_DEFAULTS
from shared_models.localization.config import DEFAULTS as LOC_DEFAULTS
from shared_models.synthesis.config import DEFAULTS as SYNTH_DEFAULTS
from shared_models.synthesis.config import check_synthesis_run, synthesis_spec
from shared_models.synthesis.config import spec_config as synth_config
from shared_models.localization.config import loc_spec
from shared_models.localization.config import spec_config as loc_config
from shared_models.localization.model import PromptLocalizer
from shared_models.localization.model import prefixed as loc_prefixed
from shared_models.localization.model import unprefixed as loc_unprefixed
from shared_models.ct.config import CT_LABEL_SET, ct_spec
from shared_models.ct.config import spec_config as ct_config
from shared_models.ct.model import CTVLM, prefixed, unprefixed
from shared_models.device import server_threads
from shared_models.metrics import HistogramSpec
from shared_models.networks.heads import DEFAULTS as HEAD_DEFAULTS
from shared_models.networks.heads import head_spec, label_graph_release
from shared_models.networks.heads import spec_config as head_config
from shared_models.networks import build_model, classifier_keys, norm_keys, parse_weights, radiograph_state
from shared_models.losses import AUGMENTATIONS, LOSSES
from shared_models.progress import Progress
from shared_models.ontology import load_label_set
from shared_models.zeroshot.config import DEFAULTS as ZEROSHOT_DEFAULTS
from shared_models.zeroshot.config import spec_config, zeroshot_spec
from shared_models.zeroshot.dp import check_dp_settings

app = ServerApp()

DEFAULTS = {
    "num-server-rounds": 5, "local-epochs": 1, "lr": 0.001, "batch-size": 32, "model-preset": "tiny",
    "image-size": 64, "label-set": "cxrlt2026", "fraction-train": 1.0, "min-nodes": 2, "round-timeout": 600.0,
    "out-dir": "", "db-url": "", "sim-sites-dir": "", "run-name": "fedchest-run", "seed": 0,
    "aggregation": "projection",
    "asl-class-weights": False, "sampling": "none", "logit-adjust-tau": 0.0,
    "weight-decay": 1e-4, "loss": "asl",  # the sites' AdamW weight decay; loss asl | bce (client/training.py)
    "augment": "shift",  # shift | affine: the sites' training augmentation (client/training.py)
    # none | fedadam | fedyogi | fedavgm; server-lr 0: the optimiser's own (0.01 fedadam / fedyogi, 1.0 fedavgm)
    "server-optimizer": "none", "server-lr": 0.0, "server-momentum": 0.9, "proximal-mu": 0.0,
    "lr-schedule": "constant", "lr-min-factor": 0.0,  # the sites' lr over the rounds (server/schedule.py)
    "fedbn": False,  # normalisation layers stay at the sites, never sent (client/fedbn.py)
    "dp": False, "dp-noise-multiplier": 1.0, "dp-max-grad-norm": 1.0,  # DP-SGD at every site (sites may refuse)
    # under DP: the sites' one counts release and their evaluation releases (docs/privacy.md)
    "dp-stats-noise-multiplier": 4.0, "dp-stats-max-labels": 6, "dp-eval-noise-multiplier": 0.0, "dp-eval-bins": 12,
    "pretrained-weights": "",  # "PA=/weights/convnextv2.safetensors,LAT=..." local files on the SuperLink host
    "robust-aggregation": "none",  # none | median | trimmed-mean | krum | multi-krum | norm-clip (server/robust.py)
    "robust-trim": 0.2, "robust-byzantine": 1, "robust-clip": 2.0,
    "norm-bound": 10.0,  # reject an update whose group norm exceeds this x the recent median (0: off)
    # a site's reply deadline: factor x its expected reply time, >= floor
    "deadline-factor": 3.0, "deadline-floor": 30.0,
    "quorum": 0,  # nodes a round goes on with after node-wait seconds short of min-nodes (0: half of min-nodes)
    "node-wait": 120.0,  # seconds node sampling waits for min-nodes before going on with the quorum
    "pooled-ci-replicates": 0,  # bootstrap replicates of the pooled macro means' 95 % interval per round (0: none)
    # each round's train messages also evaluate the model they carry (the last round's): one exchange per round
    # instead of two; evaluation rows still carry the round of the model they score (server/strategy.py)
    "evaluate-with-train": True,
    "resume-run": "",  # a registry run id: continue it after its last checkpointed round (server/resume.py)
    **ZEROSHOT_DEFAULTS,  # the zero-shot image-text branch (shared_models/zeroshot/config.py)
    **BOX_DEFAULTS,  # the box-latent head on the frozen routed experts (shared_models/boxlatent/config.py)
    **CT_DEFAULTS,  # the chest-CT vision-language model at CT sites (shared_models/ct/config.py)
    **SYNTH_DEFAULTS,  # tail-class synthesis at each site (shared_models/synthesis/config.py)
    **LOC_DEFAULTS,  # the prompt-driven localiser at radiograph sites (shared_models/localization/config.py)
    **HEAD_DEFAULTS,  # TRCGL-Net's options on the experts: SE, CSRA, label graph (shared_models/networks/heads.py)
}


def _clean(obj):
    if isinstance(obj, float) and math.isnan(obj):
        return None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_clean(v) for v in obj]
    return obj


def run_for_sites(cfg: dict, label_set: str, run_id: str) -> dict:
    """What every site needs to rebuild and train the run's model (sent with every message)."""
    out = {**spec_config(zeroshot_spec(cfg, load_label_set(label_set))), **box_config(box_spec(cfg)),
        **ct_config(ct_spec(cfg)), **head_config(head_spec(cfg)), **loc_config(loc_spec(cfg)),
        **label_graph_release(cfg), **synth_config(synthesis_spec(cfg)),
        "model-preset": str(cfg["model-preset"]), "label-set": label_set, "seed": int(cfg["seed"]),
        "image-size": int(cfg["image-size"]), "run-id": run_id, "dp": bool(cfg["dp"]), "fedbn": bool(cfg["fedbn"]),
        "dp-noise-multiplier": float(cfg["dp-noise-multiplier"]), "dp-max-grad-norm": float(cfg["dp-max-grad-norm"]),
        "dp-stats-noise-multiplier": float(cfg["dp-stats-noise-multiplier"]),
        "dp-stats-max-labels": int(cfg["dp-stats-max-labels"]),
        "dp-eval-noise-multiplier": float(cfg["dp-eval-noise-multiplier"]), "dp-eval-bins": int(cfg["dp-eval-bins"]),
    }
    if cfg["sim-sites-dir"]:
        out["sim-sites-dir"] = str(cfg["sim-sites-dir"])
    return out


def _zeroshot_summary(strategy: FedChestAvg, history: list[dict]) -> dict:
    """The last round's zero-shot results, the pooled mAUC per prompt set per round, and the round the proxy
    classes select."""
    return {"last": history[-1].get("zeroshot") if history else None,
            "mAUC_by_round": {name: [h.get("zeroshot", {}).get(name, {}).get("pooled", {}).get("all", {}).get("mAUC")
                                     for h in history] for name in strategy.zeroshot_sets},
            "selected_round": strategy.best_proxy[0] if strategy.best_proxy else None,
            "selected_proxy_mAUC": strategy.best_proxy[1] if strategy.best_proxy else None,
            "selected": next((h.get("zeroshot") for h in history
                              if strategy.best_proxy and h["round"] == strategy.best_proxy[0]), None)}


def _box_summary(history: list[dict], backbone: str) -> dict:
    """The last round's box-latent results and the macro-AUROC at the primary N per round."""
    last = history[-1].get("box") if history else None
    primary = last["primary"] if last else None
    return {"backbone": backbone or "random init", "last": last,
            "mAUC_by_round": [h.get("box", {}).get("by_samples", {}).get(primary, {}).get("mAUC") for h in history]}


def _ct_summary(history: list[dict]) -> dict:
    """The last round's CT results and the pooled R@10, mAUC and depth MAE per round."""
    pooled = [h.get("ct", {}).get("pooled", {}) for h in history]
    return {"last": history[-1].get("ct") if history else None,
            **{f"{k}_by_round": [p.get(k) for p in pooled] for k in ("R@10", "mAUC", "loc_mae_mm")}}


def _loc_summary(history: list[dict]) -> dict:
    """The last round's localiser results and the pooled box mAP at IoU 0.5 and mean IoU per round."""
    pooled = [(h.get("localization") or {}).get("pooled") or {} for h in history]
    return {"last": history[-1].get("localization") if history else None,
            "mAP50_by_round": [p.get("mAP50") for p in pooled], "mIoU_by_round": [p.get("mIoU") for p in pooled]}


def check_ct_run(cfg: dict, box) -> None:
    """Refuse, before any site trains, the combinations the CT model cannot run in."""
    if not bool(cfg["ct"]):
        return
    if box is not None:
        raise ValueError("run config: ct and box-latent cannot be combined in one run")
    if cfg["aggregation"] == "fedavg":
        raise ValueError("run config: the CT model trains at CT sites only; plain FedAvg would average its groups "
                         "with untrained copies from radiograph sites; use aggregation = \"projection\"")


def _build(cfg: dict, classes: tuple[str, ...], zs, box, resumed: bool):
    """The run's global model: routed experts (+ zero-shot head), or the box head on frozen routed experts."""
    if box is not None:
        if head_spec(cfg) is not None:
            raise ValueError("run config: the box-latent head sits on plain experts; se, csra-heads and label-graph "
                             "cannot be combined with box-latent yet")
        if zs is not None:
            raise ValueError("run config: box-latent and zeroshot cannot be combined in one run")
        if bool(cfg["dp"]):
            raise ValueError("run config: the box-latent head has no DP-SGD training yet; set dp = false")
        if cfg["aggregation"] == "fedavg":
            raise ValueError("run config: box-latent sites send the head only; use aggregation = \"projection\" "
                             "(the head is one group, so this is FedAvg of the head)")
        weights = str(cfg["box-backbone-weights"])
        backbone = load_backbone_weights(weights, str(cfg["model-preset"])) if weights and not resumed else None
        return build_box_model(str(cfg["model-preset"]), len(classes), box, int(cfg["image-size"]), backbone)
    return build_model(str(cfg["model-preset"]), len(classes), image_size=int(cfg["image-size"]),
                       weights=None if resumed else parse_weights(str(cfg["pretrained-weights"])),
                       dp_compatible=bool(cfg["dp"]), zeroshot=zs, heads=head_spec(cfg))


@app.main()
def main(grid: Grid, context: Context) -> None:
    with server_threads():  # FEDCHEST_SERVER_THREADS, default 1 (shared_models.device says why)
        run_rounds(grid, context)


def run_rounds(grid: Grid, context: Context) -> None:
    cfg = {**DEFAULTS, **dict(context.run_config)}
    if cfg["aggregation"] not in MODES:
        raise ValueError(f"run config aggregation = {cfg['aggregation']!r}; expected one of {', '.join(MODES)}")
    if cfg["server-optimizer"] not in SERVER_OPTIMIZERS:
        raise ValueError(f"run config server-optimizer = {cfg['server-optimizer']!r}; "
                         f"expected one of {', '.join(SERVER_OPTIMIZERS)}")
    if cfg["loss"] not in LOSSES:
        raise ValueError(f"run config loss = {cfg['loss']!r}; expected one of {', '.join(LOSSES)}")
    if cfg["augment"] not in AUGMENTATIONS:
        raise ValueError(f"run config augment = {cfg['augment']!r}; expected one of {', '.join(AUGMENTATIONS)}")
    check_schedule(str(cfg["lr-schedule"]), float(cfg["lr-min-factor"]))
    if bool(cfg["fedbn"]) and cfg["aggregation"] == "fedavg":
        raise ValueError("run config fedbn = true keeps the normalisation layers at the sites, but aggregation = "
                         "\"fedavg\" expects every parameter from every site; use aggregation = \"projection\"")
    if float(cfg["weight-decay"]) < 0:
        raise ValueError(f"run config weight-decay = {cfg['weight-decay']!r}; expected a number >= 0")
    out_dir = Path(str(cfg["out-dir"]) or Path.home() / ".fedchest" / "runs" / time.strftime("%Y%m%d-%H%M%S"))
    out_dir.mkdir(parents=True, exist_ok=True)
    db_url = resolve_db_url(str(cfg["db-url"]) or str(out_dir / "registry.db"))  # FEDCHEST_DB_URL wins
    registry = Registry(db_url)
    point = None
    if cfg["resume-run"]:  # the run's own configuration, from the registry, wins over this submission's
        point = resume_point(registry, str(cfg["resume-run"]))
        cfg = {**DEFAULTS, **point.config, "resume-run": point.run_id}
    label_set = load_label_set(str(cfg["label-set"]))
    classes = label_set.seen
    robust = RobustRule(str(cfg["robust-aggregation"]), float(cfg["robust-trim"]), int(cfg["robust-byzantine"]),
                        float(cfg["robust-clip"]))

    zs = zeroshot_spec(cfg, label_set)
    if zs is not None and bool(cfg["dp"]):
        check_dp_settings(zs.image_encoder, zs.loss)  # refuse before any site trains
    box = box_spec(cfg)
    if bool(cfg["fedbn"]) and box is not None:
        raise ValueError("run config: fedbn and box-latent cannot be combined (the box head's backbone is frozen)")
    ct = ct_spec(cfg)
    check_ct_run(cfg, box)
    loc = loc_spec(cfg)
    check_loc_run(cfg, box)
    check_synthesis_run(cfg)
    torch.manual_seed(int(cfg["seed"]))
    model = _build(cfg, classes, zs, box, point is not None)
    ct_model = CTVLM(ct.preset) if ct else None
    loc_model = PromptLocalizer(loc.preset, loc.regions) if loc else None
    if point:
        model.load_state_dict(radiograph_state(point.state_dict))
        if ct_model is not None:
            ct_model.load_state_dict(unprefixed(point.state_dict))
        if loc_model is not None:
            loc_model.load_state_dict(loc_unprefixed(point.state_dict))
    heads = head_spec(cfg)
    graph = LabelGraph(class_embeddings(label_set)) if heads is not None and heads.label_graph else None
    state = {**model.state_dict(), **(prefixed(ct_model.state_dict()) if ct_model else {}),
             **(loc_prefixed(loc_model.state_dict()) if loc_model else {})}
    if graph is not None and point is None:  # the label embeddings and the identity graph until counts arrive
        state = {k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in graph.apply(state).items()}
    initial = to_record(state)  # the packed wire format (shared_models/wire.py)
    num_rounds = int(cfg["num-server-rounds"])
    if point:
        run_id = point.run_id
        registry.add_event(run_id, "resumed", f"resumed after round {point.round} in Flower run {context.run_id}",
                           point.round)
    else:
        run_id = registry.create_run(
            name=str(cfg["run-name"]),
            strategy=f"FedChestAvg[{cfg['aggregation']},{cfg['server-optimizer']},mu={cfg['proximal-mu']}"
                     + (f",{cfg['robust-aggregation']}" if cfg["robust-aggregation"] != "none" else "")
                     + (",fedbn" if bool(cfg["fedbn"]) else "")
                     + (f",lr-{cfg['lr-schedule']}" if cfg["lr-schedule"] != "constant" else "") + "]",
            heads=("box-latent" if box else "routed-experts+zeroshot" if zs else "routed-experts")
            + ("+ct" if ct else "") + ("+localizer" if loc else ""),
            label_set=label_set.name, num_rounds=num_rounds, config=cfg, synthetic=False)
    spec = HistogramSpec()
    t0 = time.perf_counter()

    def on_round(rnd: int, summary: dict) -> None:
        print(round_table(rnd, summary), flush=True)

    min_nodes = int(cfg["min-nodes"])
    strategy = FedChestAvg(
        registry=registry, run_id=run_id, classes=classes, spec=spec, reference=initial, on_round=on_round,
        classifiers=classifier_keys(model), aggregation=str(cfg["aggregation"]),
        server_optimizer=None if cfg["server-optimizer"] == "none" else ServerOptimizer(
            str(cfg["server-optimizer"]), eta=float(cfg["server-lr"]), momentum=float(cfg["server-momentum"])),
        lr_at=None if cfg["lr-schedule"] == "constant" else functools.partial(
            round_lr, float(cfg["lr"]), str(cfg["lr-schedule"]), num_rounds=num_rounds,
            min_factor=float(cfg["lr-min-factor"])),
        local_keys=frozenset(norm_keys(model)) if bool(cfg["fedbn"]) else frozenset(),
        proximal_mu=float(cfg["proximal-mu"]), robust=robust, norm_bound=float(cfg["norm-bound"]),
        timer=ReplyTimer(float(cfg["deadline-factor"]), float(cfg["deadline-floor"]), float(cfg["round-timeout"])),
        quorum=int(cfg["quorum"]) or max(1, math.ceil(min_nodes / 2)), node_wait=float(cfg["node-wait"]),
        zeroshot_sets=zero_shot_sets(label_set.zeroshot, zs.proxy_classes) if zs else None,
        bootstrap=zs.bootstrap if zs else box.bootstrap if box else 0,
        box_samples=(box.reported_samples, box.samples) if box else None,
        ct_classes=load_label_set(CT_LABEL_SET).classes if ct else (), label_graph=graph,
        pooled_ci=int(cfg["pooled-ci-replicates"]), evaluate_with_train=bool(cfg["evaluate-with-train"]),
        fraction_train=float(cfg["fraction-train"]), fraction_evaluate=1.0,
        min_train_nodes=min_nodes, min_evaluate_nodes=min_nodes, min_available_nodes=min_nodes,
    )
    offset = point.round if point else 0
    if point:
        strategy.round_offset = offset
        restore_strategy_state(strategy, point.strategy_state)
        if strategy.fold and not registry.round_finished(run_id, offset):
            strategy.unevaluated = offset  # its model was checkpointed before its evaluation came back
    shared = {**run_for_sites(cfg, label_set.name, run_id), "hist-bins": spec.bins, "hist-limit": spec.limit}
    train_config = ConfigRecord({**shared, "lr": float(cfg["lr"]), "local-epochs": int(cfg["local-epochs"]),
                                 "batch-size": int(cfg["batch-size"]),
                                 "asl-class-weights": bool(cfg["asl-class-weights"]),
                                 "sampling": str(cfg["sampling"]), "logit-adjust-tau": float(cfg["logit-adjust-tau"]),
                                 "weight-decay": float(cfg["weight-decay"]), "loss": str(cfg["loss"]),
                                 "augment": str(cfg["augment"])})
    ckpt_dir = out_dir / "checkpoints"

    def evaluate_fn(rnd: int, arrays: ArrayRecord) -> MetricRecord | None:
        if rnd == 0:
            return None
        rnd += offset  # called after the round's federated evaluation: the checkpoint marks a complete round
        t_ckpt = time.perf_counter()
        saved = {k: torch.from_numpy(np.array(v)) for k, v in from_record(arrays).items()}  # copies of the views
        path, digest, size = save_checkpoint(ckpt_dir, rnd, saved,
                                             {"run_id": run_id, "model_preset": cfg["model-preset"],
                                              "label_set": label_set.name, "classes": list(classes),
                                              "image_size": int(cfg["image-size"]),
                                              "dp_compatible": bool(cfg["dp"]), "zeroshot": spec_config(zs),
                                              "box": box_config(box), "ct": ct_config(ct),
                                              "heads": head_config(heads), "localizer": loc_config(loc),
                                              "strategy_state": strategy_state(strategy)})
        registry.add_checkpoint(run_id, rnd, str(path), digest, size)
        registry.add_metrics(run_id, rnd, round_rows("round", {"checkpoint": time.perf_counter() - t_ckpt}))
        pooled = (strategy.history[-1].get("pooled") or {}) if strategy.history else {}
        rounds_progress.update(1, round=rnd, **({"pooled mAUC": pooled["mAUC"]} if "mAUC" in pooled else {}))
        return None

    status = "failed"
    rounds_progress = Progress(f"run {cfg['run-name']}: rounds", num_rounds - offset, "rounds")  # stderr only
    keeper = LinkKeeper(grid).start()  # the run's lease on the SuperLink survives a busy link (server/link_guard.py)
    try:
        strategy.start(
            grid=grid, initial_arrays=initial, num_rounds=num_rounds - offset, timeout=float(cfg["round-timeout"]),
            train_config=train_config, evaluate_config=ConfigRecord(shared), evaluate_fn=evaluate_fn,
        )
        status = "completed"
    finally:
        keeper.stop()
        rounds_progress.close()
        registry.finish_run(run_id, status, synthetic=bool(strategy.synthetic_sites))
        history = strategy.history
        summary = {
            "run_id": run_id,
            "status": status,
            "rounds_completed": offset + len(history),
            "resumed_from": offset or None,
            "sites": sorted(set(strategy.node_site.values())),
            "privacy": strategy.privacy,
            "rounds": [{"round": h["round"], "pooled": h["pooled"], "pooled_by_projection": h["pooled_by_projection"],
                        "router_accuracy": h.get("router_accuracy"), "frontal_lateral_gap": h["frontal_lateral_gap"],
                        "sites": h["sites"], **({"ct": h.get("ct")} if ct else {}),
                        **({"pooled_ci": h["pooled_ci"]} if "pooled_ci" in h else {})} for h in history],
            "baseline": history[-1]["baseline"] if history else {"prevalence_mAP": None},
            "class_groups": history[-1]["groups"] if history else {},
            "zeroshot": _zeroshot_summary(strategy, history) if zs else None,
            "box": _box_summary(history, str(cfg["box-backbone-weights"])) if box else None,
            "ct": _ct_summary(history) if ct else None,
            "localization": _loc_summary(history) if loc else None,
            "db_url": db_url,
            "checkpoints": str(ckpt_dir),
            "synthetic": bool(strategy.synthetic_sites),
            "wall_seconds": time.perf_counter() - t0,
            "config": cfg,
        }
        (out_dir / "summary.json").write_text(json.dumps(_clean(summary), indent=1, default=str))
