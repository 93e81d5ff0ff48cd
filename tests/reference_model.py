"""Tiny random gpt-oss checkpoints, loaded two independent ways (tests only; uses torch).

`write_tiny_checkpoint` writes a random checkpoint with the shared writer (gpt_oss_native.random_checkpoint).
Our side loads it with gpt_oss_native.checkpoint; `reference_logits` loads the same files with the official
reference's own loader (gpt_oss.torch.model.Transformer.from_checkpoint: safetensors, MXFP4 dequantisation)
and runs it in float32. Nothing of ours sits between the file and the reference's numbers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from gpt_oss_native import _C
from gpt_oss_native.checkpoint import load_checkpoint
from gpt_oss_native.config import ModelConfig
from gpt_oss_native.random_checkpoint import write_random_checkpoint

# Small defaults: two layers (one sliding, one full), GQA, a short window.
SMALL = {
    "num_layers": 2,
    "num_experts": 4,
    "experts_per_token": 2,
    "vocab_size": 256,
    "hidden_size": 64,
    "intermediate_size": 64,
    "head_dim": 16,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "sliding_window": 8,
}


def small_config(**overrides: float) -> ModelConfig:
    return ModelConfig(**(SMALL | overrides))


def write_tiny_checkpoint(path: Path, config: ModelConfig, seed: int, layout: str = "original") -> Path:
    return write_random_checkpoint(path, config, layout=layout, seed=seed)


def load_model(path: Path, **options: int) -> tuple[ModelConfig, _C.Model]:
    """Our CPU model of a checkpoint directory."""
    config, weights = load_checkpoint(path, progress=False)
    return config, _C.Model(config.to_native(), weights, backend="cpu", **options)


def reference_logits(path: Path, tokens: np.ndarray) -> np.ndarray:
    """Logits [len(tokens), vocab] of the official reference holding the official-layout checkpoint at `path`,
    computed in float32 (its weights are bf16 / MXFP4, so widening them is exact)."""
    import torch
    from gpt_oss.torch.model import Transformer

    model = Transformer.from_checkpoint(str(path), device=torch.device("cpu")).float()
    with torch.inference_mode():
        return model(torch.from_numpy(tokens.astype(np.int64))).numpy()
