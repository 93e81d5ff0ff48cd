"""Screened fused sampling (csrc/cuda/gemv_bf16.cu: screen_kernel bounds every row's key from an int8 copy of the
unembedding, pick_kernel recomputes from the bf16 weight the rows whose bound reaches the best lower bound) against
the exact unembedding's logits: the same token as the sampling law on those logits (greedy and Gumbel-max), up to
keys within fp32 rounding of each other; ties, +inf / -inf / NaN as the exact fused draw answers them."""

from __future__ import annotations

import numpy as np
import pytest
from gpt_oss_native import _C
from sampling_law import law_token
from weights_reference import huge_tie_first_and_last, random_bf16, unembedding_inputs

if not _C.cuda_devices():
    pytest.skip("needs an NVIDIA GPU and a CUDA build of _C", allow_module_level=True)

pytestmark = pytest.mark.cuda
K = _C.cuda_kernels
EPS = 1e-5
# The real shape, small ones off the 16-row tiles and the 64-column int8 chunks, and one past pick_kernel's one
# round of row loads (hidden > 3072).
SHAPES = [(201088, 2880), (4099, 96), (33, 8), (1, 8), (1000, 3104)]


def screened(w, norm_scale, x, temperature: float, seed: int = 0, draws=range(3)):
    return K.unembedding_screened_sample(
        w, norm_scale, x, EPS, temperature, seed, np.asarray(draws, np.uint64)
    )


@pytest.mark.parametrize(("vocab", "hidden"), SHAPES)
def test_screened_draw_is_the_exact_logits_draw(vocab: int, hidden: int) -> None:
    w, norm_scale, x = unembedding_inputs(vocab, hidden, seed=vocab * 13 + hidden)
    logits = K.unembedding(w, norm_scale, x, EPS)  # the exact kernel's, fp32
    for temperature in (0.0, 0.7, 1.0, 1.5):
        for seed in (0, 12345, 2**64 - 1):
            draws = list(range(seed % 5, seed % 5 + 4))
            tokens, upper, m = screened(w, norm_scale, x, temperature, seed, draws)
            for draw, token in zip(draws, tokens.tolist(), strict=True):
                best, near = law_token(logits, temperature, 1.0, 0, seed, draw)
                assert token == best or token in near, (temperature, seed, draw, token, best, near)
            if temperature == 0.0:
                # Every row's bound holds its logit (to the fp32 difference of the two sums), M is below the best
                # logit, and the screen screens: few rows reach M.
                slack = 1e-5 * (np.abs(logits) + 1.0)
                assert np.all(upper >= logits - slack)
                assert m <= logits.max() + slack.max()
                if vocab >= 1000:
                    assert np.count_nonzero(~(upper < m)) <= vocab // 4


@pytest.mark.parametrize(("vocab", "hidden"), SHAPES[:3])
def test_screened_ties_and_non_finite(vocab: int, hidden: int) -> None:
    w, norm_scale, x = unembedding_inputs(vocab, hidden, seed=vocab * 13 + hidden)
    logits = K.unembedding(w, norm_scale, x, EPS)
    # A tie at the top between the first and the last row: the lower id wins.
    top = int(np.argmax(logits))
    w[0] = w[vocab - 1] = w[top]
    assert screened(w, norm_scale, x, 0.0)[0].tolist() == [0, 0, 0]
    # Equal keys so large that the Gumbel noise vanishes in their double ulp: the lower id wins every draw.
    assert screened(huge_tie_first_and_last(w), norm_scale, x, 1.0, 7, range(4))[0].tolist() == [0, 0, 0, 0]
    # A +inf logit: -1. Every logit -inf: -1 when sampling, the lowest id when greedy (as the exact fused draw).
    w_bad = w.copy()
    w_bad[vocab // 2, 0] = 0x7F80  # bf16 +inf
    assert screened(w_bad, norm_scale, x, 0.0)[0].tolist() == [-1, -1, -1]
    assert screened(w_bad, norm_scale, x, 1.0)[0].tolist() == [-1, -1, -1]
    w_bad[:, 0] = 0xFF80  # bf16 -inf
    assert screened(w_bad, norm_scale, x, 1.0)[0].tolist() == [-1, -1, -1]
    assert screened(w_bad, norm_scale, x, 0.0)[0].tolist() == [0, 0, 0]
    # A NaN in the residual stream: every logit NaN, -1.
    x_nan = x.copy()
    x_nan[hidden // 2] = np.nan
    assert screened(w, norm_scale, x_nan, 0.0)[0].tolist() == [-1, -1, -1]


def test_a_hidden_too_large_for_the_screen_raises() -> None:
    """screen_kernel stages x in shared memory (bf16 and int8, ~3 bytes a column): past what a launch may use,
    building the screen must fail clearly (the CUDA backend then samples from the full unembedding)."""
    rng = np.random.default_rng(5)
    w = random_bf16(rng, (16, 16384), scale=0.02)
    x = rng.standard_normal(16384).astype(np.float32)
    with pytest.raises(ValueError, match="too large for the screened draw"):
        screened(w, np.ones(16384, np.float32), x, 0.0)
