"""Model definitions and the one factory that builds them from configuration.

Names load on first use (PEP 562): importing a submodule (e.g. ``shared_models.networks.experts``) does not import
the factory, timm and every head it builds."""

from __future__ import annotations

from shared_models.lazy import lazy_exports

_WHERE = {
    "PROJECTIONS": "experts", "RoutedExperts": "experts", "projection_index": "experts",
    **{name: "factory" for name in ("available_presets", "WeightsError", "build_model", "classifier_keys",
                                    "float_state_keys", "group_keys", "norm_keys", "load_preset", "parameter_group",
                                    "parse_weights", "radiograph_state")},
}
__all__ = sorted(_WHERE)

__getattr__ = lazy_exports(__name__, _WHERE)
