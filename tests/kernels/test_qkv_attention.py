"""launch_qkv_attention (csrc/cuda/qkv_attention.cu) against float64 NumPy: RMSNorm → qkv GEMV + bias → YaRN RoPE
→ k / v into the cache slot pos % capacity → attention of the one query token with a sink per head, sliding ring
and full caches, contexts 1 .. 32k, gpt-oss's 64 / 8 heads and narrower groups."""

from __future__ import annotations

import math

import numpy as np
import pytest
from gpt_oss_native import _C

if not _C.cuda_devices():
    pytest.skip("needs an NVIDIA GPU and a CUDA build of _C", allow_module_level=True)

pytestmark = pytest.mark.cuda

from test_attention_decode import POISON, reference
from test_norm_rope import GPT_OSS, from_bf16, rotate, to_bf16, yarn_cos_sin

HEAD_DIM = 64
# (hidden, q_heads, kv_heads): gpt-oss's attention, a narrower group over an odd width, one KV head.
SHAPES = {"gpt-oss": (2880, 64, 8), "gqa4": (264, 12, 3), "mqa2": (136, 2, 1)}


def supported(hidden: int, q_heads: int, kv_heads: int) -> bool:
    return _C.cuda_kernels.qkv_attention_supported(hidden, q_heads, kv_heads, HEAD_DIM)


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
@pytest.mark.parametrize("pos", [0, 15, 127, 128, 129, 1024, 4097, 32767])
@pytest.mark.parametrize("sliding", [True, False], ids=["ring128", "full"])
def test_qkv_attention_matches_float64(shape: tuple[int, int, int], pos: int, sliding: bool) -> None:
    hidden, q_heads, kv_heads = shape
    if not supported(hidden, q_heads, kv_heads):
        pytest.skip("this device cannot hold every KV head's 16-CTA cluster at once")
    rng = np.random.default_rng(pos * 7 + hidden + sliding)
    rows = (q_heads + 2 * kv_heads) * HEAD_DIM
    capacity = 128 if sliding else pos + 37
    valid = min(pos + 1, capacity)
    slot = pos % capacity
    x = (rng.standard_normal(hidden) * 3 + 0.5).astype(np.float32)
    scale = (1 + 0.1 * rng.standard_normal(hidden)).astype(np.float32)
    w = to_bf16(rng.standard_normal((rows, hidden)) / math.sqrt(hidden))
    bias = to_bf16(0.1 * rng.standard_normal(rows))
    sinks = (rng.standard_normal(q_heads) * 2).astype(np.float32)
    k_cache = to_bf16(rng.standard_normal((kv_heads, capacity, HEAD_DIM)))
    v_cache = to_bf16(rng.standard_normal((kv_heads, capacity, HEAD_DIM)))
    k_cache[:, valid:] = POISON  # a read outside the valid slots turns the output into NaN / inf
    v_cache[:, valid:] = POISON
    k_cache[:, slot] = POISON  # the newest slot holds a stale row until this step writes it
    v_cache[:, slot] = POISON

    first, second, k_out, v_out = _C.cuda_kernels.qkv_attention(
        x, scale, w, bias, sinks, kv_heads, pos, k_cache, v_cache,
        GPT_OSS["theta"], GPT_OSS["factor"], GPT_OSS["initial"], GPT_OSS["alpha"], GPT_OSS["beta"], 1e-5,
    )

    x64 = x.astype(np.float64)
    xn = x64 / np.sqrt(np.mean(x64**2) + 1e-5) * scale
    qkv = from_bf16(w) @ xn + from_bf16(bias)
    cos, sin = yarn_cos_sin(pos, HEAD_DIM, **GPT_OSS)
    q_ref = rotate(qkv[: q_heads * HEAD_DIM].reshape(q_heads, HEAD_DIM), cos, sin)
    k_ref = rotate(qkv[q_heads * HEAD_DIM : (q_heads + kv_heads) * HEAD_DIM].reshape(kv_heads, HEAD_DIM), cos, sin)
    v_ref = qkv[(q_heads + kv_heads) * HEAD_DIM :].reshape(kv_heads, HEAD_DIM)

    # The new row in the cache (bf16: one rounding, 2^-9 a value); every other slot untouched.
    assert np.linalg.norm(from_bf16(k_out[:, slot]) - k_ref) / np.linalg.norm(k_ref) < 4e-3
    assert np.linalg.norm(from_bf16(v_out[:, slot]) - v_ref) / np.linalg.norm(v_ref) < 4e-3
    others = np.arange(capacity) != slot
    np.testing.assert_array_equal(k_out[:, others], k_cache[:, others])
    np.testing.assert_array_equal(v_out[:, others], v_cache[:, others])

    # Attention over the cache as the kernel wrote it (its bf16 k / v), q in float64.
    ours = from_bf16(first).reshape(q_heads, HEAD_DIM)
    ref = reference(q_ref, k_out, v_out, sinks, valid)
    assert np.isfinite(ours).all(), "unwritten output or a read outside the valid slots"
    error = np.linalg.norm(ours - ref) / np.linalg.norm(ref)
    # bf16 output, P rounded to bf16 for the tensor cores, q split into bf16 hi + lo.
    assert error < 8e-3, f"relative L2 error {error:.2e}"
    np.testing.assert_array_equal(first, second)


def test_agrees_with_the_two_launch_path() -> None:
    """The fused launch and norm_qkv_rope + attention_decode compute the same attention (within bf16)."""
    hidden, q_heads, kv_heads = SHAPES["gpt-oss"]
    if not supported(hidden, q_heads, kv_heads):
        pytest.skip("this device cannot hold every KV head's 16-CTA cluster at once")
    rng = np.random.default_rng(11)
    rows, pos, capacity = (q_heads + 2 * kv_heads) * HEAD_DIM, 700, 1024
    x = rng.standard_normal(hidden).astype(np.float32)
    scale = np.ones(hidden, np.float32)
    w = to_bf16(rng.standard_normal((rows, hidden)) / math.sqrt(hidden))
    bias = to_bf16(0.1 * rng.standard_normal(rows))
    sinks = rng.standard_normal(q_heads).astype(np.float32)
    k_cache = to_bf16(rng.standard_normal((kv_heads, capacity, HEAD_DIM)))
    v_cache = to_bf16(rng.standard_normal((kv_heads, capacity, HEAD_DIM)))
    rope = (GPT_OSS["theta"], GPT_OSS["factor"], GPT_OSS["initial"], GPT_OSS["alpha"], GPT_OSS["beta"], 1e-5)

    fused, _, k_fused, v_fused = _C.cuda_kernels.qkv_attention(
        x, scale, w, bias, sinks, kv_heads, pos, k_cache, v_cache, *rope
    )
    q, k_split, v_split = _C.cuda_kernels.norm_qkv_rope(
        x, scale, w, bias, q_heads, kv_heads, HEAD_DIM, pos, k_cache, v_cache, *rope
    )
    split, _ = _C.cuda_kernels.attention_decode(q, k_split, v_split, sinks, pos, 0)
    # The same GEMV; the RMSNorm's sum of squares is added in another order (10 warps, not 8): ≤ 1 bf16 ulp apart.
    for ours, theirs in ((k_fused, k_split), (v_fused, v_split)):
        a, b = from_bf16(ours), from_bf16(theirs)
        assert np.linalg.norm(a - b) / np.linalg.norm(b) < 1e-3
    a, b = from_bf16(fused), from_bf16(split)
    assert np.linalg.norm(a - b) / np.linalg.norm(b) < 4e-3
