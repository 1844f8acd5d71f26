"""Prompt-driven localisation (ChEX-style): boxes for a text prompt, their losses and metrics."""

from shared_models.localization.boxes import SetLossWeights, match, set_loss
from shared_models.localization.config import LocRunSpec, loc_spec
from shared_models.localization.metrics import BoxTally, average_precision
from shared_models.localization.model import LOC_PREFIX, PromptLocalizer, loc_parameter_group

__all__ = ["BoxTally", "LOC_PREFIX", "LocRunSpec", "PromptLocalizer", "SetLossWeights", "average_precision",
           "loc_parameter_group", "loc_spec", "match", "set_loss"]
