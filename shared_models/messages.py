"""Names both sides of a fedchest message agree on (the ServerApp in server/, the ClientApp in client/): the
records and config keys that are not Flower's own. One place, so neither side spells them from memory."""

from __future__ import annotations

EVALUATE_FIRST = "evaluate-first"
"""Train config key: the round of the model the message carries, to be evaluated before training on it (the run's
``evaluate-with-train``; 0 or absent: no evaluation): a round is one exchange instead of two."""

EVALUATION = "evaluation"
"""The train reply's MetricRecord holding that evaluation: the same summary an evaluate reply carries."""

STAGE_ERRORS = "stage-errors"
"""A train reply's ConfigRecord of the stages that failed when it also evaluated: ``train`` and / or ``evaluate``
-> the site's redacted reason (what an error reply of that stage would have said)."""
