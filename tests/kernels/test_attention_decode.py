"""launch_attention_decode (csrc/cuda/attention_decode.cu) against float64 NumPy: one query token, GQA, one
sink per head in the softmax denominator (gpt_oss/torch/model.py `sdpa`), sliding ring and full caches,
contexts 1 .. 32k, with the split-KV combine forced to one split, the automatic count and many empty splits."""

from __future__ import annotations

import numpy as np
import pytest
from gpt_oss_native import _C

if not _C.cuda_devices():
    pytest.skip("needs an NVIDIA GPU and a CUDA build of _C", allow_module_level=True)

pytestmark = pytest.mark.cuda

HEAD_DIM = 64
POISON = 0x7F80  # bf16 +inf: any read of a slot outside the valid range turns the output into NaN/inf


def to_bf16(x: np.ndarray) -> np.ndarray:
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)


def from_bf16(bits: np.ndarray) -> np.ndarray:
    return (bits.astype(np.uint32) << 16).view(np.float32).astype(np.float64)


def reference(q: np.ndarray, k: np.ndarray, v: np.ndarray, sinks: np.ndarray, length: int) -> np.ndarray:
    """sdpa for one token over cache slots [0, length), float64."""
    kv_heads = k.shape[0]
    group = len(sinks) // kv_heads
    out = np.empty((len(sinks), HEAD_DIM))
    for g in range(kv_heads):
        keys, values = from_bf16(k[g, :length]), from_bf16(v[g, :length])
        for h in range(g * group, (g + 1) * group):
            logits = np.append(keys @ q[h].astype(np.float64) / np.sqrt(HEAD_DIM), sinks[h])
            w = np.exp(logits - logits.max())
            out[h] = (w[:-1] / w.sum()) @ values
    return out


def run_case(q_heads: int, kv_heads: int, length: int, sliding: bool, max_splits: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    capacity = 128 if sliding else length + 37
    pos = length - 1  # past the window, the ring has wrapped: every slot is valid
    valid = min(length, capacity)
    k = to_bf16(rng.standard_normal((kv_heads, capacity, HEAD_DIM)))
    v = to_bf16(rng.standard_normal((kv_heads, capacity, HEAD_DIM)))
    k[:, valid:] = POISON
    v[:, valid:] = POISON
    q = (rng.standard_normal(q_heads * HEAD_DIM) * 1.5).astype(np.float32)
    sinks = (rng.standard_normal(q_heads) * 2).astype(np.float32)

    first, second = _C.cuda_kernels.attention_decode(q, k, v, sinks, pos, max_splits)

    ours = from_bf16(first).reshape(q_heads, HEAD_DIM)
    ref = reference(q.reshape(q_heads, HEAD_DIM), k, v, sinks, valid)
    assert np.isfinite(ours).all(), "unwritten output or a read outside the valid slots"
    error = np.linalg.norm(ours - ref) / np.linalg.norm(ref)
    # bf16 output (one rounding, 2^-9 per element) and P rounded to bf16 for the tensor cores.
    assert error < 8e-3, f"relative L2 error {error:.2e}"
    np.testing.assert_array_equal(first, second)  # the combine re-armed its counters


HEADS = {"gpt-oss": (64, 8), "gqa2": (4, 2), "mqa6": (6, 1), "mha": (3, 3)}


@pytest.mark.parametrize("heads", HEADS.values(), ids=HEADS.keys())
# 1500 (full): 1537 slots, the short-cache grid: 4 splits of ≤ 512 keys, one cluster a KV head.
@pytest.mark.parametrize("length", [1, 127, 128, 129, 1500, 4097, 32768])
@pytest.mark.parametrize("sliding", [True, False], ids=["ring128", "full"])
def test_attention_matches_float64(heads: tuple[int, int], length: int, sliding: bool) -> None:
    run_case(*heads, length, sliding, max_splits=0, seed=length + 3 * sliding + heads[0])


@pytest.mark.parametrize("max_splits", [1, 3, 64])
# 128-key splits up to 4096 keys: 1024 is 8 splits, 1025 9, 2048 16 (one cluster where clusters of 16 are used),
# 2049 17 (the workspace path); 5000 is 10 splits of 512.
@pytest.mark.parametrize("length", [1, 33, 129, 1024, 1025, 2048, 2049, 5000])
def test_any_split_count_gives_the_same_attention(max_splits: int, length: int) -> None:
    run_case(64, 8, length, False, max_splits, seed=max_splits * 1000 + length)


def test_rejects_groups_wider_than_eight() -> None:
    q = np.zeros(9 * HEAD_DIM, np.float32)
    cache = np.zeros((1, 4, HEAD_DIM), np.uint16)
    with pytest.raises(ValueError, match="q_heads / kv_heads"):
        _C.cuda_kernels.attention_decode(q, cache, cache, np.zeros(9, np.float32), 0, 0)
