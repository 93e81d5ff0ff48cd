"""launch_norm_qkv_rope (csrc/cuda/norm_rope.cu) against a float64 NumPy reference: RMSNorm → qkv GEMV + bias →
YaRN RoPE (half-split rotation, as gpt_oss/torch/model.py) → q out, k/v written into one cache slot."""

from __future__ import annotations

import math

import numpy as np
import pytest
from gpt_oss_native import _C

if not _C.cuda_devices():
    pytest.skip("needs an NVIDIA GPU and a CUDA build of _C", allow_module_level=True)

pytestmark = pytest.mark.cuda


def to_bf16(x: np.ndarray) -> np.ndarray:
    """float → bf16 bit patterns (uint16), round to nearest even."""
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
    return bits.astype(np.uint16)


def from_bf16(bits: np.ndarray) -> np.ndarray:
    return (bits.astype(np.uint32) << 16).view(np.float32).astype(np.float64)


def yarn_cos_sin(pos: int, head_dim: int, theta: float, factor: float, initial: int, alpha: float, beta: float):
    """gpt_oss.torch.model.RotaryEmbedding in float64, at one position."""
    half = head_dim // 2
    freq = theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    if factor > 1.0:
        concentration = 0.1 * math.log(factor) + 1.0
        low = half * math.log(initial / (beta * 2 * math.pi)) / math.log(theta)
        high = half * math.log(initial / (alpha * 2 * math.pi)) / math.log(theta)
        ramp = (np.arange(half, dtype=np.float64) - low) / (high - low)
        mask = 1 - np.clip(ramp, 0, 1)
        inv_freq = (1.0 / (factor * freq)) * (1 - mask) + (1.0 / freq) * mask
    else:
        concentration, inv_freq = 1.0, 1.0 / freq
    angle = pos * inv_freq
    return np.cos(angle) * concentration, np.sin(angle) * concentration


def rotate(heads: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    half = heads.shape[-1] // 2
    x1, x2 = heads[..., :half], heads[..., half:]
    return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


def rel_l2(ours: np.ndarray, ref: np.ndarray) -> float:
    return float(np.linalg.norm(ours - ref) / np.linalg.norm(ref))


GPT_OSS = {"theta": 150000.0, "factor": 32.0, "initial": 4096, "alpha": 1.0, "beta": 32.0}
# (hidden, q_heads, kv_heads, head_dim, rope): gpt-oss's attention shape, odd widths without YaRN, and a residual
# too wide for the RMSNorm's one round of loads (hidden > 3072: its loop path).
PLAIN = {"theta": 10000.0, "factor": 1.0, "initial": 4096, "alpha": 1.0, "beta": 32.0}
SHAPES = {
    "gpt-oss": (2880, 64, 8, 64, GPT_OSS),
    "odd": (264, 6, 2, 34, PLAIN),
    "short-yarn": (136, 4, 1, 64, GPT_OSS | {"initial": 512}),
    "wide": (3080, 2, 1, 16, PLAIN),
}


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
@pytest.mark.parametrize("pos", [0, 127, 128, 129, 4097, 32767])
@pytest.mark.parametrize("sliding", [True, False], ids=["ring128", "full"])
def test_norm_qkv_rope_matches_float64(shape: tuple, pos: int, sliding: bool) -> None:
    hidden, q_heads, kv_heads, head_dim, rope = shape
    rng = np.random.default_rng(pos * 7 + hidden + sliding)
    rows = (q_heads + 2 * kv_heads) * head_dim
    capacity = 128 if sliding else pos + 3
    x = (rng.standard_normal(hidden) * 3 + 0.5).astype(np.float32)
    scale = (1 + 0.1 * rng.standard_normal(hidden)).astype(np.float32)
    w = to_bf16(rng.standard_normal((rows, hidden)) / math.sqrt(hidden))
    bias = to_bf16(0.1 * rng.standard_normal(rows))
    k_cache = to_bf16(rng.standard_normal((kv_heads, capacity, head_dim)))  # other slots must stay as they are
    v_cache = to_bf16(rng.standard_normal((kv_heads, capacity, head_dim)))

    q, k_out, v_out = _C.cuda_kernels.norm_qkv_rope(
        x, scale, w, bias, q_heads, kv_heads, head_dim, pos, k_cache, v_cache,
        rope["theta"], rope["factor"], rope["initial"], rope["alpha"], rope["beta"], 1e-5,
    )

    x64 = x.astype(np.float64)
    xn = x64 / np.sqrt(np.mean(x64**2) + 1e-5) * scale
    qkv = from_bf16(w) @ xn + from_bf16(bias)
    cos, sin = yarn_cos_sin(pos, head_dim, **rope)
    q_ref = rotate(qkv[: q_heads * head_dim].reshape(q_heads, head_dim), cos, sin)
    k_ref = rotate(qkv[q_heads * head_dim : (q_heads + kv_heads) * head_dim].reshape(kv_heads, head_dim), cos, sin)
    v_ref = qkv[(q_heads + kv_heads) * head_dim :].reshape(kv_heads, head_dim)

    assert np.isfinite(q).all(), "q has unwritten (poisoned) entries"
    assert rel_l2(q.reshape(q_heads, head_dim), q_ref) < 1e-5
    slot = pos % capacity
    # k, v are stored in bf16: one rounding, relative 2^-9 per element.
    assert rel_l2(from_bf16(k_out[:, slot]), k_ref) < 4e-3
    assert rel_l2(from_bf16(v_out[:, slot]), v_ref) < 4e-3
    others = np.arange(capacity) != slot
    np.testing.assert_array_equal(k_out[:, others], k_cache[:, others])
    np.testing.assert_array_equal(v_out[:, others], v_cache[:, others])


def test_rejects_shapes_the_kernel_cannot_stream() -> None:
    rng = np.random.default_rng(0)
    hidden = 20  # not a multiple of 8
    rows = 4 * 64
    with pytest.raises(ValueError, match="multiple of 8"):
        _C.cuda_kernels.norm_qkv_rope(
            rng.standard_normal(hidden).astype(np.float32), np.ones(hidden, np.float32),
            np.zeros((rows, hidden), np.uint16), np.zeros(rows, np.uint16), 2, 1, 64, 0,
            np.zeros((1, 4, 64), np.uint16), np.zeros((1, 4, 64), np.uint16), 150000.0, 32.0, 4096, 1.0, 32.0, 1e-5,
        )
