"""The bf16 GEMV launchers (csrc/cuda/gemv_bf16.cu) against float64 NumPy: the out-projection with bias and the
fp32 residual, and the unembedding with the final RMSNorm fused, with its fused greedy / Gumbel-max token against
the CPU sampler. Outputs are poisoned (NaN) before each launch."""

from __future__ import annotations

import numpy as np
import pytest
from gpt_oss_native import _C
from sampling_law import law_token
from weights_reference import (
    from_bf16,
    huge_tie_first_and_last,
    random_bf16,
    rmsnorm_bf16,
    unembedding_inputs,
)

if not _C.cuda_devices():
    pytest.skip("needs an NVIDIA GPU and a CUDA build of _C", allow_module_level=True)

pytestmark = pytest.mark.cuda
K = _C.cuda_kernels
EPS = 1e-5


# The out-projection's real shape, and sizes off the 16-row / 32-column tiles (cols must be a multiple of 8).
@pytest.mark.parametrize(("rows", "cols"), [(2880, 4096), (64, 96), (35, 72), (1, 8), (2880, 2880)])
def test_gemv_bias_residual(rows: int, cols: int) -> None:
    rng = np.random.default_rng(rows * 31 + cols)
    w = random_bf16(rng, (rows, cols), scale=0.02)
    bias = random_bf16(rng, rows)
    x = random_bf16(rng, cols, scale=2.0)
    residual = rng.standard_normal(rows).astype(np.float32)
    out = K.bf16_gemv_bias_residual(w, bias, x, residual)
    wf, xf = from_bf16(w), from_bf16(x)
    ref = residual + wf @ xf + from_bf16(bias)
    bound = np.abs(residual) + np.abs(wf) @ np.abs(xf) + np.abs(from_bf16(bias))
    assert np.isfinite(out).all()
    assert np.all(np.abs(out - ref) <= 2e-6 * bound), f"max rel {np.max(np.abs(out - ref) / bound):.3g}"


# The real hidden size, small ones off the 32-column chunks, and one past the final RMSNorm's one round of loads
# (hidden > 3072: its loop path).
@pytest.mark.parametrize(("vocab", "hidden"), [(4099, 2880), (1000, 64), (33, 96), (16, 8), (40, 3104)])
def test_unembedding(vocab: int, hidden: int) -> None:
    rng = np.random.default_rng(vocab + hidden)
    w = random_bf16(rng, (vocab, hidden), scale=0.02)
    norm_scale = rng.uniform(0.5, 2.0, hidden).astype(np.float32)
    x = (rng.standard_normal(hidden) * 5).astype(np.float32)
    logits = K.unembedding(w, norm_scale, x, EPS)
    assert logits.shape == (vocab,) and np.isfinite(logits).all()
    xn = from_bf16(rmsnorm_bf16(x, norm_scale, EPS))
    wf = from_bf16(w)
    ref = wf @ xn
    terms = np.abs(wf) * np.abs(xn)
    # fp32 accumulation, plus up to a few x_normed entries rounded the other way (1 bf16 ulp each).
    tol = 2e-6 * terms.sum(axis=1) + 3 * 2.0**-8 * terms.max(axis=1)
    assert np.all(np.abs(logits - ref) <= tol), f"max excess {np.max(np.abs(logits - ref) - tol):.3g}"


def fused(w, norm_scale, x, temperature: float, seed: int = 0, draws=range(3)) -> tuple[np.ndarray, np.ndarray]:
    return K.unembedding_sample(w, norm_scale, x, EPS, temperature, seed, np.asarray(draws, dtype=np.uint64))


# Greedy decoding fused into the unembedding: the argmax of the very logits it writes, lowest id on ties, -1 for a
# NaN / +inf logit; several launches on one workspace (each must re-arm it). 201088 is the real vocabulary.
@pytest.mark.parametrize(("vocab", "hidden"), [(201088, 2880), (4099, 96), (33, 8), (1, 8)])
def test_unembedding_argmax(vocab: int, hidden: int) -> None:
    w, norm_scale, x = unembedding_inputs(vocab, hidden, seed=vocab * 7 + hidden)
    logits, tokens = fused(w, norm_scale, x, 0.0)
    assert np.isfinite(logits).all()
    assert tokens.tolist() == [int(np.argmax(logits))] * 3
    if vocab < 3:
        return
    # A tie at the top between the first and the last row (both far from each other's CTA): the lower id wins.
    top = int(np.argmax(logits))
    w[0] = w[vocab - 1] = w[top]
    logits, tokens = fused(w, norm_scale, x, 0.0)
    assert logits[0] == logits[vocab - 1] == logits.max()
    assert tokens.tolist() == [0, 0, 0]
    # An infinite weight of x's sign makes that logit +inf: -1, never a token.
    w[vocab // 2, 0] = 0x7F80  # bf16 +inf
    assert fused(w, norm_scale, x, 0.0)[1].tolist() == [-1, -1, -1]


# The fused Gumbel-max draw (no top-k / top-p cut) is the CPU sampler's token on the very logits the kernel
# returned, for every temperature, seed and draw (a different token only where two keys are within rounding,
# sampling_law.NEAR_TIE); several launches on one workspace (each must re-arm it).
@pytest.mark.parametrize(("vocab", "hidden"), [(201088, 2880), (4099, 96), (33, 8), (1, 8)])
def test_unembedding_sample(vocab: int, hidden: int) -> None:
    w, norm_scale, x = unembedding_inputs(vocab, hidden, seed=vocab * 7 + hidden)
    near_ties = 0
    for temperature in (0.7, 1.0, 1.5):
        for seed in (0, 12345, 2**64 - 1):
            draws = list(range(seed % 5, seed % 5 + 6))
            logits, tokens = fused(w, norm_scale, x, temperature, seed, draws)
            assert np.isfinite(logits).all()
            for draw, token in zip(draws, tokens.tolist(), strict=True):
                cpu = _C.sample_logits(logits, temperature, 1.0, 0, seed, draw)
                if token != cpu:
                    _, near = law_token(logits, temperature, 1.0, 0, seed, draw)
                    assert token in near and cpu in near, (temperature, seed, draw, token, cpu, near)
                    near_ties += 1
            if vocab > 1000:
                assert len(set(tokens.tolist())) > 1  # the draws do draw
    assert near_ties <= 1
    if vocab < 3:
        return
    # Equal keys in the first and the last row's CTAs, too large for the noise: the lower id wins every draw.
    assert fused(huge_tie_first_and_last(w), norm_scale, x, 1.0, 7, range(4))[1].tolist() == [0, 0, 0, 0]
    # A +inf logit: -1. Every logit -inf: -1 when sampling (nothing to draw), the lowest id when greedy.
    w_bad = w.copy()
    w_bad[vocab // 2, 0] = 0x7F80  # bf16 +inf
    assert fused(w_bad, norm_scale, x, 1.0)[1].tolist() == [-1, -1, -1]
    w_bad[:, 0] = 0xFF80  # bf16 -inf
    logits, tokens = fused(w_bad, norm_scale, x, 1.0)
    assert np.all(logits == -np.inf) and tokens.tolist() == [-1, -1, -1]
    assert fused(w_bad, norm_scale, x, 0.0)[1].tolist() == [0, 0, 0]


def test_bad_shapes_raise() -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="multiple of 8"):
        K.bf16_gemv_bias_residual(random_bf16(rng, (4, 12)), random_bf16(rng, 4), random_bf16(rng, 12),
                                  np.zeros(4, np.float32))
    with pytest.raises(ValueError, match="multiple of 8"):
        K.unembedding(random_bf16(rng, (4, 12)), np.ones(12, np.float32), np.ones(12, np.float32), EPS)
