"""ServerApp for runs with secure aggregation (Flower's SecAgg+): weighted FedAvg of the sites' float
parameters, where the server only ever sees the masked sum. SecAgg+ exists only on Flower's legacy API
(``LegacyContext`` + ``DefaultWorkflow(fit_workflow=SecAggPlusWorkflow)``), so this is a separate, smaller
ServerApp; its site counterpart is client/secagg_app.py.

What it cannot honour is refused before any round: projection- or class-aware aggregation (they weight each
group or classifier row by per-site counts, which needs every site's update in the clear), server optimisers
(per-group steps on group-wise contributions), and robust aggregation. Federated evaluation (per-site
histograms) is not part of this path: evaluate the final checkpoint with a normal run's evaluation, or at the
sites with `fedchest-site predict`."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
from flwr.app import Context
from flwr.common import ndarrays_to_parameters
from flwr.server import Grid, LegacyContext, ServerApp, ServerConfig
from flwr.server.strategy import FedAvg
from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_PARAMS_RECORD

from server.checkpoints import save_checkpoint
from server.registry import Registry, resolve_db_url
from server.server_app import DEFAULTS, run_for_sites
from shared_models.messages import DP_EPSILON, TRAIN_LOSS, MetricRow
from shared_models.networks import build_model, float_state_keys
from shared_models.ontology import load_label_set

app = ServerApp()
# max-weight: each site's parameters are scaled by (its examples / max-weight) before quantisation to
# [-clipping-range, clipping-range] in 2^22 steps, so set it just above the largest site's training-set size:
# larger wastes precision (quantisation error grows as max-weight / examples), smaller overflows.
SECAGG_DEFAULTS = {"secagg-num-shares": 3, "secagg-reconstruction-threshold": 2, "secagg-clipping-range": 8.0,
                   "secagg-max-weight": 10_000.0}


class SecAggRefusal(ValueError):
    """A run configuration secure aggregation cannot honour."""


def check_secagg_config(cfg: dict) -> None:
    problems = []
    if cfg["aggregation"] != "fedavg":
        problems.append(f"aggregation = {cfg['aggregation']!r} weights groups and classifier rows by per-site counts, "
                        "which needs each update in the clear; use aggregation = \"fedavg\"")
    if cfg["server-optimizer"] != "none":
        problems.append(f"server-optimizer = {cfg['server-optimizer']!r} is not available with SecAgg+ here")
    if str(cfg.get("robust-aggregation", "none")) != "none":
        problems.append("robust aggregation needs each update in the clear")
    if bool(cfg.get("fedbn", False)):
        problems.append("fedbn = true keeps the normalisation layers at the sites, but SecAgg+ sums every parameter "
                        "of every site; set fedbn = false")
    if str(cfg.get("lr-schedule", "constant")) != "constant":
        problems.append("this app sends one train config for the whole run; set lr-schedule = \"constant\"")
    if bool(cfg.get("zeroshot", False)):
        problems.append("the zero-shot branch is scored by federated evaluation, which this app does not run; "
                        "set zeroshot = false")
    if bool(cfg.get("box-latent", False)):
        problems.append("the box-latent head is scored by federated evaluation and sends the head only, neither of "
                        "which this app does; set box-latent = false")
    if bool(cfg.get("se", False)) or int(cfg.get("csra-heads", 0)) or bool(cfg.get("label-graph", False)):
        problems.append("TRCGL-Net's options (se, csra-heads, label-graph) are not available with SecAgg+ here: the "
                        "label graph is written by the server, which a masked sum cannot leave alone")
    if bool(cfg.get("tail-synthesis", False)):
        problems.append("tail-class synthesis is wired into the standard ClientApp only; set tail-synthesis = false")
    if bool(cfg.get("localizer", False)):
        problems.append("the prompt localiser's box evaluation runs in federated evaluation, which this app does "
                        "not have; set localizer = false")
    if bool(cfg.get("ct", False)):
        problems.append("the CT model trains at CT sites only, and its groups are averaged over those sites, which "
                        "a masked sum over every node cannot do; set ct = false")
    if int(cfg["secagg-reconstruction-threshold"]) > int(cfg["secagg-num-shares"]):
        problems.append("secagg-reconstruction-threshold must not exceed secagg-num-shares")
    if problems:
        raise SecAggRefusal("secure aggregation cannot honour this run: " + "; ".join(problems))


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = {**DEFAULTS, "aggregation": "fedavg", **SECAGG_DEFAULTS, **dict(context.run_config)}
    check_secagg_config(cfg)
    out_dir = Path(str(cfg["out-dir"]) or Path.home() / ".fedchest" / "runs" / time.strftime("%Y%m%d-%H%M%S"))
    out_dir.mkdir(parents=True, exist_ok=True)
    registry = Registry(resolve_db_url(str(out_dir / "registry.db")))
    label_set = load_label_set(str(cfg["label-set"]))
    torch.manual_seed(int(cfg["seed"]))
    model = build_model(str(cfg["model-preset"]), label_set.num_seen, image_size=int(cfg["image-size"]),
                        dp_compatible=bool(cfg["dp"]))
    state = model.state_dict()
    keys = float_state_keys(state)
    rounds = int(cfg["num-server-rounds"])
    run_id = registry.create_run(str(cfg["run-name"]), "FedAvg[SecAgg+]", "routed-experts", label_set.name, rounds,
                                 cfg, synthetic=False)
    shared = {**run_for_sites(cfg, label_set.name, run_id), "lr": float(cfg["lr"]),
              "local-epochs": int(cfg["local-epochs"]), "batch-size": int(cfg["batch-size"])}
    history: list[dict] = []

    def fit_config(rnd: int) -> dict:
        registry.start_round(run_id, rnd)
        return {**shared, "server-round": rnd}

    def on_fit_metrics(results: list[tuple[int, dict]]) -> dict:
        n = sum(k for k, _ in results)
        reported = [(k, float(m[TRAIN_LOSS])) for k, m in results if TRAIN_LOSS in m]  # DP sites send no loss
        weight = sum(k for k, _ in reported)
        loss = sum(k * v for k, v in reported) / weight if weight else float("nan")
        eps = [float(m[DP_EPSILON]) for _, m in results if DP_EPSILON in m]
        history.append({"sites": len(results), "examples": n, TRAIN_LOSS: loss,
                        "max_dp_epsilon": max(eps, default=None)})
        return {TRAIN_LOSS: loss}

    strategy = FedAvg(fraction_fit=1.0, fraction_evaluate=0.0, min_fit_clients=int(cfg["min-nodes"]),
                      min_available_clients=int(cfg["min-nodes"]), min_evaluate_clients=0,
                      initial_parameters=ndarrays_to_parameters([state[k].numpy() for k in keys]),
                      on_fit_config_fn=fit_config, fit_metrics_aggregation_fn=on_fit_metrics)
    legacy = LegacyContext(context, config=ServerConfig(num_rounds=rounds, round_timeout=float(cfg["round-timeout"])),
                           strategy=strategy)
    workflow = DefaultWorkflow(fit_workflow=SecAggPlusWorkflow(
        num_shares=cfg["secagg-num-shares"], reconstruction_threshold=cfg["secagg-reconstruction-threshold"],
        clipping_range=float(cfg["secagg-clipping-range"]), max_weight=float(cfg["secagg-max-weight"])))
    status = "failed"
    t0 = time.perf_counter()
    try:
        workflow(grid, legacy)
        status = "completed"
    finally:
        registry.finish_run(run_id, status)
        final = _final_parameters(legacy)
        ckpt_dir = out_dir / "checkpoints"
        if final is not None:
            state.update({k: torch.from_numpy(np.asarray(a)).to(state[k].dtype) for k, a in zip(keys, final)})
            path, digest, size = save_checkpoint(ckpt_dir, rounds, state, {
                "run_id": run_id, "model_preset": cfg["model-preset"], "label_set": label_set.name,
                "classes": list(label_set.seen), "image_size": int(cfg["image-size"])})
            registry.add_checkpoint(run_id, rounds, str(path), digest, size)
        for rnd, h in enumerate(history, 1):
            registry.finish_round(run_id, rnd, h["sites"], 0)
            registry.add_metrics(run_id, rnd,
                                 [MetricRow(None, "all", None, TRAIN_LOSS, h[TRAIN_LOSS], h["examples"])])
        (out_dir / "summary.json").write_text(json.dumps({
            "run_id": run_id, "status": status, "secure_aggregation": "SecAgg+", "rounds_completed": len(history),
            "rounds": history, "checkpoints": str(ckpt_dir), "wall_seconds": time.perf_counter() - t0,
            "config": cfg}, indent=1, default=str))


def _final_parameters(legacy: LegacyContext) -> list[np.ndarray] | None:
    """The global parameters after the last round (the legacy workflow keeps them in the context state)."""
    record = legacy.state.array_records.get(MAIN_PARAMS_RECORD)
    return None if record is None else [a.numpy() for a in record.values()]
