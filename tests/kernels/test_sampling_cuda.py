"""The device sampler (csrc/cuda/sampling.cu) against the CPU sampler `_C.sample_logits` (the law, csrc/cpu/
sampling.cpp) and a float64 NumPy model of that law: exact argmax, the same token for the same (logits, seed,
draw) except where u falls within rounding of a CDF boundary, and empirical frequencies."""

from __future__ import annotations

import numpy as np
import pytest
from gpt_oss_native import _C
from weights_reference import sampling_law, uniform_draw

if not _C.cuda_devices():
    pytest.skip("needs an NVIDIA GPU and a CUDA build of _C", allow_module_level=True)

pytestmark = pytest.mark.cuda
K = _C.cuda_kernels
VOCAB = 201088


def gpu_tokens(logits, temperature, top_p, top_k, seed, draws) -> np.ndarray:
    return K.sample(logits, temperature, top_p, top_k, seed, np.asarray(draws, dtype=np.uint64))


def test_greedy_is_exact_argmax_lowest_index() -> None:
    rng = np.random.default_rng(0)
    for trial in range(5):
        logits = (rng.standard_normal(VOCAB) * 4).astype(np.float32)
        if trial >= 2:  # ties at the top: the lowest index wins
            top = rng.choice(VOCAB, size=5, replace=False)
            logits[top] = logits.max() + 1
        token = gpu_tokens(logits, 0.0, 1.0, 0, 0, [0])[0]
        assert token == int(np.argmax(logits)) == _C.sample_logits(logits, 0.0, 1.0, 0, 0, 0)


def near_boundary(logits, temperature, top_p, top_k, seed, draw) -> bool:
    """True when u lies within rounding (1e-6) of a CDF step of the law, where CPU and GPU may differ."""
    _, cum = sampling_law(logits, temperature, top_p, top_k)
    u = uniform_draw(seed, draw)
    return bool(np.min(np.abs(cum - u)) < 1e-6)


@pytest.mark.parametrize(
    ("temperature", "top_p", "top_k"),
    [(1.0, 1.0, 0), (0.7, 0.9, 0), (1.3, 0.5, 0), (1.0, 1.0, 40), (0.8, 0.95, 1000), (1.0, 1.0, 1), (2.0, 0.99, 7)],
)
def test_same_token_as_cpu_sampler(temperature: float, top_p: float, top_k: int) -> None:
    rng = np.random.default_rng(int(temperature * 100) + int(top_p * 1000) + top_k)
    logits = (rng.standard_normal(VOCAB) * 3).astype(np.float32)
    seed = int(rng.integers(0, 2**63))
    draws = list(range(64))
    gpu = gpu_tokens(logits, temperature, top_p, top_k, seed, draws)
    cpu = [_C.sample_logits(logits, temperature, top_p, top_k, seed, d) for d in draws]
    mismatches = [d for d in draws if gpu[d] != cpu[d]]
    assert all(near_boundary(logits, temperature, top_p, top_k, seed, d) for d in mismatches), mismatches
    assert len(mismatches) <= 1


def test_tied_logits_follow_index_order() -> None:
    """Many exactly equal logits: both samplers order ties by index, so they still agree draw by draw."""
    rng = np.random.default_rng(9)
    logits = rng.integers(-3, 3, VOCAB).astype(np.float32)
    seed = 42
    draws = list(range(32))
    for temperature, top_p, top_k in [(1.0, 1.0, 0), (1.0, 0.3, 0), (0.5, 1.0, 5000)]:
        gpu = gpu_tokens(logits, temperature, top_p, top_k, seed, draws)
        cpu = [_C.sample_logits(logits, temperature, top_p, top_k, seed, d) for d in draws]
        assert gpu.tolist() == cpu


def test_flat_distribution_reaches_the_tail() -> None:
    """top_p = 1 over 201088 equal logits: the draw is the token at rank floor(u · vocab) in index order."""
    logits = np.zeros(VOCAB, np.float32)
    draws = list(range(16))
    gpu = gpu_tokens(logits, 1.0, 1.0, 0, 7, draws)
    expect = [int(uniform_draw(7, d) * VOCAB) for d in draws]
    assert np.all(np.abs(gpu - np.array(expect)) <= 1)


def test_empirical_frequencies() -> None:
    logits = np.log(np.array([0.4, 0.25, 0.15, 0.1, 0.05, 0.03, 0.02], np.float64)).astype(np.float32)
    n = 4000
    for top_p, top_k in [(1.0, 0), (0.75, 0), (1.0, 3)]:
        order, cum = sampling_law(logits, 1.0, top_p, top_k)
        probs = np.diff(np.concatenate([[0.0], cum]))
        tokens = gpu_tokens(logits, 1.0, top_p, top_k, 123, range(n))
        assert set(tokens.tolist()) <= set(order.tolist())
        counts = np.array([(tokens == t).sum() for t in order])
        chi2 = float(np.sum((counts - n * probs) ** 2 / (n * probs)))
        assert chi2 < 30.0, (top_p, top_k, counts, n * probs)


def test_deterministic_and_seed_sensitive() -> None:
    rng = np.random.default_rng(1)
    logits = (rng.standard_normal(VOCAB) * 2).astype(np.float32)
    a = gpu_tokens(logits, 1.0, 0.95, 0, 5, range(32))
    b = gpu_tokens(logits, 1.0, 0.95, 0, 5, range(32))
    c = gpu_tokens(logits, 1.0, 0.95, 0, 6, range(32))
    assert a.tolist() == b.tolist() and a.tolist() != c.tolist()


def test_unusable_logits_give_minus_one() -> None:
    logits = np.zeros(1000, np.float32)
    logits[17] = np.nan
    assert gpu_tokens(logits, 1.0, 1.0, 0, 0, [0])[0] == -1
    assert gpu_tokens(logits, 0.0, 1.0, 0, 0, [0])[0] == -1
    assert gpu_tokens(np.full(1000, -np.inf, np.float32), 1.0, 1.0, 0, 0, [0])[0] == -1
    logits[17] = np.inf
    assert gpu_tokens(logits, 1.0, 1.0, 0, 0, [0])[0] == -1


@pytest.mark.parametrize("vocab", [1, 2, 33, 4097])
def test_small_vocabularies(vocab: int) -> None:
    rng = np.random.default_rng(vocab)
    logits = rng.standard_normal(vocab).astype(np.float32)
    draws = list(range(16))
    gpu = gpu_tokens(logits, 1.0, 0.9, 0, 3, draws)
    cpu = [_C.sample_logits(logits, 1.0, 0.9, 0, 3, d) for d in draws]
    assert gpu.tolist() == cpu
