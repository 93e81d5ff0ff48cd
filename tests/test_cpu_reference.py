"""The CPU backend's logits equal the official reference's (gpt_oss.torch.model, float32), position by
position, on tiny random models of many shapes: relative L2 ≤ 1e-4 (DESIGN.md's CPU tolerance)."""

from __future__ import annotations

import numpy as np
import pytest

from gpt_oss_native import _C
from reference_model import model_config, random_weights, reference_logits

TOLERANCE = 1e-4

# (config overrides, sequence length, seed). Every case has >= 2 layers, so sliding (even) and full (odd)
# layers both run, and most sequences run past the window.
CASES = [
    (dict(), 40, 0),
    (dict(num_layers=3, num_experts=8, experts_per_token=4, hidden_size=96, intermediate_size=64, head_dim=32,
          num_attention_heads=8, num_key_value_heads=2, sliding_window=16, vocab_size=512), 70, 1),
    # Multi-head (kv = q heads), head_dim 64, a window of 4, and more tokens than one prefill chunk (256).
    (dict(num_experts=6, experts_per_token=3, hidden_size=128, intermediate_size=96, head_dim=64,
          num_attention_heads=6, num_key_value_heads=6, sliding_window=4), 300, 2),
    # Multi-query, one expert per token, no sliding window at all.
    (dict(num_layers=4, num_experts=3, experts_per_token=1, hidden_size=32, intermediate_size=32, head_dim=8,
          num_attention_heads=2, num_key_value_heads=1, sliding_window=0, vocab_size=128), 33, 3),
    # Odd sizes: 3 heads of 10 (attention width 30, not a multiple of the SIMD width), window 5, no YaRN.
    (dict(hidden_size=64, intermediate_size=160, head_dim=10, num_attention_heads=3, num_key_value_heads=1,
          sliding_window=5, rope_scaling_factor=1.0, vocab_size=100), 24, 4),
    # Every expert routed, a long window and a small YaRN original context (the ramp matters at short range).
    (dict(num_layers=2, num_experts=2, experts_per_token=2, initial_context_length=512, sliding_window=32), 64, 5),
]


def relative_errors(ours: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Relative L2 error of each position's logits."""
    return np.linalg.norm(ours - reference, axis=-1) / np.linalg.norm(reference, axis=-1)


@pytest.mark.parametrize(("overrides", "length", "seed"), CASES)
def test_logits_match_reference(overrides: dict, length: int, seed: int) -> None:
    config = model_config(**overrides)
    weights = random_weights(config, seed)
    tokens = np.random.default_rng(seed + 100).integers(0, config["vocab_size"], length).astype(np.int32)

    model = _C.Model(config, weights, backend="cpu", max_context=512)
    seq = model.new_sequence()
    ours = model.forward(seq, tokens, all_logits=True)
    reference = reference_logits(config, weights, tokens)

    assert ours.shape == reference.shape == (length, config["vocab_size"])
    errors = relative_errors(ours, reference)
    print(f"max relative L2 error {errors.max():.2e} (position {errors.argmax()})")
    assert errors.max() <= TOLERANCE, f"position {errors.argmax()}: relative L2 error {errors.max():.2e}"
    assert model.sequence_length(seq) == length


def test_last_logits_only_is_the_last_row() -> None:
    config = model_config()
    weights = random_weights(config, 7)
    tokens = np.arange(20, dtype=np.int32)
    model = _C.Model(config, weights)
    every = model.forward(model.new_sequence(), tokens, all_logits=True)
    last = model.forward(model.new_sequence(), tokens)
    assert last.shape == (config["vocab_size"],)
    np.testing.assert_array_equal(last, every[-1])
