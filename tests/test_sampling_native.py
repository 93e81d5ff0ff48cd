"""_C.sample_logits, the host definition of the sampling law every backend's sampler follows: temperature 0 →
argmax (lowest index on ties); else the kept set K (top_k, then the shortest descending-probability prefix with
mass ≥ top_p) and the Gumbel-max draw argmax over K of logit / T − log(−log(u_i)), with u_i per token from
(seed, draw) (csrc/core/rng.h). The law is re-implemented independently in float64 NumPy (sampling_law.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from gpt_oss_native import _C
from sampling_law import kept_set, law_token, token_uniform, token_uniforms


def sample(logits: np.ndarray, **params: float) -> int:
    return _C.sample_logits(np.ascontiguousarray(logits, dtype=np.float32), **params)


def test_token_uniforms_are_open_unit_interval_and_gumbel_noise_has_its_moments() -> None:
    tokens = np.arange(200_000)
    u = token_uniforms(3, 7, tokens)
    # The vectorised reimplementation agrees with the Python-int one.
    for token in (0, 1, 12345, 199_999):
        assert u[token] == token_uniform(3, 7, token)
    assert 0.0 < u.min() and u.max() < 1.0
    assert abs(u.mean() - 0.5) < 0.003  # σ of the mean ≈ 0.0006
    g = -np.log(-np.log(u))
    assert abs(g.mean() - 0.5772156649) < 0.01  # Gumbel(0, 1): mean γ, variance π² / 6; σ of the mean ≈ 0.003
    assert abs(g.var() - math.pi**2 / 6) < 0.05
    # Another draw or seed gives unrelated uniforms.
    assert abs(np.corrcoef(u, token_uniforms(3, 8, tokens))[0, 1]) < 0.01
    assert abs(np.corrcoef(u, token_uniforms(4, 7, tokens))[0, 1]) < 0.01


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
     (201088, 0.7, 1.0, 0), (201088, 0.8, 0.95, 0), (201088, 1.5, 1.0, 100), (7, 2.0, 0.3, 3)],
)
def test_every_draw_follows_the_law_exactly(vocab: int, temperature: float, top_p: float, top_k: int) -> None:
    """Token by token: the native sampler picks what the law (in float64 NumPy) picks for the same seed and draw.
    Only where two keys are within rounding of each other may it pick the other one."""
    logits = (np.random.default_rng(vocab).standard_normal(vocab) * 2).astype(np.float32)
    near_ties = 0
    for draw in range(40 if vocab > 10000 else 300):
        params = {"temperature": temperature, "top_p": top_p, "top_k": top_k, "seed": 1234, "draw": draw}
        expected, near = law_token(logits, **params)
        token = sample(logits, **params)
        if len(near) == 1:
            assert token == expected, f"draw {draw}"
        else:
            near_ties += 1
            assert token in near, f"draw {draw}"
    assert near_ties <= 1


def test_ties_go_to_the_lower_index() -> None:
    # Logits so large that the Gumbel noise (|g| < 40) vanishes in their double ulp (2^14): the keys of equal
    # logits are equal, and the lower index must win whatever the draw.
    big = np.float32(1e20)
    logits = np.array([0.0, np.nextafter(big, np.float32(0)), big, 5.0, big, big], dtype=np.float32)
    assert {sample(logits, temperature=1.0, seed=3, draw=d) for d in range(50)} == {2}
    # top_k cuts equal logits by index: only tokens 0 and 1 of four equal ones are kept.
    assert {sample(np.ones(4, np.float32), top_k=2, seed=3, draw=d) for d in range(200)} == {0, 1}


@pytest.mark.parametrize(
    ("temperature", "top_p", "top_k", "kept"),
    [
        (1.0, 1.0, 0, [0, 1, 2, 3, 4, 5, 6]),  # no cut: everything, by the plain Gumbel-max pass
        (0.5, 1.0, 0, [0, 1, 2, 3, 4, 5, 6]),
        (1.0, 0.6, 0, [0, 2, 3]),  # 0.30 + 0.25 + 0.15 = 0.70 ≥ 0.6 (0.55 is not)
        (1.0, 0.6, 2, [0, 2]),  # top_k 2 renormalises the pair to 0.545 / 0.455: both needed for 0.6
        (1.0, 0.2, 0, [0]),  # the most probable token alone already has mass ≥ 0.2
        (2.0, 1.0, 4, [0, 2, 3, 4]),
    ],
)
def test_draws_keep_exactly_the_kept_set_with_its_probabilities(temperature: float, top_p: float, top_k: int,
                                                                 kept: list[int]) -> None:
    """10,000 draws: only kept tokens appear, and the counts fit the renormalised probabilities (a chi-square far
    beyond any plausible value: the draws are a fixed sequence, so this cannot flake)."""
    logits = np.log(np.array([0.30, 0.05, 0.25, 0.15, 0.10, 0.08, 0.07], dtype=np.float64)).astype(np.float32)
    order, p = kept_set(logits, temperature, top_p, top_k)
    assert sorted(order.tolist()) == kept
    n = 10_000
    params = {"temperature": temperature, "top_p": top_p, "top_k": top_k, "seed": 5}
    counts = np.bincount([sample(logits, **params, draw=i) for i in range(n)], minlength=len(logits))
    assert set(np.flatnonzero(counts)) == set(kept)
    expected = n * p
    chi2 = float(((counts[order] - expected) ** 2 / expected).sum())
    assert chi2 < 40.0, (kept, counts, expected)  # df ≤ 6: P(χ² > 40) ≈ 5e-7


def test_frequencies_over_a_large_vocabulary_follow_softmax() -> None:
    """No cut over 1000 tokens: the 8 likeliest tokens' counts and the rest's fit softmax(logits / T)."""
    rng = np.random.default_rng(11)
    logits = (rng.standard_normal(1000) * 1.5).astype(np.float32)
    logits[:8] += 6.0
    temperature = 0.8
    n = 6000
    counts = np.bincount([sample(logits, temperature=temperature, seed=9, draw=i) for i in range(n)], minlength=1000)
    z = logits.astype(np.float64) / np.float32(temperature)
    p = np.exp(z - z.max())
    p /= p.sum()
    observed = np.append(counts[:8], counts[8:].sum())
    expected = n * np.append(p[:8], p[8:].sum())
    assert expected.min() > 20
    chi2 = float(((observed - expected) ** 2 / expected).sum())
    assert chi2 < 45.0, (observed, expected)  # df 8: P(χ² > 45) ≈ 4e-7


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
    assert {sample(logits, draw=i, top_k=10) for i in range(500)} == {3, 50}  # K holds -inf tokens: never drawn


def test_bad_input_raises() -> None:
    logits = np.zeros(10, dtype=np.float32)
    for params in ({"temperature": -1.0}, {"top_p": 0.0}, {"top_p": 1.5}, {"top_k": -1}):
        with pytest.raises(ValueError):
            sample(logits, **params)
    with pytest.raises(RuntimeError, match="NaN"):
        sample(np.array([0.0, np.nan], dtype=np.float32))
    with pytest.raises(RuntimeError, match=r"\+inf"):
        sample(np.array([0.0, np.inf], dtype=np.float32), temperature=0.0)
    with pytest.raises(RuntimeError, match="-inf"):
        sample(np.full(4, -np.inf, dtype=np.float32))
    with pytest.raises(ValueError):
        sample(np.zeros(0, dtype=np.float32))
