"""The batched prefill's dense kernels (csrc/cuda/prefill.cu) against float64 NumPy: the bf16 tensor-core GEMM
(tokens as N, bias, store or residual-accumulate), RMSNorm → qkv GEMM → YaRN RoPE for T tokens at positions
pos0 .. pos0 + T - 1, and the router (RMSNorm → gate GEMM → top-k → softmax) for T tokens. Odd token counts
(not multiples of the 64-token or 8-token tiles) and widths that are not multiples of the 16-row tiles; every
output buffer is poisoned (NaN) before the launches."""

from __future__ import annotations

import math

import numpy as np
import pytest
from gpt_oss_native import _C
from weights_reference import from_bf16, random_bf16, rmsnorm_bf16, tied_gate, to_bf16

if not _C.cuda_devices():
    pytest.skip("needs an NVIDIA GPU and a CUDA build of _C", allow_module_level=True)

from test_norm_rope import GPT_OSS, rotate, yarn_cos_sin

pytestmark = pytest.mark.cuda
K = _C.cuda_kernels
EPS = 1e-5
TOKENS = [1, 7, 16, 129, 300]


# (rows, cols): the qkv and out-projection shapes of gpt-oss, the 20b / 120b gates, and widths off every tile.
@pytest.mark.parametrize(("rows", "cols"), [(5120, 2880), (2880, 4096), (32, 2880), (128, 2880), (37, 72), (5, 8)])
@pytest.mark.parametrize("tokens", TOKENS)
@pytest.mark.parametrize("accumulate", [False, True], ids=["store", "residual"])
@pytest.mark.parametrize("split", [False, True], ids=["bf16", "hi+lo"])
def test_gemm_matches_float64(rows: int, cols: int, tokens: int, accumulate: bool, split: bool) -> None:
    if rows * cols > 4_000_000 and tokens not in (7, 129):
        pytest.skip("full-size matrices at two token counts keep the suite short")
    rng = np.random.default_rng(rows + cols + tokens + accumulate)
    w = random_bf16(rng, (rows, cols), scale=1 / math.sqrt(cols))
    bias = random_bf16(rng, rows, scale=0.5)
    x = random_bf16(rng, (tokens, cols))
    # hi+lo: a second input half that is not a rounding residual of the first, so a dropped or misplaced lo shows.
    x_lo = random_bf16(rng, (tokens, cols), scale=0.01) if split else np.zeros(0, np.uint16)
    y_in = rng.standard_normal((tokens, rows)).astype(np.float32)
    y = K.prefill_gemm_bf16(w, bias, x, x_lo, y_in, accumulate)
    wf, xf = from_bf16(w), from_bf16(x) + (from_bf16(x_lo) if split else 0.0)
    ref = xf @ wf.T + from_bf16(bias) + (y_in.astype(np.float64) if accumulate else 0.0)
    bound = np.abs(xf) @ np.abs(wf).T + 1.0
    assert np.isfinite(y).all()
    excess = np.abs(y - ref) - 2e-5 * bound
    assert excess.max() <= 0, f"max excess {excess.max():.3g}"


def test_gemm_without_bias_and_bad_widths() -> None:
    rng = np.random.default_rng(0)
    w, x = random_bf16(rng, (24, 40)), random_bf16(rng, (3, 40))
    none = np.zeros(0, np.uint16)
    y = K.prefill_gemm_bf16(w, none, x, none, np.full((3, 24), np.nan, np.float32), False)
    np.testing.assert_allclose(y, from_bf16(x) @ from_bf16(w).T, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="multiple of 8"):
        K.prefill_gemm_bf16(random_bf16(rng, (4, 12)), none, random_bf16(rng, (2, 12)), none,
                            np.zeros((2, 4), np.float32), False)


def rel_l2(ours: np.ndarray, ref: np.ndarray) -> float:
    return float(np.linalg.norm(ours - ref) / np.linalg.norm(ref))


# (hidden, q_heads, kv_heads, rope)
QKV_SHAPES = {"gpt-oss": (2880, 64, 8, GPT_OSS), "small-gqa": (192, 4, 2, GPT_OSS | {"initial": 512}),
              "no-yarn": (320, 3, 1, {"theta": 10000.0, "factor": 1.0, "initial": 4096, "alpha": 1.0, "beta": 32.0})}


@pytest.mark.parametrize("shape", QKV_SHAPES.values(), ids=QKV_SHAPES.keys())
@pytest.mark.parametrize(("pos0", "tokens"), [(0, 1), (0, 7), (5, 16), (120, 129), (4000, 300)])
def test_qkv_rope_matches_float64(shape: tuple, pos0: int, tokens: int) -> None:
    hidden, q_heads, kv_heads, rope = shape
    rng = np.random.default_rng(hidden + pos0 + tokens)
    rows = (q_heads + 2 * kv_heads) * 64
    x = (rng.standard_normal((tokens, hidden)) * 3 + 0.5).astype(np.float32)
    scale = (1 + 0.1 * rng.standard_normal(hidden)).astype(np.float32)
    w = to_bf16(rng.standard_normal((rows, hidden)) / math.sqrt(hidden))
    bias = to_bf16(0.1 * rng.standard_normal(rows))
    q, k, v = K.prefill_qkv_rope(x, scale, w, bias, q_heads, kv_heads, pos0, rope["theta"], rope["factor"],
                                 rope["initial"], rope["alpha"], rope["beta"], EPS)
    assert q.shape == (tokens, q_heads, 64) and k.shape == v.shape == (tokens, kv_heads, 64)
    assert np.isfinite(q).all() and np.isfinite(from_bf16(k)).all() and np.isfinite(from_bf16(v)).all()
    # The GEMM's input is the fp32 normalised x to ~16 bits (hi + lo bf16 halves), as in decode's norm_qkv_rope.
    x64 = x.astype(np.float64)
    xn = x64 / np.sqrt(np.mean(x64 * x64, axis=1, keepdims=True) + EPS) * scale
    qkv_all = xn @ from_bf16(w).T + from_bf16(bias)
    for t in range(tokens):
        qkv = qkv_all[t]
        cos, sin = yarn_cos_sin(pos0 + t, 64, **rope)
        q_ref = rotate(qkv[: q_heads * 64].reshape(q_heads, 64), cos, sin)
        k_ref = rotate(qkv[q_heads * 64 : (q_heads + kv_heads) * 64].reshape(kv_heads, 64), cos, sin)
        v_ref = qkv[(q_heads + kv_heads) * 64 :].reshape(kv_heads, 64)
        # q stays fp32 (≈ 2^-16 from the split input); k and v are rounded to bf16 (2^-9 each).
        assert rel_l2(q[t], q_ref) < 1e-4, f"token {t}"
        assert rel_l2(from_bf16(k[t]), k_ref) < 5e-3, f"token {t}"
        assert rel_l2(from_bf16(v[t]), v_ref) < 5e-3, f"token {t}"


@pytest.mark.parametrize("experts", [32, 128])
@pytest.mark.parametrize("tokens", TOKENS)
def test_router_matches_float64(experts: int, tokens: int) -> None:
    rng = np.random.default_rng(experts * 7 + tokens)
    hidden, k = 2880, 4
    x = (rng.standard_normal((tokens, hidden)) * 3).astype(np.float32)
    norm_scale = rng.uniform(0.5, 2.0, hidden).astype(np.float32)
    gate_w = random_bf16(rng, (experts, hidden), scale=0.05)
    gate_b = random_bf16(rng, experts, scale=0.5)
    xn, ids, weights = K.prefill_router(x, norm_scale, gate_w, gate_b, k, EPS)
    for t in range(tokens):
        ulps = np.abs(xn[t].astype(np.int32) - rmsnorm_bf16(x[t], norm_scale, EPS).astype(np.int32))
        assert ulps.max() <= 1 and (ulps > 0).mean() < 0.01, f"token {t}: x_normed beyond rounding"
        logits = from_bf16(gate_w) @ from_bf16(xn[t]) + from_bf16(gate_b)  # from the kernel's own x_normed
        order = np.lexsort((np.arange(experts), -logits))
        margins = -np.diff(logits[order])[:k]
        tol = 1e-5 * (np.abs(from_bf16(gate_w)) @ np.abs(from_bf16(xn[t])) + 1).max()
        if margins.min() > tol:
            assert ids[t].tolist() == order[:k].tolist(), f"token {t}"
        else:
            assert set(ids[t].tolist()) <= set(order[: k + 1].tolist()), f"token {t}"
        ref_w = np.exp(logits[ids[t]] - logits[ids[t]].max())
        # The gate GEMM accumulates 2880 products in fp32 (the decode router sums in a different order): its
        # logits differ from float64 by ~1e-5, and a softmax weight's relative error is up to twice that.
        np.testing.assert_allclose(weights[t], ref_w / ref_w.sum(), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("experts", [32, 128])
def test_router_nan_logits_give_nan_weights_and_valid_ids(experts: int) -> None:
    """A NaN logit has no rank: the token gets in-range ids (the expert grouping must place every pair) and NaN
    weights (its MoE output is NaN, as in the reference, whose top-k ranks NaN first)."""
    rng = np.random.default_rng(4)
    tokens, hidden = 5, 2880
    x = rng.standard_normal((tokens, hidden)).astype(np.float32)
    x[1, 17] = np.nan  # token 1: every logit NaN
    gate_w = random_bf16(rng, (experts, hidden), scale=0.05)
    gate_w[experts - 3, 9] = 0x7FC0  # one expert's logit NaN on every token
    _, ids, weights = K.prefill_router(x, np.ones(hidden, np.float32), gate_w, random_bf16(rng, experts), 4, EPS)
    assert ((ids >= 0) & (ids < experts)).all()
    assert np.isnan(weights).all()


@pytest.mark.parametrize("experts", [32, 128])
def test_router_ties_prefer_lower_ids(experts: int) -> None:
    rng = np.random.default_rng(3)
    tokens, hidden = 9, 2880
    x = rng.standard_normal((tokens, hidden)).astype(np.float32)
    gate_w, gate_b, tied = tied_gate(rng, experts, hidden)
    _, ids, weights = K.prefill_router(x, np.ones(hidden, np.float32), gate_w, gate_b, 4, EPS)
    for t in range(tokens):
        assert ids[t, :3].tolist() == sorted(tied)
        assert weights[t, 0] == weights[t, 1] == weights[t, 2]
