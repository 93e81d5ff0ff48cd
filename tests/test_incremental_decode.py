"""Incremental use of one CPU model: prefill + decode (one token or uneven chunks at a time) equals one full
forward, past the sliding window; sequences are independent; bad use raises a clear error."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from reference_model import load_model, small_config, write_tiny_checkpoint

# Chunking changes nothing but summation order within fp32 (if that): far below the reference tolerance.
TOLERANCE = 1e-5
LENGTH = 45  # > 5 windows of 8, so the sliding layers' ring wraps several times


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Three layers: sliding, full, sliding.
    return write_tiny_checkpoint(tmp_path_factory.mktemp("incremental"), small_config(num_layers=3), seed=11)


@pytest.fixture(scope="module")
def tokens() -> np.ndarray:
    return np.random.default_rng(11).integers(0, 256, LENGTH).astype(np.int32)


@pytest.fixture(scope="module")
def full_logits(checkpoint: Path, tokens: np.ndarray) -> np.ndarray:
    _, model = load_model(checkpoint)
    return model.forward(model.new_sequence(), tokens, all_logits=True)


def assert_close(ours: np.ndarray, expected: np.ndarray) -> None:
    errors = np.linalg.norm(ours - expected, axis=-1) / np.linalg.norm(expected, axis=-1)
    assert errors.max() <= TOLERANCE, f"position {errors.argmax()}: relative L2 error {errors.max():.2e}"


def run_in_chunks(model, seq: int, tokens: np.ndarray, sizes: list[int]) -> np.ndarray:
    assert sum(sizes) == len(tokens)
    rows, start = [], 0
    for size in sizes:
        rows.append(model.forward(seq, tokens[start : start + size], all_logits=True))
        start += size
        assert model.sequence_length(seq) == start
    return np.concatenate(rows)


def test_prefill_then_one_token_at_a_time(checkpoint: Path, tokens: np.ndarray, full_logits: np.ndarray) -> None:
    _, model = load_model(checkpoint)
    seq = model.new_sequence()
    prefill = model.forward(seq, tokens[:5], all_logits=True)
    decoded = [model.forward(seq, tokens[i : i + 1]) for i in range(5, LENGTH)]
    assert_close(np.concatenate([prefill, np.stack(decoded)]), full_logits)


@pytest.mark.parametrize("sizes", [[3, 1, 7, 2, 11, 1, 15, 5], [9, 9, 9, 9, 9], [1] * 20 + [25], [44, 1]])
def test_uneven_chunks(checkpoint: Path, tokens: np.ndarray, full_logits: np.ndarray, sizes: list[int]) -> None:
    _, model = load_model(checkpoint)
    assert_close(run_in_chunks(model, model.new_sequence(), tokens, sizes), full_logits)


def test_sequences_are_independent(checkpoint: Path, tokens: np.ndarray, full_logits: np.ndarray) -> None:
    """Two sequences decoded in alternation, the other one holding different tokens, and a freed one whose id
    is reused: each matches its own full forward."""
    config, model = load_model(checkpoint, max_sequences=3)
    other_tokens = (tokens[::-1] + 1) % config.vocab_size
    other_full = model.forward(model.new_sequence(), other_tokens, all_logits=True)

    a, b = model.new_sequence(), model.new_sequence()
    rows_a, rows_b = [], []
    for i in range(LENGTH):
        rows_a.append(model.forward(a, tokens[i : i + 1]))
        rows_b.append(model.forward(b, other_tokens[i : i + 1]))
    assert_close(np.stack(rows_a), full_logits)
    assert_close(np.stack(rows_b), other_full)

    model.free_sequence(a)
    reused = model.new_sequence()
    assert reused == a
    assert model.sequence_length(reused) == 0
    assert_close(model.forward(reused, tokens, all_logits=True), full_logits)


def test_forward_sample_greedy_is_the_argmax(checkpoint: Path, tokens: np.ndarray, full_logits: np.ndarray) -> None:
    _, model = load_model(checkpoint)
    seq = model.new_sequence()
    token = model.forward_sample(seq, tokens, temperature=0.0)
    assert token == int(np.argmax(full_logits[-1]))
    assert model.sequence_length(seq) == LENGTH


def test_max_context_overflow_raises_and_keeps_the_sequence(checkpoint: Path, tokens: np.ndarray) -> None:
    _, model = load_model(checkpoint, max_context=16)
    seq = model.new_sequence()
    model.forward(seq, tokens[:10])
    with pytest.raises(ValueError, match="max_context"):
        model.forward(seq, tokens[10:17])
    assert model.sequence_length(seq) == 10
    model.forward(seq, tokens[10:16])  # exactly max_context still fits
    with pytest.raises(ValueError, match="max_context"):
        model.forward(seq, tokens[16:17])


def test_bad_sequence_ids_raise(checkpoint: Path, tokens: np.ndarray) -> None:
    _, model = load_model(checkpoint, max_sequences=2)
    seq = model.new_sequence()
    for bad in (-1, 1, 2, 1000):
        with pytest.raises(ValueError, match="does not exist"):
            model.forward(bad, tokens[:3])
        with pytest.raises(ValueError, match="does not exist"):
            model.sequence_length(bad)
    model.free_sequence(seq)
    with pytest.raises(ValueError, match="does not exist"):
        model.forward(seq, tokens[:3])
    with pytest.raises(ValueError, match="does not exist"):
        model.free_sequence(seq)


def test_too_many_sequences_raise(checkpoint: Path) -> None:
    _, model = load_model(checkpoint, max_sequences=2)
    first, _ = model.new_sequence(), model.new_sequence()
    with pytest.raises(RuntimeError, match="max_sequences"):
        model.new_sequence()
    model.free_sequence(first)
    assert model.new_sequence() == first


def test_bad_tokens_raise(checkpoint: Path) -> None:
    config, model = load_model(checkpoint)
    seq = model.new_sequence()
    for bad in ([config.vocab_size], [-1], [0, 5, config.vocab_size + 7]):
        with pytest.raises(ValueError, match="outside the vocabulary"):
            model.forward(seq, np.array(bad, dtype=np.int32))
    with pytest.raises(ValueError, match="at least one token"):
        model.forward(seq, np.array([], dtype=np.int32))
    assert model.sequence_length(seq) == 0


def test_thread_count_does_not_change_the_numbers(checkpoint: Path, tokens: np.ndarray) -> None:
    """Each output row is summed by one thread in a fixed order, so logits are bitwise reproducible."""
    results = []
    for threads in (1, 2, 3):
        _, model = load_model(checkpoint, num_threads=threads)
        seq = model.new_sequence()
        prefill = model.forward(seq, tokens[:30], all_logits=True)
        results.append(np.concatenate([prefill, model.forward(seq, tokens[30:], all_logits=True)]))
    for other in results[1:]:
        np.testing.assert_array_equal(other, results[0])


def test_window_larger_than_max_context(tmp_path: Path) -> None:
    """A sliding ring is capped at max_context; with no wrap-around it must still see every earlier key."""
    path = write_tiny_checkpoint(tmp_path, small_config(sliding_window=64), seed=12)
    tokens = np.random.default_rng(12).integers(0, 256, 24).astype(np.int32)
    _, full_model = load_model(path)
    full = full_model.forward(full_model.new_sequence(), tokens, all_logits=True)
    _, model = load_model(path, max_context=24)
    assert_close(run_in_chunks(model, model.new_sequence(), tokens, [5] + [1] * 19), full)


def test_long_decode_wraps_the_ring_and_crosses_pages(checkpoint: Path) -> None:
    """300 tokens, decoded one by one: the sliding rings (window + one 256-token chunk) wrap and the full
    layers' caches cross a 256-token page; the one-shot forward runs as two chunks (256 + 44)."""
    tokens = np.random.default_rng(13).integers(0, 256, 300).astype(np.int32)
    _, model = load_model(checkpoint)
    full = model.forward(model.new_sequence(), tokens, all_logits=True)
    seq = model.new_sequence()
    rows = [model.forward(seq, tokens[:3], all_logits=True)]
    rows += [model.forward(seq, tokens[i : i + 1], all_logits=True) for i in range(3, 300)]
    assert_close(np.concatenate(rows), full)
