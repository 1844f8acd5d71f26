"""Zero-shot image-text branch (CheXzero-style, CXR-LT 2026 task 2): contrastive losses, a validated prompt
bank with a prompt-generator interface, the frozen MiniLM text encoder, and CheXzero's positive-vs-negative
scoring. Framework-free (no flwr)."""

from shared_models.zeroshot.losses import clip_loss, siglip_loss
from shared_models.zeroshot.prompts import (PromptBank, PromptError, PromptGenerator, TemplatePromptGenerator,
                                            load_prompt_bank)
from shared_models.zeroshot.scoring import class_embeddings, zero_shot_probabilities

__all__ = ["PromptBank", "PromptError", "PromptGenerator", "TemplatePromptGenerator", "class_embeddings",
           "clip_loss", "load_prompt_bank", "siglip_loss", "zero_shot_probabilities"]
