"""Differential privacy for the site's training: DP-compatible networks, DP-SGD with exact per-sample
gradients, and privacy accounting. Framework-free (no flwr): the site's ledger and policy live in client/.

Names load on first use (PEP 562), so a caller that needs only the accountant (the site CLI's `check`, the
privacy ledger) does not import torch and the networks."""

from __future__ import annotations

from shared_models.lazy import lazy_exports

_WHERE = {
    "ACCOUNTANTS": "accountant", "epsilon": "accountant",
    "cross_sample_layers": "compat", "is_dp_compatible": "compat", "make_dp_compatible": "compat",
    "ENGINES": "dpsgd", "DPSettings": "dpsgd", "clipped_gradient_sum": "dpsgd", "dp_schedule": "dpsgd",
    "engine_for": "dpsgd", "privatise": "dpsgd",
}
__all__ = sorted(_WHERE)

__getattr__ = lazy_exports(__name__, _WHERE)
