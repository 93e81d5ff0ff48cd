"""The device sampler (csrc/cuda/sampling.cu) against the CPU sampler `_C.sample_logits` (the law, csrc/cpu/
sampling.cpp) and its float64 NumPy model (sampling_law.py): exact argmax, the same token for the same (logits,
seed, draw) except where two Gumbel-max keys are within rounding of each other, and empirical frequencies."""

from __future__ import annotations

import numpy as np
import pytest
from gpt_oss_native import _C
from sampling_law import kept_set, law_token

if not _C.cuda_devices():
    pytest.skip("needs an NVIDIA GPU and a CUDA build of _C", allow_module_level=True)

pytestmark = pytest.mark.cuda
K = _C.cuda_kernels
VOCAB = 201088


def gpu_tokens(logits, temperature, top_p, top_k, seed, draws) -> np.ndarray:
    return K.sample(logits, temperature, top_p, top_k, seed, np.asarray(draws, dtype=np.uint64))


def nucleus_margin(logits: np.ndarray, temperature: float, top_p: float, top_k: int) -> float:
    """How far top_p is from every prefix mass of the top_k in descending order: the device's masses (fp32 exp,
    ~1e-7 relative; 2^-40 truncation, ≤ 2e-7 of the total) can only move the nucleus boundary where this is
    below ~1e-6."""
    if top_p >= 1.0:
        return np.inf
    order = np.lexsort((np.arange(logits.size), -logits.astype(np.float64)))
    if 0 < top_k < logits.size:
        order = order[:top_k]
    p = np.exp((logits[order].astype(np.float64) - logits[order[0]]) / np.float32(temperature))
    return float(np.min(np.abs(np.cumsum(p / p.sum()) - np.float32(top_p))))


def assert_same_tokens(logits, temperature, top_p, top_k, seed, draws) -> None:
    """The device's token is the CPU's for every draw; where they differ, both must be within rounding of the
    best key (sampling_law.NEAR_TIE), and that may happen at most once."""
    assert nucleus_margin(logits, temperature, top_p, top_k) > 1e-6, "pick logits whose nucleus is not fragile"
    gpu = gpu_tokens(logits, temperature, top_p, top_k, seed, draws)
    near_ties = 0
    for draw, token in zip(draws, gpu.tolist(), strict=True):
        cpu = _C.sample_logits(logits, temperature, top_p, top_k, seed, draw)
        if token != cpu:
            _, near = law_token(logits, temperature, top_p, top_k, seed, draw)
            assert token in near and cpu in near, (draw, token, cpu, near)
            near_ties += 1
    assert near_ties <= 1


def test_greedy_is_exact_argmax_lowest_index() -> None:
    rng = np.random.default_rng(0)
    for trial in range(5):
        logits = (rng.standard_normal(VOCAB) * 4).astype(np.float32)
        if trial >= 2:  # ties at the top: the lowest index wins
            top = rng.choice(VOCAB, size=5, replace=False)
            logits[top] = logits.max() + 1
        token = gpu_tokens(logits, 0.0, 1.0, 0, 0, [0])[0]
        assert token == int(np.argmax(logits)) == _C.sample_logits(logits, 0.0, 1.0, 0, 0, 0)


@pytest.mark.parametrize(
    ("temperature", "top_p", "top_k"),
    [(1.0, 1.0, 0), (0.7, 1.0, 0), (1.5, 1.0, 0), (0.7, 0.9, 0), (1.3, 0.5, 0), (1.0, 1.0, 40), (0.8, 0.95, 1000),
     (1.0, 1.0, 1), (2.0, 0.99, 7)],
)
def test_same_token_as_cpu_sampler(temperature: float, top_p: float, top_k: int) -> None:
    rng = np.random.default_rng(int(temperature * 100) + int(top_p * 1000) + top_k)
    logits = (rng.standard_normal(VOCAB) * 3).astype(np.float32)
    seed = int(rng.integers(0, 2**63))
    assert_same_tokens(logits, temperature, top_p, top_k, seed, list(range(64)))


def test_the_cpu_agrees_with_the_float64_law() -> None:
    """The reference the device is held to is itself the law (test_sampling_native checks more of it)."""
    logits = (np.random.default_rng(2).standard_normal(VOCAB) * 3).astype(np.float32)
    for draw in range(4):
        expected, _ = law_token(logits, 1.0, 1.0, 0, 77, draw)
        assert gpu_tokens(logits, 1.0, 1.0, 0, 77, [draw])[0] == expected == _C.sample_logits(logits, 1.0, 1.0, 0,
                                                                                                 77, draw)


def test_tied_logits_follow_index_order() -> None:
    """Many exactly equal logits: both samplers cut ties by index, so they still agree draw by draw."""
    rng = np.random.default_rng(9)
    logits = rng.integers(-3, 3, VOCAB).astype(np.float32)
    for temperature, top_p, top_k in [(1.0, 1.0, 0), (1.0, 0.3, 0), (0.5, 1.0, 5000)]:
        assert_same_tokens(logits, temperature, top_p, top_k, 42, list(range(32)))


def test_equal_keys_go_to_the_lower_index_across_the_cluster() -> None:
    """Logits so large that the Gumbel noise vanishes in their double ulp: equal logits make equal keys, held by
    different CTAs of the cluster, and the lowest index must win."""
    logits = np.zeros(VOCAB, np.float32)
    logits[[VOCAB - 1, 100_000, 5]] = 1e20
    logits[3] = np.nextafter(np.float32(1e20), np.float32(0))
    assert gpu_tokens(logits, 1.0, 1.0, 0, 3, range(8)).tolist() == [5] * 8
    assert gpu_tokens(logits, 1.0, 1.0, 2, 3, range(8)).tolist() == [5] * 8  # top_k 2 keeps 5 and 100000


def test_flat_distribution_reaches_the_tail() -> None:
    """201088 equal logits: the token is the one with the largest noise, anywhere in the vocabulary."""
    logits = np.zeros(VOCAB, np.float32)
    draws = list(range(16))
    gpu = gpu_tokens(logits, 1.0, 1.0, 0, 7, draws)
    assert gpu.tolist() == [law_token(logits, 1.0, 1.0, 0, 7, d)[0] for d in draws]
    assert gpu.max() > VOCAB // 2


def test_empirical_frequencies() -> None:
    logits = np.log(np.array([0.4, 0.25, 0.15, 0.1, 0.05, 0.03, 0.02], np.float64)).astype(np.float32)
    n = 4000
    for temperature, top_p, top_k in [(1.0, 1.0, 0), (0.6, 1.0, 0), (1.0, 0.75, 0), (1.0, 1.0, 3)]:
        order, probs = kept_set(logits, temperature, top_p, top_k)
        tokens = gpu_tokens(logits, temperature, top_p, top_k, 123, range(n))
        assert set(tokens.tolist()) <= set(order.tolist())
        counts = np.array([(tokens == t).sum() for t in order])
        chi2 = float(np.sum((counts - n * probs) ** 2 / (n * probs)))
        assert chi2 < 30.0, (temperature, top_p, top_k, counts, n * probs)  # df ≤ 6: P(χ² > 30) ≈ 4e-5


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
    masked = np.full(1000, -np.inf, np.float32)
    assert gpu_tokens(masked, 1.0, 1.0, 0, 0, [0])[0] == -1
    assert gpu_tokens(masked, 1.0, 0.9, 5, 0, [0])[0] == -1
    logits[17] = np.inf
    assert gpu_tokens(logits, 1.0, 1.0, 0, 0, [0])[0] == -1


@pytest.mark.parametrize("vocab", [1, 2, 33, 4097])
def test_small_vocabularies(vocab: int) -> None:
    rng = np.random.default_rng(vocab)
    logits = rng.standard_normal(vocab).astype(np.float32)
    for top_p in (1.0, 0.9):
        assert_same_tokens(logits, 1.0, top_p, 0, 3, list(range(16)))
