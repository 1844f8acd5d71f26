"""Text-conditioned image synthesis for tail classes (TRCGL-Net's generator), CPU-sized."""

from shared_models.synthesis.diffusion import ConditionalUNet, DiffusionSchedule, ddim_sample, diffusion_loss

__all__ = ["ConditionalUNet", "DiffusionSchedule", "ddim_sample", "diffusion_loss"]
