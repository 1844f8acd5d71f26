"""FedChestAvg: FedAvg that validates updates, names sites, and turns evaluation summaries into
per-site, per-projection, per-class metrics in the registry."""

from __future__ import annotations

import functools
import math
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from logging import INFO, WARNING

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.supercore.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from server.aggregation import MODES, RunningMean, ServerOptimizer, SiteUpdate, aggregate
from server.box_eval import box_round, parse_box
from server.ct_eval import SCOPE, ct_round, is_ct_summary, parse_ct
from server.loc_eval import loc_round, parse_loc
from server.federated_eval import round_metrics, site_scopes
from server.label_graph import LabelGraph
from server.registry import Registry
from server.robust import RobustRule
from server.rounds import DeadlineGrid, ReplyTimer, sample_nodes_bounded
from server.records import from_record, to_record
from server.timeline import TIMELINE, phase_rows, round_rows, site_phases
from server.validation import (NormHistory, check_train_metrics, nonfinite_reason, reference_of, update_norms,
                               validate_update)
from server.zeroshot_eval import parse_zero_shot, proxy_score, zero_shot_round
from server.reply import read_summary, read_train
from shared_models.messages import (DP_DELTA, DP_EPSILON, DP_EPSILON_BUDGET, DP_EVALUATION, EVAL_SECONDS,
                                     EVALUATE_FIRST, EVALUATION, GENERATOR_SECONDS, NUM_EXAMPLES, PRIVACY_KEYS,
                                     STAGE_ERRORS, SYNTH_IMAGES, TRAIN_LOSS, TRAIN_SECONDS, WITHHELD, MetricRow,
                                     TrainReply, scope_key)
from shared_models.metrics import HistogramSpec, group_codes, prevalence, prevalence_groups
from shared_models.networks import PROJECTIONS, group_keys
from shared_models.wire import WireError
from shared_models.zeroshot.scoring import SCORE_HISTOGRAM


def scalar_mean(records: list[MetricRecord], weight_key: str) -> MetricRecord:
    """Weighted mean of the scalar train metrics only (per-class count lists are handled separately)."""
    if not records:
        return MetricRecord({})
    total = sum(float(m[weight_key]) for m in records) or 1.0
    out: dict[str, float] = {}
    for m in records:
        w = float(m[weight_key]) / total
        for k, v in m.items():
            if isinstance(v, (int, float)) and k != weight_key:
                out[k] = out.get(k, 0.0) + w * float(v)
    return MetricRecord(out)


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _phases(stage: str):
    """Records the server's own phases of ``stage`` once its aggregation returns (``FedChestAvg._phases_done``)."""
    def wrap(fn):
        @functools.wraps(fn)
        def timed(self, server_round: int, replies):
            try:
                return fn(self, server_round, replies)
            finally:
                self._phases_done(stage, server_round + self.round_offset)
        return timed
    return wrap


def error_line(reason: str | None) -> str:
    """The line of a ClientApp error that says what went wrong (Flower forwards the site's whole traceback,
    wrapped by Ray in simulation): its last non-empty line, without colour codes, at most 500 characters."""
    lines = [ln.strip() for ln in _ANSI.sub("", reason or "").splitlines() if ln.strip().strip("'>")]
    return (lines[-1].rstrip("'>") if lines else "unknown error")[:500]


@dataclass
class EvalPool:
    """One round's evaluation summaries as they are parsed, by site and family."""

    evals: dict = field(default_factory=dict)
    zs: dict = field(default_factory=dict)
    box: dict = field(default_factory=dict)
    ct: dict = field(default_factory=dict)
    loc: dict = field(default_factory=dict)
    routed: dict[str, tuple[int, int]] = field(default_factory=dict)
    timing: list[MetricRow] = field(default_factory=list)


class FedChestAvg(FedAvg):
    def __init__(
        self,
        *,
        registry: Registry,
        run_id: str,
        classes: tuple[str, ...],
        spec: HistogramSpec,
        reference: ArrayRecord,
        classifiers: dict[str, list[str]] | None = None,
        aggregation: str = "projection",
        server_optimizer: ServerOptimizer | None = None,
        proximal_mu: float = 0.0,
        on_round: Callable[[int, dict], None] | None = None,
        zeroshot_sets: dict[str, tuple[str, ...]] | None = None,
        bootstrap: int = 1000,
        box_samples: tuple[tuple[int, ...], int] | None = None,
        robust: RobustRule | None = None,
        norm_bound: float = 10.0,
        timer: ReplyTimer | None = None,
        quorum: int = 1,
        node_wait: float = 120.0,
        ct_classes: tuple[str, ...] = (),
        label_graph: LabelGraph | None = None,
        pooled_ci: int = 0,
        evaluate_with_train: bool = False,
        lr_at: Callable[[int], float] | None = None,
        local_keys: frozenset[str] = frozenset(),
        **kwargs,
    ) -> None:
        if aggregation not in MODES:
            raise ValueError(f"aggregation {aggregation!r}; expected one of {MODES}")
        super().__init__(**kwargs)
        self.round_offset = 0  # a resumed run (server/resume.py) continues at round offset + 1
        self.registry, self.run_id, self.classes, self.spec = registry, run_id, classes, spec
        self.current: dict[str, np.ndarray] = from_record(reference)  # read-only views on the record's bytes
        self.reference = reference_of(self.current)
        # fedbn: the normalisation layers' keys stay at the sites; they are in no group, so never expected, averaged
        # or stepped, and keep their initial values in the global model (client/fedbn.py)
        self.groups = group_keys(k for k in self.current if k not in local_keys)
        self.lr_at = lr_at  # the sites' learning rate per round (server/schedule.py); None: the train config's
        self.classifiers = classifiers or {}
        self.aggregation = aggregation
        self.server_optimizer = server_optimizer
        self.proximal_mu = proximal_mu
        self.on_round = on_round
        self.node_site: dict[int, str] = {}
        self.synthetic_sites: set[str] = set()
        self.train_pos = np.zeros(len(classes), np.int64)
        self.train_annotated = np.zeros(len(classes), np.int64)
        self.history: list[dict] = []
        self.n_train = 0
        self.asked: dict[str, set[int]] = {}
        self.privacy: dict[str, dict[str, dict]] = {}  # round -> site -> epsilon spent (cumulative), delta, budget
        self.zeroshot_sets = zeroshot_sets or {}  # server/zeroshot_eval.py: summary family -> classes
        self.bootstrap = bootstrap
        self.pooled_ci = pooled_ci  # bootstrap replicates of the pooled mAP / mAUC / mF1 interval (0: none)
        self.best_proxy: tuple[int, float] | None = None  # (round, pooled proxy mAUC): zero-shot model selection
        self.robust = robust or RobustRule()  # server/robust.py: per-group robust aggregation ("none": the mean)
        self.norms = NormHistory(norm_bound)  # updates far larger than recent accepted ones are rejected
        self.timer = timer or ReplyTimer()  # per-site reply deadlines (server/rounds.py)
        self.quorum, self.node_wait = quorum, node_wait  # rounds go on with >= quorum nodes after node_wait seconds
        self.late: dict[str, set[int]] = {}  # stage -> nodes past their deadline this round
        self.reply_rows: list[tuple] = []  # (node, name, seconds, deadline)
        self.phase_rows: list[MetricRow] = []  # per-site phases of the replies pulled (server/timeline.py)
        self.link: DeadlineGrid | None = None
        self.reply_node: dict[str, int] = {}  # message id -> the node it was sent to
        self.round_now = 0
        self.box_samples = box_samples  # box-latent runs: (the N reported, the primary N); server/box_eval.py
        self.ct_classes = ct_classes  # runs with the CT model: its label set (server/ct_eval.py)
        # runs with label-graph = true: co-occurrence sums -> graph (server/label_graph.py)
        self.label_graph = label_graph
        self.ct_train_pos = np.zeros(len(ct_classes), np.int64)
        self.ct_train_annotated = np.zeros(len(ct_classes), np.int64)
        # evaluate-with-train: each train message also asks the sites to evaluate the model it carries (the last
        # round's global model) before training on it, so a round is one exchange instead of two; the last
        # round's model gets its own evaluation stage. Only when every node trains (fraction-train 1).
        self.fold = evaluate_with_train and self.fraction_train == 1.0
        self.last_round: int | None = None  # set by start(): the run's last round (resumed runs included)
        self.unevaluated: int | None = None  # the round whose global model the next train message evaluates
        self.folding: int | None = None  # the round the train messages in flight evaluate

    # -- helpers -----------------------------------------------------------------------------------------
    def _name(self, node: int) -> str:
        return self.node_site.get(node, f"node-{node}")

    def _site_of(self, msg: Message) -> str:
        node = msg.metadata.src_node_id
        cfg = msg.content.config_records.get("site")
        if cfg is not None and "name" in cfg:
            name = str(cfg["name"])
            if node not in self.node_site:
                self.node_site[node] = name
                self.registry.upsert_site(self.run_id, name, node)
            if bool(cfg.get("synthetic", False)):
                self.synthetic_sites.add(name)
        return self.node_site.get(node, f"node-{node}")

    # -- bounded waiting (server/rounds.py) -----------------------------------------------------------------
    def start(self, *, grid: Grid, **kwargs):
        """Flower's round loop on a grid with per-site reply deadlines."""
        self.link = DeadlineGrid(grid, self.timer, self._late, self._replied)
        self.last_round = int(kwargs.get("num_rounds", 3)) + self.round_offset
        return super().start(grid=self.link, **kwargs)

    def _evaluated_with_train(self, server_round: int) -> bool:
        """Whether round ``server_round``'s model is evaluated by the next round's train messages (no
        evaluation stage of its own)."""
        return self.fold and self.last_round is not None and server_round < self.last_round

    def _messages(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid, kind: str
                  ) -> list[Message]:
        train = kind == MessageType.TRAIN
        fraction = self.fraction_train if train else self.fraction_evaluate
        if fraction == 0.0:
            return []

        def short(connected: int, wanted: int, waited: float) -> None:
            text = (f"{connected} of {wanted} nodes connected after {waited:.0f}s; this {kind} round goes on with "
                    f"them (quorum {self.quorum})")
            log(WARNING, "round %s: %s", server_round, text)
            self.registry.add_event(self.run_id, "nodes_missing", text, server_round)

        nodes = sample_nodes_bounded(grid, self.min_available_nodes, fraction,
                                     self.min_train_nodes if train else self.min_evaluate_nodes, self.quorum,
                                     self.node_wait, short)
        config["server-round"] = server_round
        self.reply_node.clear()
        record = RecordDict({self.arrayrecord_key: arrays, self.configrecord_key: config})
        self.round_now = server_round
        return list(self._construct_messages(record, nodes, kind))

    def _late(self, node: int, stage: str, limit: float, recent: float | None) -> None:
        site = self._name(node)
        why = f"{self.timer.factor:g} x its expected {recent:.1f}s" if recent else "the round timeout, no history yet"
        text = f"no {stage} reply within its deadline of {limit:.0f}s ({why}); the round goes on without it"
        log(WARNING, "round %s: %s: %s", self.round_now, site, text)
        self.registry.add_event(self.run_id, "straggler", text, self.round_now, site)
        self.late.setdefault(stage, set()).add(node)

    def _replied(self, node: int, stage: str, seconds: float, limit: float, reply: Message) -> None:
        self.reply_node[reply.metadata.reply_to_message_id] = node
        if not reply.has_error():
            self.reply_rows.append((node, f"{stage}_reply_seconds", seconds, limit))
            stamps = reply.content.config_records.get(TIMELINE)
            if stamps is not None and self.link is not None and self.link.pushed is not None:
                self.phase_rows += phase_rows(self._site_of(reply), stage,  # named from the first reply on
                                              site_phases(stamps, self.link.pushed[1], time.time()))

    def _phases_done(self, stage: str, server_round: int) -> None:
        """The server's own phases of a stage: its push, and its work after the last reply was pulled."""
        link = self.link
        if link is None or link.pushed is None:
            return
        phases = {"push": link.pushed[1] - link.pushed[0]}
        if link.last_pull is not None:
            phases["aggregate"] = time.time() - link.last_pull
        self.registry.add_metrics(self.run_id, server_round, round_rows(stage, phases))

    def _node_of(self, msg: Message) -> int:
        """The node a reply answers for: the link's own error replies (a node that stopped sending heartbeats)
        do not carry the node's id, the message they answer does."""
        return self.reply_node.get(msg.metadata.reply_to_message_id, msg.metadata.src_node_id)

    def _timing_rows(self) -> list[MetricRow]:
        rows = [MetricRow(self._name(node), "all", None, name, value) for node, name, value, _ in self.reply_rows]
        rows += [MetricRow(self._name(node), "all", None, name.replace("reply_seconds", "deadline_seconds"), limit)
                 for node, name, _, limit in self.reply_rows]
        rows += [MetricRow(self._name(node), "all", None, "link_seconds_per_MB", self.timer.link[node] * 1e6)
                 for node in sorted({r[0] for r in self.reply_rows}) if node in self.timer.link]
        rows += self.phase_rows
        self.reply_rows, self.phase_rows = [], []
        return rows

    # -- train -------------------------------------------------------------------------------------------
    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        server_round += self.round_offset
        self.current = from_record(arrays)
        config["aggregation"] = self.aggregation
        if self.lr_at is not None:
            config["lr"] = float(self.lr_at(server_round))
        if self.proximal_mu > 0:  # FedProx: the sites add the proximal term (client/training.py)
            config["proximal-mu"] = self.proximal_mu
        if self.train_annotated.sum() > 0:  # the consortium's prevalence (sums of counts) from the last round
            config["class-prevalence"] = [float(v) for v in prevalence(self.train_pos, self.train_annotated, 0.0)]
        self.folding, self.unevaluated = self.unevaluated, None
        config[EVALUATE_FIRST] = self.folding or 0  # the train config record is the same every round
        if self.folding is not None:
            self._add_bands(config)
        messages = self._messages(server_round, arrays, config, grid, MessageType.TRAIN)
        # the round starts when its sites are asked: waiting for nodes to come online (a deployment's first round,
        # a lost SuperNode's node-wait) is not a round's work
        self.registry.start_round(self.run_id, server_round)
        self.asked["train"] = {m.metadata.dst_node_id for m in messages}
        return messages

    def _add_bands(self, config: ConfigRecord) -> None:
        if self.train_annotated.sum() > 0:  # the bands the sites summarise before their small-count rule
            config["class-bands"] = group_codes(prevalence_groups(self.train_pos, self.train_annotated))

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        server_round += self.round_offset
        if self._evaluated_with_train(server_round):
            return []  # the next round's train messages evaluate this model
        self._add_bands(config)
        messages = self._messages(server_round, arrays, config, grid, MessageType.EVALUATE)
        self.asked["evaluate"] = {m.metadata.dst_node_id for m in messages}
        return messages

    def _record_dropouts(self, stage: str, server_round: int, answered: set[int]) -> None:
        """Nodes asked this round that sent nothing back (killed or cut off); those past their deadline are
        already recorded as stragglers."""
        for node in sorted(self.asked.get(stage, set()) - answered - self.late.pop(stage, set())):
            site = self._name(node)
            log(WARNING, "round %s: %s did not reply to %s (dropout)", server_round, site, stage)
            self.registry.add_event(self.run_id, "dropout", f"no {stage} reply this round", server_round, site)

    @_phases("train")
    def aggregate_train(self, server_round: int, replies: Iterable[Message]):
        """Each reply is checked and, with a mean rule, folded into the running aggregate as it is pulled
        (``DeadlineGrid`` yields them one at a time), so the server never holds every site's update; robust rules
        need all senders' updates of a group at once and keep them."""
        server_round += self.round_offset
        kept: list[MetricRecord] = []
        streaming = self.robust.name == "none"
        running = RunningMean(self.current, self.groups, self.classifiers, self.aggregation) if streaming else None
        updates: list[SiteUpdate] = []  # robust rules only
        accepted: list[tuple[SiteUpdate, dict[str, float]]] = []  # with their arrays dropped when streaming
        pos = np.zeros(len(self.classes), np.int64)
        ann = np.zeros(len(self.classes), np.int64)
        ct_pos = np.zeros(len(self.ct_classes), np.int64)
        pairs = np.zeros((len(self.classes), len(self.classes)), np.int64)
        pair_den = np.zeros_like(pairs)
        paired = False
        ct_ann = np.zeros(len(self.ct_classes), np.int64)
        rows: list[MetricRow] = []
        answered: set[int] = set()
        folded, pool = self.folding, EvalPool()  # the round whose model these replies also evaluated, if any
        for msg in replies:
            answered.add(self._node_of(msg))
            if msg.has_error():
                self._train_failed(server_round, self._name(self._node_of(msg)), msg.error.reason)
                continue
            site = self._site_of(msg)
            failed = msg.content.config_records.get(STAGE_ERRORS, {})
            if folded is not None and "evaluate" in failed:
                reason = error_line(str(failed["evaluate"]))
                self.registry.add_event(self.run_id, "evaluate_error", reason, folded, site)
            elif folded is not None:
                self._take_summary(pool, site, msg.content.metric_records.get(EVALUATION), folded)
            if "train" in failed:
                self._train_failed(server_round, site, str(failed["train"]))
                continue
            update, norms, m, reply = self._check_update(msg, site, server_round, rows)
            del msg
            if update is None:
                continue
            if reply.train_pos is not None:  # a radiograph site (CT sites count their own label set)
                pos += np.asarray(reply.train_pos, np.int64)
                ann += np.asarray(reply.train_annotated, np.int64)
            if (self.label_graph is not None and len(reply.cooc or []) == pairs.size
                    and len(reply.cooc_den or []) == pairs.size):
                pairs += np.asarray(reply.cooc, np.int64).reshape(pairs.shape)
                pair_den += np.asarray(reply.cooc_den, np.int64).reshape(pairs.shape)
                paired = True
            if self.ct_classes and reply.ct_train_pos is not None:
                ct_pos += np.asarray(reply.ct_train_pos, np.int64)
                ct_ann += np.asarray(reply.ct_train_annotated, np.int64)
            if streaming:
                running.add(update)
                update = SiteUpdate(update.site, {}, update.group_counts, update.class_pos)
            else:
                updates.append(update)
            accepted.append((update, norms))
            rows.append(MetricRow(site, "all", None, "update_norm", float(sum(v * v for v in norms.values()) ** 0.5)))
            for key in (TRAIN_LOSS, TRAIN_SECONDS, NUM_EXAMPLES, *(scope_key("n", p) for p in PROJECTIONS),
                        SYNTH_IMAGES, GENERATOR_SECONDS, *PRIVACY_KEYS):
                if key in m:
                    rows.append(MetricRow(site, "all", None, key, float(m[key]), int(reply.num_examples)))
            if DP_EPSILON in m:
                self.privacy.setdefault(str(server_round), {})[site] = {
                    "epsilon": float(m[DP_EPSILON]), "delta": float(m.get(DP_DELTA, float("nan"))),
                    "budget": float(m[DP_EPSILON_BUDGET]) if DP_EPSILON_BUDGET in m else None}
            kept.append(m)
        self._record_dropouts("train", server_round, answered)
        if folded is not None:  # before this round's counts replace the last round's, as a stage of its own
            self.folding = None
            self._pool_evaluation(folded, pool, [])
        if self._evaluated_with_train(server_round):
            self.unevaluated = server_round
        if ann.sum() > 0:
            self.train_pos, self.train_annotated = pos, ann
        if ct_ann.sum() > 0:
            self.ct_train_pos, self.ct_train_annotated = ct_pos, ct_ann
        self.n_train = len(accepted)
        rows += self._timing_rows()
        if not accepted:
            self.registry.add_metrics(self.run_id, server_round, rows)
            self.registry.add_event(self.run_id, "round_skipped", "no valid update to aggregate", server_round)
            log(WARNING, "round %s: no valid update; the global model is kept", server_round)
            return None, None
        for _, norms in accepted:
            self.norms.record(norms)
        notes: list[str] = []
        if streaming:
            new, contributors = running.result()
        else:
            new, contributors = aggregate(self.current, updates, self.groups, self.classifiers, self.aggregation,
                                          self.robust, notes)
            updates.clear()
        for note in notes:
            self.registry.add_event(self.run_id, "robust_aggregation", note, server_round)
        if not streaming:
            for u, _ in accepted:
                left_out = [g for g, sites in contributors.items()
                            if u.group_counts.get(g, 0) > 0 and u.site not in sites]
                if left_out:
                    self.registry.add_event(self.run_id, "update_excluded",
                                            f"{self.robust.name} left this site's update out of {', '.join(left_out)}",
                                            server_round, u.site)
        if self.server_optimizer is not None:
            new = self.server_optimizer.step(self.current, new, contributors, self.groups)
        if self.label_graph is not None:  # the graph buffers are the server's, never an average
            if paired:
                self.label_graph.update(pairs, pair_den)
                rows.append(MetricRow(None, "all", None, "label_graph_edges",
                                      float((self.label_graph.a_hat > 0).sum() - len(self.classes))))
            new = self.label_graph.apply(new)
        for group, sites in contributors.items():
            proj = group.split(".")[-1] if group.startswith("experts.") else "all"
            rows += [MetricRow(u.site, proj, None, "group_samples",
                               u.group_counts.get(group, 0.0) if u.site in sites else 0.0) for u, _ in accepted]
        self.registry.add_metrics(self.run_id, server_round, rows)
        new = {k: new.pop(k) for k in self.reference}  # the global model's key order
        # one buffer at a time: the new record grows as the aggregate is released
        return to_record(new, consume=True), scalar_mean(kept, self.weighted_by_key)

    def _train_failed(self, server_round: int, site: str, reason: str | None) -> None:
        """A site's training failed (an error reply, or a refusal in a reply that also evaluated)."""
        line = error_line(reason)
        self.registry.add_event(self.run_id, "train_error", line, server_round, site)
        log(WARNING, "round %s: %s failed to train: %s", server_round, site, line)

    def _check_update(self, msg: Message, site: str, server_round: int, rows: list
                      ) -> tuple[SiteUpdate | None, dict[str, float], MetricRecord | None, TrainReply | None]:
        """The update in a train reply (views on its bytes), its per-group norms, its metric record and that record
        read (shared_models/messages.py), or None with the reason recorded as an ``update_rejected`` event."""
        def reject(reason: str):
            log(WARNING, "round %s: update from %s rejected: %s", server_round, site, reason)
            self.registry.add_event(self.run_id, "update_rejected", reason, server_round, site)
            return None, {}, None, None

        metrics = [name for name in msg.content.metric_records if name != EVALUATION]
        if len(msg.content.array_records) != 1 or len(metrics) != 1:
            return reject("expected one ArrayRecord and one MetricRecord (besides an evaluation)")
        arrays = next(iter(msg.content.array_records.values()))
        try:
            local = from_record(arrays)  # views on the message bytes (shared_models/wire.py)
        except WireError as exc:
            return reject(f"malformed update: {exc}")
        if not local:  # a site whose small-count rule held back every group: nothing to aggregate, no fault
            text = "the site sent no parameter group (too few training samples under its small-count rule)"
            log(INFO, "round %s: %s: %s", server_round, site, text)
            self.registry.add_event(self.run_id, "nothing_sent", text, server_round, site)
            return None, {}, None, None
        rows.append(MetricRow(site, "all", None, "update_bytes", float(sum(len(a.data) for a in arrays.values()))))
        m = msg.content.metric_records[metrics[0]]
        reason = validate_update(local, self.reference, None if self.aggregation == "fedavg" else self.groups,
                                 values=False)
        norms: dict[str, float] = {}
        if not reason:
            norms = update_norms(local, self.current, self.groups)  # one pass: norms and finite values
            reason = (nonfinite_reason(local, norms, self.groups)
                      or check_train_metrics(m, set(norms), len(self.classes), len(self.ct_classes))
                      or self.norms.check(norms))
        if reason:
            return reject(reason)
        try:
            reply = read_train(m)
            update = SiteUpdate(site, local, {g: float(reply.group_counts.get(g, 0.0)) for g in self.groups},
                                {g: np.asarray(reply.group_positives[g]) for g in self.groups
                                 if g in reply.group_positives})
        except (KeyError, ValueError, TypeError) as exc:
            return reject(f"malformed train metrics: {exc}")
        return update, norms, m, reply

    # -- evaluate ----------------------------------------------------------------------------------------
    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        if self._evaluated_with_train(server_round + self.round_offset):
            return None  # no evaluation stage this round: the next train replies carry it
        return self._aggregate_evaluate(server_round, replies)

    @_phases("evaluate")
    def _aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        server_round += self.round_offset
        pool = EvalPool()
        answered: set[int] = set()
        for msg in replies:  # parsed as pulled: the compact parsed summaries are kept, not the messages
            answered.add(self._node_of(msg))
            if msg.has_error():
                site = self._name(self._node_of(msg))
                self.registry.add_event(self.run_id, "evaluate_error", error_line(msg.error.reason), server_round, site)
                continue
            self._take_summary(pool, self._site_of(msg), next(iter(msg.content.metric_records.values()), None),
                               server_round)
        msg = None  # nothing of the last message is kept either
        self._record_dropouts("evaluate", server_round, answered)
        return self._pool_evaluation(server_round, pool, self._timing_rows())

    def _take_summary(self, pool: EvalPool, site: str, m: MetricRecord | None, server_round: int) -> None:
        """One site's evaluation summary of round ``server_round``'s model, parsed into ``pool``."""
        try:
            if m is None:
                raise KeyError("no MetricRecord")
            summary = read_summary(m)
            if summary.dp_evaluation is not None:  # a DP site: withheld, noised and charged, or exact by its policy
                pool.timing.append(MetricRow(site, "all", None, DP_EVALUATION, float(summary.dp_evaluation)))
                if summary.dp_epsilon is not None:  # a charged evaluation release: the site's epsilon after it
                    pool.timing.append(MetricRow(site, "all", None, "dp_epsilon_after_evaluation",
                                                 float(summary.dp_epsilon)))
                    entry = self.privacy.setdefault(str(server_round), {}).setdefault(
                        site, {"epsilon": 0.0, "delta": float(summary.dp_delta if summary.dp_delta is not None
                                                              else float("nan")), "budget": None})
                    entry["epsilon"] = max(entry["epsilon"], float(summary.dp_epsilon))
                if int(summary.dp_evaluation) == WITHHELD:
                    self.registry.add_event(self.run_id, "evaluation_withheld", "the site trains under DP and "
                                            "its policy releases no evaluation summary", server_round, site)
                    return
            if is_ct_summary(m):
                pool.ct[site] = parse_ct(m, len(self.ct_classes), self.spec)
                if summary.eval_seconds is not None:
                    pool.timing.append(MetricRow(site, SCOPE, None, EVAL_SECONDS, float(summary.eval_seconds),
                                                 int(summary.require("num_examples"))))
                return
            pool.evals[site] = site_scopes(summary, len(self.classes), self.spec)
            if self.zeroshot_sets:
                pool.zs[site] = parse_zero_shot(m, self.zeroshot_sets, SCORE_HISTOGRAM)
            if self.box_samples:
                pool.box[site] = parse_box(m, self.box_samples[0], len(self.classes), self.spec)
            tally = parse_loc(m, len(self.classes))
            if tally is not None:
                pool.loc[site] = tally
            if summary.eval_seconds is not None:
                pool.timing.append(MetricRow(site, "all", None, EVAL_SECONDS, float(summary.eval_seconds),
                                             int(summary.require("num_examples"))))
            pool.routed[site] = (int(summary.router_correct or 0), int(summary.router_total or 0))
        except (KeyError, ValueError) as exc:
            self.registry.add_event(self.run_id, "evaluate_rejected", f"malformed summary: {exc}", server_round, site)

    def _pool_evaluation(self, server_round: int, pool: EvalPool, stage_rows: list[MetricRow]) -> MetricRecord | None:
        """Round ``server_round``'s pooled evaluation from the sites' summaries: registry rows, the round's summary
        and its printout. ``stage_rows``: the timing rows of the stage that carried the summaries, when that
        stage was an evaluation stage of this round."""
        evals, ct_evals, timing = pool.evals, pool.ct, pool.timing + stage_rows
        log(INFO, "aggregate_evaluate: %s site summaries", len(evals) + len(ct_evals))
        if not evals and not ct_evals:  # e.g. every site trains under DP and withholds its evaluation
            if timing:
                self.registry.add_metrics(self.run_id, server_round, timing)
            self.registry.finish_round(self.run_id, server_round, self.n_train, 0)  # done: nothing more will come
            return None
        groups = prevalence_groups(self.train_pos, self.train_annotated)
        if evals:
            rows, summary = round_metrics(dict(sorted(evals.items())), groups, self.classes, self.spec,
                                          self.pooled_ci, seed=server_round)
        else:  # a round in which only CT sites answered
            rows, summary = [], {"pooled": {}, "pooled_by_projection": {}, "sites": {}, "frontal_lateral_gap": {},
                                 "baseline": {"prevalence_mAP": None}}
        if ct_evals:
            ct_rows, summary["ct"] = ct_round(dict(sorted(ct_evals.items())), self.ct_classes, self.spec)
            rows += ct_rows + [MetricRow(None, SCOPE, c, "train_prevalence", p / a if a else None, int(a))
                               for c, p, a in zip(self.ct_classes, self.ct_train_pos, self.ct_train_annotated)]
        rows += timing
        correct, total = (sum(v[i] for v in pool.routed.values()) for i in (0, 1))
        summary["router_accuracy"] = correct / total if total else None
        rows += [MetricRow(site, "all", None, "router_accuracy", c / t if t else None, t)
                 for site, (c, t) in pool.routed.items()]
        rows.append(MetricRow(None, "all", None, "router_accuracy", summary["router_accuracy"], total))
        rows += [MetricRow(None, "all", cls, "train_prevalence", p / a if a else None, int(a))
                 for cls, p, a in zip(self.classes, self.train_pos, self.train_annotated)]
        if pool.zs:
            zs_rows, summary["zeroshot"] = zero_shot_round(dict(sorted(pool.zs.items())), self.zeroshot_sets,
                                                           SCORE_HISTOGRAM, self.bootstrap, seed=server_round)
            rows += zs_rows
            score = proxy_score(summary["zeroshot"])
            if score is not None and (self.best_proxy is None or score > self.best_proxy[1]):
                self.best_proxy = (server_round, score)
                self.registry.add_event(self.run_id, "model_selection",
                                        f"best round so far by proxy-class zero-shot mAUC {score:.4f}", server_round)
        if pool.box:
            box_rows, summary["box"] = box_round(dict(sorted(pool.box.items())), *self.box_samples, self.classes,
                                                 self.spec, self.bootstrap, seed=server_round)
            rows += box_rows
        if pool.loc:
            loc_rows, summary["localization"] = loc_round(dict(sorted(pool.loc.items())), self.classes)
            rows += loc_rows
        self.registry.add_metrics(self.run_id, server_round, rows)
        self.registry.finish_round(self.run_id, server_round, self.n_train, len(evals) + len(ct_evals))
        summary["round"] = server_round
        summary["groups"] = {c: g for c, g in zip(self.classes, groups)}
        self.history.append(summary)
        if self.on_round:
            self.on_round(server_round, summary)
        return MetricRecord({k: v for k, v in summary["pooled"].items() if not math.isnan(v)})
