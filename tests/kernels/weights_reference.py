"""Float64 NumPy references shared by the weight-streaming kernel tests and benchmarks/bench_kernels_weights.py:
bf16 rounding, MXFP4 dequantisation, the gpt-oss SwiGLU and RMSNorm (the sampling law: tests/sampling_law.py)."""

from __future__ import annotations

import numpy as np

# E2M1 values of the 16 codes (core/model.h kFp4Values).
FP4_VALUES = np.array([0, 0.5, 1, 1.5, 2, 3, 4, 6, -0.0, -0.5, -1, -1.5, -2, -3, -4, -6], dtype=np.float64)


def to_bf16(x: np.ndarray) -> np.ndarray:
    """float → bf16 bit patterns (uint16), round to nearest even."""
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
    return bits.astype(np.uint16)


def from_bf16(bits: np.ndarray) -> np.ndarray:
    return (np.ascontiguousarray(bits).astype(np.uint32) << 16).view(np.float32).astype(np.float64)


def random_bf16(rng: np.random.Generator, shape, scale: float = 1.0) -> np.ndarray:
    return to_bf16(rng.standard_normal(shape, dtype=np.float32) * np.float32(scale))


def random_mxfp4(rng: np.random.Generator, experts: int, rows: int, cols: int, scale_range=(119, 127)):
    """Random checkpoint-layout experts: blocks [E, rows, cols/32, 16] u8, scales [E, rows, cols/32] u8."""
    blocks = rng.integers(0, 256, size=(experts, rows, cols // 32, 16), dtype=np.uint8)
    scales = rng.integers(scale_range[0], scale_range[1] + 1, size=(experts, rows, cols // 32), dtype=np.uint8)
    return blocks, scales


def tied_gate(rng: np.random.Generator, experts: int, hidden: int, tied: list[int] | None = None):
    """A router gate where experts `tied` (default experts - 1, 5, 17: three lanes of the routing warp) have
    identical rows and a bias of 8, well above the rest: bit-identical logits, so the top-k must order them by id.
    Returns (gate_w, gate_b, tied ids)."""
    gate_w = random_bf16(rng, (experts, hidden), scale=0.01)
    gate_b = to_bf16(np.zeros(experts, np.float32))
    tied = [experts - 1, 5, 17] if tied is None else tied
    for e in tied:
        gate_w[e] = gate_w[tied[0]]
    gate_b[tied] = to_bf16(np.full(len(tied), 8.0, np.float32))
    return gate_w, gate_b, tied


def unembedding_inputs(vocab: int, hidden: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unembedding test inputs: bf16 w [vocab, hidden], norm_scale and x [hidden] fp32, x[0] > 0 (column 0's weight
    then sets a row's logit sign)."""
    rng = np.random.default_rng(seed)
    w = random_bf16(rng, (vocab, hidden), scale=0.02)
    norm_scale = rng.uniform(0.5, 2.0, hidden).astype(np.float32)
    x = (rng.standard_normal(hidden) * 5).astype(np.float32)
    x[0] = abs(x[0]) + 1.0
    return w, norm_scale, x


def huge_tie_first_and_last(w: np.ndarray) -> np.ndarray:
    """A copy of the bf16 unembedding w [vocab, hidden] whose first and last rows are equal and give logits so large
    (1e30 · x_normed[0]) that the Gumbel noise (|g| < 37) vanishes in their double ulp: the lower id must win every
    draw. The two rows sit in the first and the last CTA's share."""
    tied = w.copy()
    tied[0] = tied[-1] = 0
    tied[0, 0] = tied[-1, 0] = to_bf16(np.array([1e30], np.float32))[0]
    return tied


def dequant_mxfp4(blocks: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """[..., rows, cols/32, 16] codes + [..., rows, cols/32] E8M0 → float64 [..., rows, cols] (value 2k in the
    low nibble of byte k, 2k + 1 in the high nibble)."""
    lo = FP4_VALUES[blocks & 0x0F]
    hi = FP4_VALUES[blocks >> 4]
    values = np.stack([lo, hi], axis=-1).reshape(*blocks.shape[:-1], 32)
    values = values * np.exp2(scales.astype(np.float64) - 127.0)[..., None]
    return values.reshape(*blocks.shape[:-2], blocks.shape[-2] * 32)


def swiglu(pre: np.ndarray, alpha: float = 1.702, limit: float = 7.0) -> np.ndarray:
    """gpt_oss.torch.model.swiglu: interleaved glu (even) / linear (odd), clamped, (linear + 1)."""
    glu = np.minimum(pre[..., ::2], limit)
    lin = np.clip(pre[..., 1::2], -limit, limit)
    return glu / (1.0 + np.exp(-alpha * glu)) * (lin + 1.0)


def rmsnorm_bf16(x: np.ndarray, scale: np.ndarray, eps: float) -> np.ndarray:
    """bf16(x · rsqrt(mean(x²) + eps) · scale) as bit patterns (gpt_oss RMSNorm with a bf16 output)."""
    x = x.astype(np.float64)
    t = x / np.sqrt(np.mean(x * x) + eps)
    return to_bf16((t * scale.astype(np.float64)).astype(np.float32))
