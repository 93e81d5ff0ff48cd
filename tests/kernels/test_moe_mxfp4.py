"""The MoE launchers against float64 NumPy: the router (RMSNorm + gate GEMV + top-k + softmax of the updated
residual: partials in the out-projection's tail, csrc/cuda/gemv_bf16.cu, finished by csrc/cuda/router.cuh, here
through launch_route and inside mlp1 / mlp2 in the chained test), and (csrc/cuda/moe_mxfp4.cu) mlp1 + clamped
interleaved SwiGLU, mlp2 + bias + routing weights + sum over experts + fp32 residual. References are computed
from the same bf16-rounded inputs; outputs are poisoned (NaN) before every launch."""

from __future__ import annotations

import numpy as np
import pytest
from gpt_oss_native import _C
from weights_reference import (
    dequant_mxfp4,
    from_bf16,
    random_bf16,
    random_mxfp4,
    rmsnorm_bf16,
    swiglu,
    tied_gate,
    to_bf16,
)

if not _C.cuda_devices():
    pytest.skip("needs an NVIDIA GPU and a CUDA build of _C", allow_module_level=True)

pytestmark = pytest.mark.cuda
K = _C.cuda_kernels
ALPHA, LIMIT, EPS = 1.702, 7.0, 1e-5
# The largest |act| gpt-oss's SwiGLU can write (swiglu_act_bound in moe_mxfp4.cu): decode stages act at its scale.
ACT_BOUND = LIMIT * (LIMIT + 1) * (1 + 2.0**-7)

# (experts, intermediate, hidden): the 20b shape, 128 experts, and sizes that are not multiples of the tiles
# (16 rows, 64 columns). MXFP4 needs the input width (hidden for mlp1, intermediate for mlp2) to be a
# multiple of 32; output rows may be anything.
MLP1_SHAPES = [(32, 2880, 2880), (128, 96, 64), (8, 36, 96), (4, 40, 32)]
MLP2_SHAPES = [(32, 2880, 2880), (128, 64, 96), (8, 96, 40), (4, 32, 36)]


def expert_set(rng: np.random.Generator, experts: int, k: int = 4) -> np.ndarray:
    return rng.choice(experts, size=k, replace=False).astype(np.int32)


@pytest.mark.parametrize(("experts", "inter", "hidden"), MLP1_SHAPES)
def test_mlp1_swiglu(experts: int, inter: int, hidden: int) -> None:
    rng = np.random.default_rng(experts * 1000 + inter + hidden)
    blocks, scales = random_mxfp4(rng, experts, 2 * inter, hidden)
    bias = random_bf16(rng, (experts, 2 * inter), scale=4.0)  # pushes many pre-activations past ±7
    x = random_bf16(rng, hidden)
    ids = expert_set(rng, experts)
    act = K.bf16_mxfp4w_moe_mlp1_swiglu(x, ids, blocks, scales, bias, ALPHA, LIMIT)
    assert act.shape == (4, inter) and act.dtype == np.uint16

    w = dequant_mxfp4(blocks[ids], scales[ids])  # [k, 2I, H]
    xf, bf = from_bf16(x), from_bf16(bias[ids])
    pre = np.einsum("krh,h->kr", w, xf) + bf
    ref = swiglu(pre, ALPHA, LIMIT)
    got = from_bf16(act)
    assert np.isfinite(got).all(), "unwritten (NaN-poisoned) or non-finite outputs"
    assert (pre[:, ::2] > LIMIT).any() and (np.abs(pre[:, 1::2]) > LIMIT).any(), "the clamp was not exercised"
    # bf16 output rounding, plus fp32 accumulation error propagated through the SwiGLU (slope ≤ 8 + 1).
    bound = np.einsum("krh,h->kr", np.abs(w), np.abs(xf)) + np.abs(bf)
    tol = 2.0**-8 * np.abs(ref) + 9 * 2e-6 * np.maximum(bound[:, ::2], bound[:, 1::2]) + 1e-30
    assert np.all(np.abs(got - ref) <= tol), f"max excess {np.max(np.abs(got - ref) - tol):.3g}"


# The MLP2 shapes at k = 4, and k around the last CTA's one round of loads (4 slots; past them, a loop) and the
# splits' shares of slots (odd k leaves the second split one fewer).
@pytest.mark.parametrize(
    ("experts", "inter", "hidden", "k"),
    [(*shape, 4) for shape in MLP2_SHAPES] + [(8, 96, 40, 1), (8, 96, 40, 3), (8, 96, 40, 5), (16, 64, 40, 8)],
)
def test_mlp2_residual(experts: int, inter: int, hidden: int, k: int) -> None:
    rng = np.random.default_rng(experts * 7 + inter * 3 + hidden + k)
    blocks, scales = random_mxfp4(rng, experts, hidden, inter)
    bias = random_bf16(rng, (experts, hidden))
    act = random_bf16(rng, (k, inter), scale=3.0)
    ids = expert_set(rng, experts, k)
    logits = rng.standard_normal(k)
    weights = (np.exp(logits) / np.exp(logits).sum()).astype(np.float32)
    residual = rng.standard_normal(hidden).astype(np.float32)
    out = K.bf16_mxfp4w_moe_mlp2_residual(act, ids, weights, blocks, scales, bias, residual, act_bound=ACT_BOUND)

    w = dequant_mxfp4(blocks[ids], scales[ids])  # [k, H, I]
    af, bf, wf = from_bf16(act), from_bf16(bias[ids]), weights.astype(np.float64)
    ref = residual + np.einsum("k,kh->h", wf, np.einsum("khi,ki->kh", w, af) + bf)
    bound = np.abs(residual) + np.einsum("k,kh->h", wf, np.einsum("khi,ki->kh", np.abs(w), np.abs(af)) + np.abs(bf))
    assert np.isfinite(out).all()
    assert np.all(np.abs(out - ref) <= 2e-6 * bound), f"max rel {np.max(np.abs(out - ref) / bound):.3g}"


@pytest.mark.parametrize("magnitude", [2.0**-30, 2.0**20])
def test_inputs_far_outside_fp16_range(magnitude: float) -> None:
    """act is staged as fp16 at the power-of-two scale of its bound (by default the largest |act|): tiny and huge
    bf16 vectors keep their precision."""
    rng = np.random.default_rng(int(np.log2(magnitude)) + 77)
    experts, hidden, inter = 8, 64, 96
    blocks, scales = random_mxfp4(rng, experts, hidden, inter)
    bias = to_bf16(np.zeros((experts, hidden), np.float32))
    act = random_bf16(rng, (4, inter), scale=magnitude)
    ids = expert_set(rng, experts)
    weights = np.full(4, 0.25, np.float32)
    residual = np.zeros(hidden, np.float32)
    out = K.bf16_mxfp4w_moe_mlp2_residual(act, ids, weights, blocks, scales, bias, residual)
    w = dequant_mxfp4(blocks[ids], scales[ids])
    af = from_bf16(act)
    ref = 0.25 * np.einsum("khi,ki->h", w, af)
    bound = 0.25 * np.einsum("khi,ki->h", np.abs(w), np.abs(af))
    assert np.all(np.abs(out - ref) <= 2e-6 * bound)


def test_act_past_its_bound_is_loud() -> None:
    """act staged at the scale of a bound it exceeds 4-fold overflows fp16: the output says so (inf / NaN)."""
    rng = np.random.default_rng(21)
    experts, hidden, inter = 8, 40, 96
    blocks, scales = random_mxfp4(rng, experts, hidden, inter)
    bias = to_bf16(np.zeros((experts, hidden), np.float32))
    act = to_bf16(np.full((4, inter), 8.0, np.float32))
    ids = expert_set(rng, experts)
    weights = np.full(4, 0.25, np.float32)
    out = K.bf16_mxfp4w_moe_mlp2_residual(act, ids, weights, blocks, scales, bias, np.zeros(hidden, np.float32),
                                          act_bound=1.0)
    assert not np.isfinite(out).all()


@pytest.mark.parametrize("act_bound", [0.0, -1.0, float("inf"), float("nan")])
def test_act_bound_must_be_finite_and_positive(act_bound: float) -> None:
    rng = np.random.default_rng(22)
    blocks, scales = random_mxfp4(rng, 4, 32, 64)
    bias = to_bf16(np.zeros((4, 32), np.float32))
    with pytest.raises(ValueError, match="act_bound"):
        K.bf16_mxfp4w_moe_mlp2_residual(random_bf16(rng, (4, 64)), np.arange(4, dtype=np.int32),
                                        np.full(4, 0.25, np.float32), blocks, scales, bias,
                                        np.zeros(32, np.float32), act_bound=act_bound)


def test_extreme_block_scales() -> None:
    """Scales far from 2^0 (2^-60 … 2^+40) dequantise exactly: the scale is applied in fp32 after the mma."""
    rng = np.random.default_rng(5)
    experts, hidden, inter = 4, 32, 64
    blocks, scales = random_mxfp4(rng, experts, hidden, inter, scale_range=(67, 167))
    bias = to_bf16(np.zeros((experts, hidden), np.float32))
    act = random_bf16(rng, (4, inter))
    ids = np.arange(4, dtype=np.int32)
    weights = np.full(4, 0.25, np.float32)
    out = K.bf16_mxfp4w_moe_mlp2_residual(act, ids, weights, blocks, scales, bias, np.zeros(hidden, np.float32))
    w = dequant_mxfp4(blocks, scales)
    af = from_bf16(act)
    ref = 0.25 * np.einsum("khi,ki->h", w, af)
    bound = 0.25 * np.einsum("khi,ki->h", np.abs(w), np.abs(af))
    assert np.all(np.abs(out - ref) <= 2e-6 * bound)


def test_mlp1_then_mlp2_deterministic() -> None:
    """Same inputs, same bits: no atomics, a fixed reduction order."""
    rng = np.random.default_rng(11)
    blocks, scales = random_mxfp4(rng, 32, 2880, 2880)
    bias = random_bf16(rng, (32, 2880))
    act = random_bf16(rng, (4, 2880))
    ids = expert_set(rng, 32)
    weights = np.full(4, 0.25, np.float32)
    residual = rng.standard_normal(2880).astype(np.float32)
    first = K.bf16_mxfp4w_moe_mlp2_residual(act, ids, weights, blocks, scales, bias, residual)
    second = K.bf16_mxfp4w_moe_mlp2_residual(act, ids, weights, blocks, scales, bias, residual)
    assert np.array_equal(first.view(np.uint32), second.view(np.uint32))


def out_projection(rng: np.random.Generator, hidden: int, cols: int = 96):
    """Random out-projection weights, bias and attention output: the router sees residual + W·attn + b."""
    return (random_bf16(rng, (hidden, cols), scale=0.05), random_bf16(rng, hidden, scale=0.1),
            random_bf16(rng, cols))


def gate(rng: np.random.Generator, experts: int, hidden: int):
    return random_bf16(rng, (experts, hidden), scale=0.05), random_bf16(rng, experts, scale=0.5)


def route(x, norm_scale, gate_w, gate_b, k, rng):
    """The out-projection + router kernel: (new residual, x_normed, ids, weights)."""
    w_o, b_o, attn = out_projection(rng, x.size)
    return K.bf16_gemv_bias_residual_router(w_o, b_o, attn, x, norm_scale, gate_w, gate_b, k, EPS)


# hidden 3104: mlp1 normalises the inputs past the 3072 it holds in registers from L2.
@pytest.mark.parametrize(("experts", "inter", "hidden"), [(32, 2880, 2880), (128, 96, 64), (8, 64, 3104)])
def test_layers_chained_match_one_kernel_at_a_time(experts: int, inter: int, hidden: int) -> None:
    """[out-projection + router partials] → mlp1 → mlp2, each routing from the partials, launched back to back
    for several layers as the decode graph does (each launch may start before the previous one ends:
    programmatic dependent launch, and the partials are rewritten layer after layer), gives the same bits as the
    kernels run one at a time with a host sync after each, routed by launch_route. mlp2 routes from the
    partials before its own dependency wait, and each layer routes differently, so a read of stale partials or
    activations would show."""
    rng = np.random.default_rng(experts + inter + hidden)
    b1, s1 = random_mxfp4(rng, experts, 2 * inter, hidden)
    b2, s2 = random_mxfp4(rng, experts, hidden, inter)
    bias1, bias2 = random_bf16(rng, (experts, 2 * inter)), random_bf16(rng, (experts, hidden))
    gate_w, gate_b = gate(rng, experts, hidden)
    w_o, b_o, attn = out_projection(rng, hidden)
    norm_scale = rng.uniform(0.5, 2.0, hidden).astype(np.float32)
    x = (rng.standard_normal(hidden) * 3).astype(np.float32)
    layers = 4
    chained = K.moe_layers(x, w_o, b_o, attn, norm_scale, gate_w, gate_b, b1, s1, bias1, b2, s2, bias2, 4, ALPHA,
                           LIMIT, EPS, layers)

    routes = set()
    for _ in range(layers):
        x, xn, ids, weights = K.bf16_gemv_bias_residual_router(w_o, b_o, attn, x, norm_scale, gate_w, gate_b, 4, EPS)
        act = K.bf16_mxfp4w_moe_mlp1_swiglu(xn, ids, b1, s1, bias1, ALPHA, LIMIT)
        x = K.bf16_mxfp4w_moe_mlp2_residual(act, ids, weights, b2, s2, bias2, x)
        routes.add(tuple(sorted(ids.tolist())))
    assert np.isfinite(x).all()
    assert len(routes) > 1, "every layer took the same experts: stale ids would go unnoticed"
    assert np.array_equal(chained.view(np.uint32), x.view(np.uint32))


def test_layers_chained_with_a_loose_input_bound() -> None:
    """mlp1 stages its input at the scale of sqrt(hidden) · max |norm_scale| (the route's x_bound), which one huge
    norm scale on a tiny residual element puts ~2^16 above the input's largest value: the chained layers still
    match the kernels run one at a time (whose mlp1 scales by the input's own largest value) to fp32 rounding."""
    rng = np.random.default_rng(31)
    experts, inter, hidden = 32, 96, 128
    b1, s1 = random_mxfp4(rng, experts, 2 * inter, hidden)
    b2, s2 = random_mxfp4(rng, experts, hidden, inter)
    bias1, bias2 = random_bf16(rng, (experts, 2 * inter)), random_bf16(rng, (experts, hidden))
    gate_w, gate_b = gate(rng, experts, hidden)
    w_o, b_o, attn = out_projection(rng, hidden)
    b_o[0], w_o[0] = 0, 0  # residual element 0 stays as set below
    norm_scale = rng.uniform(0.5, 2.0, hidden).astype(np.float32)
    norm_scale[0] = 1e4
    x = (rng.standard_normal(hidden) * 3).astype(np.float32)
    x[0] = 1e-6
    chained = K.moe_layers(x, w_o, b_o, attn, norm_scale, gate_w, gate_b, b1, s1, bias1, b2, s2, bias2, 4, ALPHA,
                           LIMIT, EPS, 1)
    x, xn, ids, weights = K.bf16_gemv_bias_residual_router(w_o, b_o, attn, x, norm_scale, gate_w, gate_b, 4, EPS)
    act = K.bf16_mxfp4w_moe_mlp1_swiglu(xn, ids, b1, s1, bias1, ALPHA, LIMIT)
    one_by_one = K.bf16_mxfp4w_moe_mlp2_residual(act, ids, weights, b2, s2, bias2, x)
    assert np.isfinite(chained).all()
    assert np.allclose(chained, one_by_one, rtol=1e-5, atol=1e-5 * np.abs(one_by_one).max())


def router_reference(x, norm_scale, gate_w, gate_b, k):
    """float64 logits of gate_w · (rmsnorm(x) · norm_scale) + gate_b (the normed x unrounded, as the kernel
    takes it) and the top k, ties to the lower id."""
    xf = x.astype(np.float64)
    xn = xf / np.sqrt(np.mean(xf * xf) + EPS) * norm_scale
    logits = from_bf16(gate_w) @ xn + from_bf16(gate_b)
    order = np.lexsort((np.arange(logits.size), -logits))
    return logits, order[:k], xn


# (experts, hidden, k): the 20b and 120b shapes, 256 experts (the most), odd tile counts, a hidden size off the
# 16-row tile (the last tile has 8 rows), and k = 1 and 8.
@pytest.mark.parametrize(("experts", "hidden", "k"), [(32, 2880, 4), (128, 2880, 4), (128, 64, 4), (32, 96, 4),
                                                      (4, 8, 4), (256, 72, 8), (33, 2888, 1), (8, 40, 8)])
def test_router(experts: int, hidden: int, k: int) -> None:
    rng = np.random.default_rng(experts + hidden + k)
    residual = (rng.standard_normal(hidden) * 3).astype(np.float32)
    norm_scale = rng.uniform(0.5, 2.0, hidden).astype(np.float32)
    gate_w, gate_b = gate(rng, experts, hidden)
    x, xn, ids, weights = route(residual, norm_scale, gate_w, gate_b, k, rng)
    assert np.isfinite(x).all()  # the out-projection itself: test_gemv_bf16.py

    ref_xn = rmsnorm_bf16(x, norm_scale, EPS)
    ulps = np.abs(xn.astype(np.int32) - ref_xn.astype(np.int32))
    assert ulps.max() <= 1 and (ulps > 0).mean() < 0.01, "x_normed differs from bf16(rmsnorm) beyond rounding"

    logits, ref_ids, xn_exact = router_reference(x, norm_scale, gate_w, gate_b, k)
    sorted_logits = np.sort(logits)[::-1]
    margins = -np.diff(sorted_logits)[:k]  # gaps around the first k ranks
    tol = 1e-5 * (np.abs(from_bf16(gate_w)) @ np.abs(xn_exact) + 1).max()
    if margins.min() > tol:
        assert ids.tolist() == ref_ids.tolist()
    else:
        assert set(ids.tolist()) <= set(np.argsort(-logits)[: k + 1].tolist())
    ref_w = np.exp(logits[ids] - logits[ids].max())
    ref_w /= ref_w.sum()
    assert np.allclose(weights, ref_w, rtol=1e-5, atol=1e-6)
    assert abs(float(weights.sum()) - 1.0) < 1e-5


# Ties across lanes of the routing warp (expert e sits in lane e % 32) and, at 128 experts, within one lane.
@pytest.mark.parametrize(("experts", "tied"), [(32, None), (128, None), (128, [101, 37, 5])],
                         ids=["32-lanes", "128-lanes", "128-one-lane"])
def test_router_ties_prefer_lower_ids(experts: int, tied: list[int] | None) -> None:
    rng = np.random.default_rng(3)
    hidden = 2880
    residual = rng.standard_normal(hidden).astype(np.float32)
    norm_scale = np.ones(hidden, np.float32)
    gate_w, gate_b, tied = tied_gate(rng, experts, hidden, tied)
    x, _, ids, weights = route(residual, norm_scale, gate_w, gate_b, 4, rng)
    assert ids[:3].tolist() == sorted(tied)
    assert weights[0] == weights[1] == weights[2]
    _, ref_ids, _ = router_reference(x, norm_scale, gate_w, gate_b, 4)
    assert ids[3] == ref_ids[3]


def test_router_is_deterministic_and_flags_a_non_finite_residual() -> None:
    rng = np.random.default_rng(11)
    hidden, experts = 2880, 128
    residual = (rng.standard_normal(hidden) * 3).astype(np.float32)
    norm_scale = rng.uniform(0.5, 2.0, hidden).astype(np.float32)
    gate_w, gate_b = gate(rng, experts, hidden)
    w_o, b_o, attn = out_projection(rng, hidden)
    runs = [K.bf16_gemv_bias_residual_router(w_o, b_o, attn, residual, norm_scale, gate_w, gate_b, 4, EPS)
            for _ in range(3)]
    for other in runs[1:]:
        for a, b in zip(runs[0], other):
            assert np.array_equal(a.view(np.uint8), b.view(np.uint8))
    residual[100] = np.nan
    _, _, ids, _ = K.bf16_gemv_bias_residual_router(w_o, b_o, attn, residual, norm_scale, gate_w, gate_b, 4, EPS)
    assert ((ids < 0) | (ids >= experts)).all(), "a NaN residual must give ids mlp1 turns into NaN, not a route"


def test_bad_arguments_raise() -> None:
    rng = np.random.default_rng(1)
    blocks, scales = random_mxfp4(rng, 4, 64, 64)
    bias = random_bf16(rng, (4, 64))
    x = random_bf16(rng, 64)
    with pytest.raises(ValueError, match="expert ids"):
        K.bf16_mxfp4w_moe_mlp1_swiglu(x, np.array([0, 1, 2, 9], np.int32), blocks, scales, bias, ALPHA, LIMIT)
    with pytest.raises(ValueError, match="k = 5"):
        K.bf16_mxfp4w_moe_mlp1_swiglu(x, np.array([0, 1, 2, 3, 0], np.int32), blocks, scales, bias, ALPHA, LIMIT)
    with pytest.raises(ValueError, match="experts"):  # k > experts
        route(np.ones(64, np.float32), np.ones(64, np.float32), random_bf16(rng, (4, 64)), random_bf16(rng, 4), 5, rng)
    with pytest.raises(ValueError, match="experts"):  # more experts than the router's 256
        route(np.ones(64, np.float32), np.ones(64, np.float32), random_bf16(rng, (257, 64)), random_bf16(rng, 257), 4,
              rng)
    with pytest.raises(ValueError, match="multiple of 8"):
        route(np.ones(12, np.float32), np.ones(12, np.float32), random_bf16(rng, (4, 12)), random_bf16(rng, 4), 2, rng)
