"""The CPU backend's logits equal the official reference's (gpt_oss.torch.model, float32), position by
position, on tiny random checkpoints of many shapes: relative L2 ≤ 1e-4 (DESIGN.md's CPU tolerance)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from reference_model import load_model, reference_logits, small_config, write_tiny_checkpoint

TOLERANCE = 1e-4

# (config overrides, sequence length, seed). Every case has >= 2 layers, so sliding (even) and full (odd)
# layers both run, and the sequences run past the window.
CASES = {
    "small-gqa": ({}, 40, 0),
    "8-experts-top4": (
        {"num_layers": 3, "num_experts": 8, "experts_per_token": 4, "hidden_size": 96, "intermediate_size": 64,
         "head_dim": 32, "num_attention_heads": 8, "num_key_value_heads": 2, "sliding_window": 16,
         "vocab_size": 512},
        70,
        1,
    ),
    # Multi-head (kv = q heads), head_dim 64, a window of 4, and more tokens than one prefill chunk (256).
    "mha-long-prefill": (
        {"num_experts": 6, "experts_per_token": 3, "hidden_size": 128, "intermediate_size": 96, "head_dim": 64,
         "num_attention_heads": 6, "num_key_value_heads": 6, "sliding_window": 4},
        300,
        2,
    ),
    # Multi-query, one expert per token, no sliding window at all.
    "mqa-top1-no-window": (
        {"num_layers": 4, "num_experts": 3, "experts_per_token": 1, "hidden_size": 32, "intermediate_size": 32,
         "head_dim": 8, "num_attention_heads": 2, "num_key_value_heads": 1, "sliding_window": 0,
         "vocab_size": 128},
        33,
        3,
    ),
    # Odd sizes: 3 heads of 10 (attention width 30, not a multiple of the SIMD width), window 5, no YaRN.
    "odd-widths-no-yarn": (
        {"intermediate_size": 160, "head_dim": 10, "num_attention_heads": 3, "num_key_value_heads": 1,
         "sliding_window": 5, "rope_scaling_factor": 1.0, "vocab_size": 100},
        24,
        4,
    ),
    # Harmony's full vocabulary (the unembedding spans many thread chunks).
    "full-vocab": ({"vocab_size": 201088}, 20, 6),
    # Every expert routed, a long window, a short YaRN original context (the ramp matters at short range).
    "all-experts-short-yarn": (
        {"num_experts": 2, "experts_per_token": 2, "initial_context_length": 512, "sliding_window": 32},
        64,
        5,
    ),
}


def relative_errors(ours: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Relative L2 error of each position's logits."""
    return np.linalg.norm(ours - reference, axis=-1) / np.linalg.norm(reference, axis=-1)


@pytest.mark.parametrize(("overrides", "length", "seed"), CASES.values(), ids=CASES.keys())
def test_logits_match_reference(tmp_path: Path, overrides: dict, length: int, seed: int) -> None:
    path = write_tiny_checkpoint(tmp_path, small_config(**overrides), seed)
    config, model = load_model(path, max_context=512)
    tokens = np.random.default_rng(seed + 100).integers(0, config.vocab_size, length).astype(np.int32)

    seq = model.new_sequence()
    ours = model.forward(seq, tokens, all_logits=True)
    reference = reference_logits(path, tokens)

    assert ours.shape == reference.shape == (length, config.vocab_size)
    errors = relative_errors(ours, reference)
    print(f"max relative L2 error {errors.max():.2e} (position {errors.argmax()})")
    assert errors.max() <= TOLERANCE, f"position {errors.argmax()}: relative L2 error {errors.max():.2e}"
    assert model.sequence_length(seq) == length


def test_hugging_face_layout_gives_the_same_logits(tmp_path: Path) -> None:
    """The same seed in the HF layout (q/k/v split, renamed experts) runs to the reference's logits."""
    config = small_config()
    official = write_tiny_checkpoint(tmp_path / "original", config, seed=6)
    hf = write_tiny_checkpoint(tmp_path / "hf", config, seed=6, layout="hf")
    tokens = np.random.default_rng(6).integers(0, config.vocab_size, 20).astype(np.int32)
    _, model = load_model(hf)
    errors = relative_errors(model.forward(model.new_sequence(), tokens, all_logits=True),
                             reference_logits(official, tokens))
    assert errors.max() <= TOLERANCE


def test_last_logits_only_is_the_last_row(tmp_path: Path) -> None:
    config, model = load_model(write_tiny_checkpoint(tmp_path, small_config(), seed=7))
    tokens = np.arange(20, dtype=np.int32)
    every = model.forward(model.new_sequence(), tokens, all_logits=True)
    last = model.forward(model.new_sequence(), tokens)
    assert last.shape == (config.vocab_size,)
    # One row runs the single-token kernels, 20 rows the tiled ones: only the summation order differs.
    assert relative_errors(last, every[-1]) <= 1e-6


def test_a_nan_gate_row_gives_nan_logits_as_the_reference_does(tmp_path: Path) -> None:
    """A NaN in one expert's gate row makes its router logit NaN on every token. The reference's top-k ranks NaN
    first and every logit after it is NaN; ours must be NaN too (not a route around the expert, an answer no
    reference gives), in the prefill and in a single token's step, and sampling must fail with a clear error."""
    import torch
    from safetensors.torch import load_file, save_file

    config = small_config()
    path = write_tiny_checkpoint(tmp_path, config, seed=8)
    file = path / "model.safetensors"
    tensors = load_file(file)
    tensors["block.1.mlp.gate.weight"][2, 5] = torch.nan
    save_file(tensors, file, metadata={"format": "pt"})
    tokens = np.random.default_rng(8).integers(0, config.vocab_size, 12).astype(np.int32)

    assert np.isnan(reference_logits(path, tokens)).all()
    _, model = load_model(path)
    assert np.isnan(model.forward(model.new_sequence(), tokens, all_logits=True)).all()
    assert np.isnan(model.forward(model.new_sequence(), tokens[:1])).all()
    with pytest.raises(RuntimeError, match="NaN"):
        model.forward_sample(model.new_sequence(), tokens, temperature=0.0)
