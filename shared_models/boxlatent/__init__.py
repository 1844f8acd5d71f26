"""Box-latent head (MedSAM2-CXR Box-Latent, read faithfully by construction since the
paper's objective is not public): each image is a box (centre c, radius r) in a latent space on a frozen backbone;
training classifies samples drawn inside the box, test time averages N samples (BL-TTA), the radius is an
out-of-distribution score, boxes index similar cases. Framework-free (no flwr)."""

from shared_models.boxlatent.calibration import (brier_score, confidence_tier, expected_calibration_error,
                                                 fit_temperature)
from shared_models.boxlatent.config import BoxSpec, box_spec
from shared_models.boxlatent.head import BoxHead, BoxOutput
from shared_models.boxlatent.losses import box_gap, box_loss, volume_regulariser
from shared_models.boxlatent.model import BoxLatentNet, build_box_model
from shared_models.boxlatent.retrieval import CaseIndex

__all__ = ["BoxHead", "BoxLatentNet", "BoxOutput", "BoxSpec", "CaseIndex", "box_gap", "box_loss", "box_spec",
           "brier_score", "build_box_model", "confidence_tier", "expected_calibration_error", "fit_temperature",
           "volume_regulariser"]
