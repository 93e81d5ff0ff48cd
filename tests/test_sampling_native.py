"""_C.sample_logits, the host definition of the sampling law every backend's sampler follows:
temperature 0 → argmax (lowest index on ties); else softmax(logits / T) over the top_k, the shortest
descending-probability prefix with mass ≥ top_p, renormalised, and inverse CDF (descending order, ties by
lower index) at u = uniform_draw(seed, draw) (csrc/core/rng.h, re-implemented here)."""

from __future__ import annotations

import numpy as np
import pytest
from gpt_oss_native import _C

MASK64 = (1 << 64) - 1


def splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & MASK64
    return x ^ (x >> 31)


def uniform_draw(seed: int, draw: int) -> float:
    bits = splitmix64(splitmix64(seed) ^ ((draw * 0xD1B54A32D192ED03) & MASK64))
    return (bits >> 11) * (1.0 / 9007199254740992.0)


def kept_distribution(logits: np.ndarray, temperature: float, top_p: float, top_k: int) -> tuple[np.ndarray, np.ndarray]:
    """(token ids in descending probability order, their renormalised probabilities) of the law, in float64."""
    z = logits.astype(np.float64) / temperature
    order = np.lexsort((np.arange(len(z)), -z))  # descending logit, ties → lower index
    if top_k > 0:
        order = order[:top_k]
    p = np.exp(z[order] - z[order].max())
    p /= p.sum()
    if top_p < 1.0:
        keep = int(np.searchsorted(np.cumsum(p), top_p)) + 1  # first prefix with mass >= top_p
        order, p = order[:keep], p[:keep] / p[:keep].sum()
    return order, p


def expected_token(logits: np.ndarray, temperature: float, top_p: float, top_k: int, seed: int, draw: int) -> int:
    order, p = kept_distribution(logits, temperature, top_p, top_k)
    index = int(np.searchsorted(np.cumsum(p), uniform_draw(seed, draw), side="right"))
    return int(order[min(index, len(order) - 1)])


def sample(logits: np.ndarray, **params: float) -> int:
    return _C.sample_logits(np.ascontiguousarray(logits, dtype=np.float32), **params)


def test_uniform_draw_matches_the_reimplementation_statistically() -> None:
    draws = np.array([uniform_draw(3, i) for i in range(20000)])
    assert 0.0 <= draws.min() and draws.max() < 1.0
    assert abs(draws.mean() - 0.5) < 0.01  # σ of the mean ≈ 0.002


def test_greedy_is_the_argmax_with_lowest_index_on_ties() -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        logits = rng.standard_normal(1000).astype(np.float32)
        assert sample(logits, temperature=0.0, seed=1, draw=2) == int(np.argmax(logits))
    tied = np.array([0.0, 3.0, -1.0, 3.0, 3.0], dtype=np.float32)
    assert sample(tied, temperature=0.0) == 1
    # Greedy ignores top_k / top_p, and the draw.
    assert sample(tied, temperature=0.0, top_k=2, top_p=0.1, draw=99) == 1


@pytest.mark.parametrize(
    ("vocab", "temperature", "top_p", "top_k"),
    [(50, 1.0, 1.0, 0), (50, 0.7, 0.9, 0), (1000, 1.3, 1.0, 10), (1000, 1.0, 0.5, 40), (201088, 1.0, 1.0, 0),
     (201088, 0.8, 0.95, 0), (7, 2.0, 0.3, 3)],
)
def test_every_draw_follows_the_law_exactly(vocab: int, temperature: float, top_p: float, top_k: int) -> None:
    """Token by token: the native sampler picks what the law (in float64 NumPy) picks for the same u. Random
    logits put no CDF boundary within rounding of any u used here."""
    logits = (np.random.default_rng(vocab).standard_normal(vocab) * 2).astype(np.float32)
    for draw in range(40 if vocab > 10000 else 300):
        params = {"temperature": temperature, "top_p": top_p, "top_k": top_k, "seed": 1234, "draw": draw}
        assert sample(logits, **params) == expected_token(logits, **params), f"draw {draw}"


def test_top_k_and_top_p_keep_exactly_the_nucleus_with_its_probabilities() -> None:
    """10,000 draws: only nucleus tokens appear, and the counts fit the renormalised probabilities (a
    chi-square far beyond any plausible value: the draws are a fixed sequence, so this cannot flake)."""
    logits = np.log(np.array([0.30, 0.05, 0.25, 0.15, 0.10, 0.08, 0.07], dtype=np.float64)).astype(np.float32)
    cases = [
        (0.6, 0, [0, 2, 3]),  # 0.30 + 0.25 + 0.15 = 0.70 ≥ 0.6 (0.55 is not)
        (0.6, 2, [0, 2]),  # top_k 2 renormalises the pair to 0.545 / 0.455: both needed for 0.6
        (0.2, 0, [0]),  # the most probable token alone already has mass ≥ 0.2
    ]
    for top_p, top_k, nucleus in cases:
        order, p = kept_distribution(logits, 1.0, top_p, top_k)
        assert sorted(order.tolist()) == nucleus
        n = 10_000
        counts = np.bincount([sample(logits, top_p=top_p, top_k=top_k, seed=5, draw=i) for i in range(n)],
                             minlength=len(logits))
        assert set(np.flatnonzero(counts)) == set(nucleus)
        expected = n * p
        chi2 = float(((counts[order] - expected) ** 2 / expected).sum())
        assert chi2 < 40.0, (nucleus, counts, expected)  # df ≤ 2: P(χ² > 40) ≈ 2e-9


def test_same_seed_and_draw_repeat_and_different_draws_differ() -> None:
    logits = np.zeros(1000, dtype=np.float32)  # uniform: every draw index maps to its own token
    first = [sample(logits, seed=42, draw=i) for i in range(200)]
    assert first == [sample(logits, seed=42, draw=i) for i in range(200)]
    assert len(set(first)) > 150  # 200 uniform draws of 1000 hit ~181 distinct tokens
    other_seed = [sample(logits, seed=43, draw=i) for i in range(200)]
    assert sum(a != b for a, b in zip(first, other_seed, strict=True)) > 180


def test_temperature_sharpens_and_flattens() -> None:
    logits = np.array([2.0, 1.0, 0.0], dtype=np.float32)
    n = 3000
    cold = np.bincount([sample(logits, temperature=0.25, draw=i) for i in range(n)], minlength=3)
    hot = np.bincount([sample(logits, temperature=4.0, draw=i) for i in range(n)], minlength=3)
    assert cold[0] > 0.9 * n  # p0 = 0.98
    assert 0.35 * n < hot[0] < 0.48 * n  # p0 = 0.41


def test_masked_logits_are_never_sampled() -> None:
    logits = np.full(100, -np.inf, dtype=np.float32)
    logits[[3, 50]] = [0.0, 1.0]
    assert {sample(logits, draw=i) for i in range(500)} == {3, 50}


def test_bad_input_raises() -> None:
    logits = np.zeros(10, dtype=np.float32)
    for params in ({"temperature": -1.0}, {"top_p": 0.0}, {"top_p": 1.5}, {"top_k": -1}):
        with pytest.raises(ValueError):
            sample(logits, **params)
    with pytest.raises(RuntimeError, match="NaN"):
        sample(np.array([0.0, np.nan], dtype=np.float32))
    with pytest.raises(RuntimeError, match="-inf"):
        sample(np.full(4, -np.inf, dtype=np.float32))
    with pytest.raises(ValueError):
        sample(np.zeros(0, dtype=np.float32))
