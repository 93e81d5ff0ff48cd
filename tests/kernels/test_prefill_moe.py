"""The batched prefill's MoE (prefill.cu grouping and combine, moe_mxfp4.cu grouped MXFP4 GEMMs) against float64
NumPy, run as the backend runs it: group the T·k (token, expert) pairs by expert → stage the normed tokens →
mlp1 + SwiGLU per expert over its tokens → stage the activations → mlp2 + bias → Σ_j w_j (…) into the fp32
residual in a fixed order. Checks the grouping (stable by pair, 64-token tiles), mlp1's activations, the
residual (from the kernel's own bf16 activations, so each stage is judged alone), bitwise determinism, odd
token counts, both expert counts and skewed routing (hundreds of tokens on one expert)."""

from __future__ import annotations

import numpy as np
import pytest
from gpt_oss_native import _C
from weights_reference import dequant_mxfp4, from_bf16, random_bf16, random_mxfp4, swiglu

if not _C.cuda_devices():
    pytest.skip("needs an NVIDIA GPU and a CUDA build of _C", allow_module_level=True)

pytestmark = pytest.mark.cuda
K = _C.cuda_kernels
ALPHA, LIMIT = 1.702, 7.0
TILE_TOKENS = 64


def routing(rng: np.random.Generator, tokens: int, experts: int, k: int = 4, skewed: bool = False):
    if skewed:  # every token on the same k experts: several 64-token tiles per expert
        ids = np.tile(rng.choice(experts, size=k, replace=False), (tokens, 1))
    else:
        ids = np.stack([rng.choice(experts, size=k, replace=False) for _ in range(tokens)])
    logits = rng.standard_normal((tokens, k))
    weights = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return ids.astype(np.int32), weights.astype(np.float32)


def run_case(experts: int, inter: int, hidden: int, tokens: int, seed: int, skewed: bool = False) -> None:
    rng = np.random.default_rng(seed)
    k = 4
    blocks1, scales1 = random_mxfp4(rng, experts, 2 * inter, hidden)
    bias1 = random_bf16(rng, (experts, 2 * inter), scale=4.0)  # pushes many pre-activations past ±7
    blocks2, scales2 = random_mxfp4(rng, experts, hidden, inter)
    bias2 = random_bf16(rng, (experts, hidden))
    xn = random_bf16(rng, (tokens, hidden))
    xn[0] = random_bf16(rng, hidden, scale=2.0**-20)  # a tiny row: the per-token fp16 staging must keep it
    ids, weights = routing(rng, tokens, experts, k, skewed)
    residual = rng.standard_normal((tokens, hidden)).astype(np.float32)
    args = (xn, ids, weights, blocks1, scales1, bias1, blocks2, scales2, bias2, ALPHA, LIMIT, residual)
    out, act, sorted_of, tiles = K.prefill_moe(*args)

    # Grouping: pairs of an expert contiguous, experts ascending, pairs in order; ≤ 64 tokens a tile.
    order = np.argsort(ids.ravel(), kind="stable")
    np.testing.assert_array_equal(sorted_of.ravel()[order], np.arange(tokens * k))
    expected_tiles = []
    counts = np.bincount(ids.ravel(), minlength=experts)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    for e in range(experts):
        for s in range(0, counts[e], TILE_TOKENS):
            expected_tiles.append([e, starts[e] + s, min(TILE_TOKENS, counts[e] - s)])
    np.testing.assert_array_equal(tiles, np.array(expected_tiles, np.int32).reshape(-1, 3))

    xf, got_act = from_bf16(xn), from_bf16(act)
    ref_out = residual.astype(np.float64).copy()
    bound_out = np.abs(ref_out)
    for e in np.unique(ids):
        rows, slots = np.nonzero(ids == e)
        w1 = dequant_mxfp4(blocks1[e], scales1[e])  # [2I, H]
        pre = xf[rows] @ w1.T + from_bf16(bias1[e])
        ref_act = swiglu(pre, ALPHA, LIMIT)
        bound1 = np.abs(xf[rows]) @ np.abs(w1).T + np.abs(from_bf16(bias1[e]))
        tol = 2.0**-8 * np.abs(ref_act) + 9 * 2e-6 * np.maximum(bound1[:, ::2], bound1[:, 1::2]) + 1e-30
        excess = np.abs(got_act[rows, slots] - ref_act) - tol
        assert excess.max() <= 0, f"expert {e}: mlp1 activation off by {excess.max():.3g} past the tolerance"
        w2 = dequant_mxfp4(blocks2[e], scales2[e])  # [H, I]
        a = got_act[rows, slots]  # the kernel's own activations: mlp2 and the combine are judged alone
        y = a @ w2.T + from_bf16(bias2[e])
        wts = weights[rows, slots].astype(np.float64)[:, None]
        np.add.at(ref_out, rows, wts * y)
        np.add.at(bound_out, rows, wts * (np.abs(a) @ np.abs(w2).T + np.abs(from_bf16(bias2[e]))))
    assert np.isfinite(out).all(), "unwritten (NaN-poisoned) or non-finite outputs"
    excess = np.abs(out - ref_out) - 4e-6 * bound_out
    assert excess.max() <= 0, f"residual off by {excess.max():.3g} past the tolerance"

    again = K.prefill_moe(*args)
    assert np.array_equal(out.view(np.uint32), again[0].view(np.uint32)), "not deterministic"
    assert np.array_equal(act, again[1])


def test_gpt_oss_20b_shape() -> None:
    run_case(32, 2880, 2880, 33, seed=33)


@pytest.mark.parametrize("tokens", [1, 7, 16, 129, 300])
@pytest.mark.parametrize(("experts", "inter", "hidden"), [(128, 96, 64), (32, 64, 96), (8, 32, 160)])
def test_small_shapes(experts: int, inter: int, hidden: int, tokens: int) -> None:
    run_case(experts, inter, hidden, tokens, seed=experts + inter + hidden + tokens)


@pytest.mark.parametrize("tokens", [65, 300])
def test_skewed_routing_spans_several_tiles(tokens: int) -> None:
    run_case(32, 64, 96, tokens, seed=tokens, skewed=True)
