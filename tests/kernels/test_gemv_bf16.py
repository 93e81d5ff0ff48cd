"""The bf16 GEMV launchers (csrc/cuda/gemv_bf16.cu) against float64 NumPy: the out-projection with bias and the
fp32 residual, and the unembedding with the final RMSNorm fused. Outputs are poisoned (NaN) before each launch."""

from __future__ import annotations

import numpy as np
import pytest
from gpt_oss_native import _C
from weights_reference import from_bf16, random_bf16, rmsnorm_bf16

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


@pytest.mark.parametrize(("vocab", "hidden"), [(4099, 2880), (1000, 64), (33, 96), (16, 8)])
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


# Greedy decoding fused into the unembedding: the argmax of the very logits it writes, lowest id on ties, -1 for a
# NaN / +inf logit; several launches on one workspace (each must re-arm it). 201088 is the real vocabulary.
@pytest.mark.parametrize(("vocab", "hidden"), [(201088, 2880), (4099, 96), (33, 8), (1, 8)])
def test_unembedding_argmax(vocab: int, hidden: int) -> None:
    rng = np.random.default_rng(vocab * 7 + hidden)
    w = random_bf16(rng, (vocab, hidden), scale=0.02)
    norm_scale = rng.uniform(0.5, 2.0, hidden).astype(np.float32)
    x = (rng.standard_normal(hidden) * 5).astype(np.float32)
    logits, tokens = K.unembedding_argmax(w, norm_scale, x, EPS, 3)
    assert np.isfinite(logits).all()
    assert tokens.tolist() == [int(np.argmax(logits))] * 3
    if vocab < 3:
        return
    # A tie at the top between the first and the last row (both far from each other's CTA): the lower id wins.
    top = int(np.argmax(logits))
    w[0] = w[vocab - 1] = w[top]
    logits, tokens = K.unembedding_argmax(w, norm_scale, x, EPS, 2)
    assert logits[0] == logits[vocab - 1] == logits.max()
    assert tokens.tolist() == [0, 0]
    # An infinite weight of x's sign makes that logit +inf: -1, never a token.
    w[vocab // 2, 0] = 0x7F80 if x[0] > 0 else 0xFF80  # bf16 ±inf
    assert K.unembedding_argmax(w, norm_scale, x, EPS, 2)[1].tolist() == [-1, -1]


def test_bad_shapes_raise() -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="multiple of 8"):
        K.bf16_gemv_bias_residual(random_bf16(rng, (4, 12)), random_bf16(rng, 4), random_bf16(rng, 12),
                                  np.zeros(4, np.float32))
    with pytest.raises(ValueError, match="multiple of 8"):
        K.unembedding(random_bf16(rng, (4, 12)), np.ones(12, np.float32), np.ones(12, np.float32), EPS)
