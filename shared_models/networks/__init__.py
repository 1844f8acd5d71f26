"""Model definitions and the one factory that builds them from configuration."""

from shared_models.networks.experts import PROJECTIONS, RoutedExperts, projection_index
from shared_models.networks.factory import (
    available_presets,
    build_model,
    classifier_keys,
    group_keys,
    load_preset,
    parameter_group,
)

__all__ = [
    "PROJECTIONS",
    "RoutedExperts",
    "available_presets",
    "build_model",
    "classifier_keys",
    "group_keys",
    "load_preset",
    "parameter_group",
    "projection_index",
]
