"""Differential privacy for the site's training: DP-compatible networks, DP-SGD with exact per-sample
gradients, and privacy accounting. Framework-free (no flwr): the site's ledger and policy live in client/."""

from shared_models.privacy.accountant import ACCOUNTANTS, epsilon
from shared_models.privacy.compat import cross_sample_layers, is_dp_compatible, make_dp_compatible
from shared_models.privacy.dpsgd import (ENGINES, DPSettings, clipped_gradient_sum, dp_schedule, engine_for,
                                        privatise)

__all__ = ["ACCOUNTANTS", "DPSettings", "ENGINES", "engine_for", "clipped_gradient_sum", "cross_sample_layers", "epsilon",
           "dp_schedule", "is_dp_compatible", "make_dp_compatible", "privatise"]
