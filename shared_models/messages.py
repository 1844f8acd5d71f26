"""Names both sides of a fedchest message agree on (the ServerApp in server/, the ClientApp in client/): the
records and config keys that are not Flower's own. One place, so neither side spells them from memory."""

from __future__ import annotations

import numbers
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, NamedTuple

import numpy as np

EVALUATE_FIRST = "evaluate-first"
"""Train config key: the round of the model the message carries, to be evaluated before training on it (the run's
``evaluate-with-train``; 0 or absent: no evaluation): a round is one exchange instead of two."""

EVALUATION = "evaluation"
"""The train reply's MetricRecord holding that evaluation: the same summary an evaluate reply carries."""

STAGE_ERRORS = "stage-errors"
"""A train reply's ConfigRecord of the stages that failed when it also evaluated: ``train`` and / or ``evaluate``
-> the site's redacted reason (what an error reply of that stage would have said)."""

SMALL_RECORDS = "small-records"
"""A reply's one ConfigRecord holding all its small records (metrics, evaluation, site, timeline, stage errors):
each an object, that is an HTTP request, at every hop of a deployed run, so a reply travels with one instead of
four or five (``pack_small_records``). The ServerApp unpacks it when it pulls the reply; the apps on either side
see the records as written."""

_KINDS = {"metric": "m", "config": "c"}
_INDEX = "index"  # list of "<kind>:<record name>", in the reply's order: empty records and the order survive


class SmallRecordsError(ValueError):
    """A reply's small-records ConfigRecord is not what ``pack_small_records`` writes."""


def pack_small_records(records: list[tuple[str, str, dict]]) -> dict:
    """``(kind, name, items)`` per record (kind ``metric`` or ``config``) -> the items of one ConfigRecord: an
    index of the records, then ``<kind>:<name>:<key>`` -> value."""
    out: dict = {_INDEX: [f"{_KINDS[kind]}:{name}" for kind, name, _ in records]}
    for kind, name, items in records:
        if ":" in name or not name:
            raise SmallRecordsError(f"record name {name!r}: expected a non-empty name without ':'")
        for key, value in items.items():
            out[f"{_KINDS[kind]}:{name}:{key}"] = value
    return out


def unpack_small_records(items: dict) -> list[tuple[str, str, dict]]:
    """The inverse of ``pack_small_records``; a malformed record raises ``SmallRecordsError`` naming what is
    wrong."""
    kinds = {v: k for k, v in _KINDS.items()}
    index = items.get(_INDEX)
    if not isinstance(index, list) or not all(isinstance(e, str) for e in index):
        raise SmallRecordsError(f"{SMALL_RECORDS}: field {_INDEX!r} must be a list of '<kind>:<name>' strings, "
                                f"got {type(index).__name__}")
    records: dict[str, tuple[str, str, dict]] = {}
    for entry in index:
        tag, _, name = entry.partition(":")
        if tag not in kinds or not name or entry in records:
            raise SmallRecordsError(f"{SMALL_RECORDS}: index entry {entry!r}: expected a unique 'm:<name>' or "
                                    "'c:<name>'")
        records[entry] = (kinds[tag], name, {})
    for key, value in items.items():
        if key == _INDEX:
            continue
        tag, _, rest = key.partition(":")
        name, sep, field = rest.partition(":")
        record = records.get(f"{tag}:{name}")
        if record is None or not sep or not field:
            raise SmallRecordsError(f"{SMALL_RECORDS}: key {key!r} names no record of the index {index}")
        record[2][field] = value
    return list(records.values())


# -- the keys of a reply's metric records ----------------------------------------------------------------------
# A train reply's MetricRecord ("metrics") and an evaluation summary (an evaluate reply's "metrics", a train reply's
# EVALUATION) are flat key -> value maps; these are their keys. shared_models/replies.py reads and writes them as
# typed ``TrainReply`` / ``EvalSummary``; the families' own keys (``zs.``, ``ct.``, ``box_``, ``loc_``) stay theirs.

NUM_EXAMPLES = "num-examples"
"""Both replies: the examples behind the figures (train: the weight of the site's update)."""
TRAIN_POS, TRAIN_ANNOTATED = "train_pos", "train_annotated"
"""Train reply, radiograph sites: per class of the run's label set, training images positive / annotated."""
CT_TRAIN_POS, CT_TRAIN_ANNOTATED = "ct_train_pos", "ct_train_annotated"
"""Train reply, CT sites: the same per class of the CT label set."""
COOC, COOC_DEN = "cooc", "cooc_den"
"""Train reply, label-graph runs: the site's C x C pair counts and their denominators, flattened row-major."""
TRAIN_LOSS, TRAIN_SECONDS = "train_loss", "train_seconds"
"""Train reply: the local training loss (none from a DP site) and the site's wall time for the round."""
EVAL_SECONDS = "eval_seconds"
"""Evaluation summary: the site's wall time for it."""
ROUTER_CORRECT, ROUTER_TOTAL = "router_correct", "router_total"
"""Evaluation summary: images of a trusted view the router sent to their view's expert / all of them."""
DP_EVALUATION = "dp_evaluation"
"""Evaluation summary of a DP site: what it is, one of the three values below."""
WITHHELD, NOISED, EXACT = 0, 1, 2
"""``dp_evaluation``: no summary (the default), the Gaussian release of its histograms (charged every round), the
exact summary (by the site's explicit policy)."""
DP_EPSILON, DP_DELTA, DP_EPSILON_BUDGET = "dp_epsilon", "dp_delta", "dp_epsilon_budget"
"""A DP site's privacy spent (cumulative epsilon), its delta and its budget (train replies; epsilon and delta also
in a charged evaluation release)."""
DP_NOISE_MULTIPLIER, DP_MAX_GRAD_NORM, DP_STEPS, DP_SAMPLE_RATE = (
    "dp_noise_multiplier", "dp_max_grad_norm", "dp_steps", "dp_sample_rate")
PRIVACY_KEYS = (DP_EPSILON, DP_EPSILON_BUDGET, DP_DELTA, DP_NOISE_MULTIPLIER, DP_MAX_GRAD_NORM, DP_STEPS,
                DP_SAMPLE_RATE)
"""Train reply of a DP site: its DP-SGD accounting, each recorded in the registry."""
SYNTH_IMAGES, GENERATOR_SECONDS = "synth_images", "generator_seconds"
"""Train reply of a tail-synthesis run: synthetic images trained on and the time generating them."""

COUNT_PREFIX, POS_PREFIX = "count.", "pos."
SCOPE_FIELDS = ("hist_pos", "hist_neg", "ap", "auroc", "f1", "n", "withheld", "band_map")
"""An evaluation scope's fields, each under ``<prefix><field>.<scope>`` (``scope_key``)."""


def count_key(group: str) -> str:
    """Train reply: the samples behind parameter group ``group`` of the update (its aggregation weight)."""
    return f"{COUNT_PREFIX}{group}"


def pos_key(group: str) -> str:
    """Train reply: per class, the positives behind parameter group ``group`` (class-wise aggregation)."""
    return f"{POS_PREFIX}{group}"


def scope_key(name: str, scope: str, prefix: str = "") -> str:
    """``<prefix><name>.<scope>``: a field of an evaluation scope (``SCOPE_FIELDS``; ``prefix`` a family such as
    ``ct.`` or ``zs.descriptive.``), and in a train reply ``n.<projection>`` (training images of that view)."""
    return f"{prefix}{name}.{scope}"


def group_of(key: str) -> str | None:
    """The parameter group a train reply's ``count.<group>`` / ``pos.<group>`` key is about, else None."""
    for prefix in (COUNT_PREFIX, POS_PREFIX):
        if key.startswith(prefix):
            return key[len(prefix):]
    return None


# -- typed replies ----------------------------------------------------------------------------------------------
# Each converts to and from the flat dict a MetricRecord is made of (client/reply.py and server/reply.py hold the
# Flower side): the same keys and values on the wire as before the types existed, so old replies and registries read.

Number = int | float


class ReplyError(ValueError):
    """A reply's metric record is not what its type writes: the message names the key and what was expected."""


def _number(kind: str, key: str, value: Any) -> Number:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise ReplyError(f"{kind}: {key!r} must be a number, got {type(value).__name__} {value!r:.40}")
    return value


def _numbers(kind: str, key: str, value: Any) -> list:
    """A list of numbers (a sequence or 1-D array of them, read as a list)."""
    array = np.asarray(value) if isinstance(value, (list, tuple, np.ndarray)) else None
    if array is None or array.ndim != 1 or (array.size and array.dtype.kind not in "iuf"):
        raise ReplyError(f"{kind}: {key!r} must be a list of numbers, got {type(value).__name__} {value!r:.40}")
    return value if isinstance(value, list) else array.tolist()


def _with_extra(out: dict[str, Any], reply: TrainReply | EvalSummary) -> dict[str, Any]:
    """``out`` (a reply's typed fields as keys) and the reply's ``extra``, none of which may be a typed field's key
    (it would read back as that field)."""
    clash = sorted(k for k in reply.extra if reply.typed(k))
    if clash:
        raise ReplyError(f"{reply.KIND}: extra keys {clash} are typed fields' keys")
    return {**out, **reply.extra}


@dataclass
class TrainReply:
    """A train reply's metric record. ``extra``: the rest as sent (losses, timings, DP accounting, synthesis and
    localiser figures); none of it is read to aggregate."""

    num_examples: Number
    group_counts: dict[str, Number] = field(default_factory=dict)  # count.<group>
    group_positives: dict[str, list[Number]] = field(default_factory=dict)  # pos.<group>
    train_pos: list[int] | None = None
    train_annotated: list[int] | None = None
    ct_train_pos: list[int] | None = None
    ct_train_annotated: list[int] | None = None
    views: dict[str, int] = field(default_factory=dict)  # n.<projection>: training images of that view
    cooc: list[int] | None = None
    cooc_den: list[int] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    KIND: ClassVar[str] = "train reply"
    _LISTS: ClassVar[tuple[tuple[str, str], ...]] = (
        ("train_pos", TRAIN_POS), ("train_annotated", TRAIN_ANNOTATED), ("ct_train_pos", CT_TRAIN_POS),
        ("ct_train_annotated", CT_TRAIN_ANNOTATED), ("cooc", COOC), ("cooc_den", COOC_DEN))

    def keep_groups(self, groups: set[str]) -> None:
        """Drops the counts and positives of parameter groups the update does not carry."""
        self.group_counts = {g: v for g, v in self.group_counts.items() if g in groups}
        self.group_positives = {g: v for g, v in self.group_positives.items() if g in groups}

    def to_metrics(self) -> dict[str, Any]:
        out: dict[str, Any] = {NUM_EXAMPLES: self.num_examples}
        out.update({count_key(g): v for g, v in self.group_counts.items()})
        out.update({pos_key(g): v for g, v in self.group_positives.items()})
        out.update({key: getattr(self, attr) for attr, key in self._LISTS if getattr(self, attr) is not None})
        out.update({scope_key("n", p): v for p, v in self.views.items()})
        return _with_extra(out, self)

    @classmethod
    def typed(cls, key: str) -> bool:
        """Whether ``key`` is one of a typed field's (else it belongs in ``extra``)."""
        return (key == NUM_EXAMPLES or key in {k for _, k in cls._LISTS}
                or key.startswith((COUNT_PREFIX, POS_PREFIX, scope_key("n", ""))))

    @classmethod
    def from_metrics(cls, items: Mapping[str, Any]) -> TrainReply:
        """The reply in ``items``; ``ReplyError`` naming the key when one is missing (num-examples) or of the wrong
        type. Which keys a site must send for the groups it sent is ``server/validation.check_train_metrics``'s."""
        kind = cls.KIND
        if NUM_EXAMPLES not in items:
            raise ReplyError(f"{kind}: {NUM_EXAMPLES!r} is missing")
        reply = cls(_number(kind, NUM_EXAMPLES, items[NUM_EXAMPLES]))
        lists = {key: attr for attr, key in cls._LISTS}
        view = scope_key("n", "")
        for key, value in items.items():
            group = group_of(key)
            if key == NUM_EXAMPLES:
                continue
            if key.startswith(COUNT_PREFIX):
                reply.group_counts[group] = _number(kind, key, value)
            elif key.startswith(POS_PREFIX):
                reply.group_positives[group] = _numbers(kind, key, value)
            elif key in lists:
                setattr(reply, lists[key], _numbers(kind, key, value))
            elif key.startswith(view):
                reply.views[key[len(view):]] = _number(kind, key, value)
            else:
                reply.extra[key] = value
        return reply


@dataclass
class ScopeSummary:
    """One evaluation scope (a view, or ``all``) of a site's summary: per class its exact AP / AUROC / F1 (NaN where
    withheld), the score histograms (C x bins, flattened) and the images behind them."""

    hist_pos: list[int]
    hist_neg: list[int]
    ap: list[float]
    auroc: list[float]
    f1: list[float]
    n: int
    withheld: int | None = None  # classes withheld under the small-count rule (absent: 0)
    band_map: list[float] | None = None  # head / medium / tail mAP before the small-count rule (class-bands runs)

    def to_metrics(self, scope: str, prefix: str = "") -> dict[str, Any]:
        return {scope_key(name, scope, prefix): getattr(self, name) for name in SCOPE_FIELDS
                if getattr(self, name) is not None}

    @classmethod
    def from_metrics(cls, items: Mapping[str, Any], scope: str, prefix: str = "") -> ScopeSummary:
        kind = f"evaluation summary scope {prefix}{scope}"
        fields = {}
        for name in SCOPE_FIELDS:
            key = scope_key(name, scope, prefix)
            if key not in items:
                if name in ("withheld", "band_map"):
                    continue
                raise ReplyError(f"{kind}: {key!r} is missing")
            fields[name] = (_numbers if name.startswith(("hist", "ap", "auroc", "f1", "band")) else _number)(
                kind, key, items[key])
        return cls(**fields)


@dataclass
class EvalSummary:
    """A site's evaluation summary (an evaluate reply's metric record, or a train reply's ``evaluation``): its
    radiograph scopes (none at a CT site or when withheld), the router's tally, timing and DP release; ``extra``:
    the families' keys (``zs.``, ``ct.``, ``box_``, ``loc_``), read by their server modules."""

    num_examples: Number | None = None
    scopes: dict[str, ScopeSummary] = field(default_factory=dict)
    router_correct: int | None = None
    router_total: int | None = None
    eval_seconds: float | None = None
    dp_evaluation: int | None = None
    dp_epsilon: float | None = None
    dp_delta: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    KIND: ClassVar[str] = "evaluation summary"
    _SCALARS: ClassVar[tuple[tuple[str, str], ...]] = (
        ("num_examples", NUM_EXAMPLES), ("router_correct", ROUTER_CORRECT), ("router_total", ROUTER_TOTAL),
        ("eval_seconds", EVAL_SECONDS), ("dp_evaluation", DP_EVALUATION), ("dp_epsilon", DP_EPSILON),
        ("dp_delta", DP_DELTA))

    def require(self, attr: str) -> Any:
        """The value of field ``attr``; ``ReplyError`` naming its key when the summary did not carry it."""
        value = getattr(self, attr)
        if value is None:
            raise ReplyError(f"{self.KIND}: {dict(self._SCALARS)[attr]!r} is missing")
        return value

    def to_metrics(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for scope, summary in self.scopes.items():
            out.update(summary.to_metrics(scope))
        out.update({key: getattr(self, attr) for attr, key in self._SCALARS if getattr(self, attr) is not None})
        return _with_extra(out, self)

    @classmethod
    def typed(cls, key: str) -> bool:
        """Whether ``key`` is one of a typed field's: a scalar's, or a scope field's without a family prefix."""
        name, dot, scope = key.partition(".")
        return key in {k for _, k in cls._SCALARS} or (bool(dot) and name in SCOPE_FIELDS and "." not in scope)

    @classmethod
    def from_metrics(cls, items: Mapping[str, Any]) -> EvalSummary:
        """The summary in ``items``: each scope whose image count ``n.<scope>`` is present is read whole
        (``ReplyError`` naming a missing or mistyped key)."""
        out = cls(**{attr: _number(cls.KIND, key, items[key]) for attr, key in cls._SCALARS if key in items})
        view = scope_key("n", "")
        scopes = [k[len(view):] for k in items if k.startswith(view) and "." not in k[len(view):]]
        out.scopes = {s: ScopeSummary.from_metrics(items, s) for s in scopes}
        taken = {key for _, key in cls._SCALARS}
        taken |= {scope_key(name, s) for s in out.scopes for name in SCOPE_FIELDS}
        out.extra = {k: v for k, v in items.items() if k not in taken}
        return out


class MetricRow(NamedTuple):
    """A row of the registry's metrics table (server/registry): ``site`` None for a pooled figure, ``projection``
    a view, ``all`` or a family's scope, ``class_name`` None for a figure over classes, ``n`` the count behind it."""

    site: str | None
    projection: str
    class_name: str | None
    name: str
    value: float | None
    n: int | None = None
