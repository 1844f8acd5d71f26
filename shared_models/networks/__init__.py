"""Model definitions and the one factory that builds them from configuration."""

from shared_models.networks.experts import PROJECTIONS, RoutedExperts, projection_index
from shared_models.networks.factory import (
    available_presets,
    WeightsError,
    build_model,
    classifier_keys,
    float_state_keys,
    group_keys,
    load_preset,
    parameter_group,
    parse_weights,
    radiograph_state,
)

__all__ = [
    "PROJECTIONS",
    "RoutedExperts",
    "WeightsError",
    "available_presets",
    "build_model",
    "classifier_keys",
    "float_state_keys",
    "group_keys",
    "load_preset",
    "parameter_group",
    "parse_weights",
    "radiograph_state",
    "projection_index",
]
