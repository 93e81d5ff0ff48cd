"""launch_prefill_attention + launch_prefill_kv_commit (csrc/cuda/prefill.cu) against float64 NumPy: T queries at
positions pos0 .. pos0 + T - 1, causal, GQA, one sink per head in the denominator (gpt_oss/torch/model.py
`sdpa`), sliding window (a query at p sees keys p - window + 1 .. p) or full. Keys before pos0 come from the
cache (a ring of `window` slots for sliding layers), the chunk's own from the chunk buffers. Covers chunks
longer than the ring (keys a later query needs are overwritten in the ring by the commit, so attention must
read them from the chunk), contexts that cross the window, and the commit (only the last min(T, capacity)
rows land in the cache, every other slot untouched). Cache slots no query may see hold bf16 +inf, so reading
one makes the output non-finite."""

from __future__ import annotations

import numpy as np
import pytest
from gpt_oss_native import _C
from weights_reference import from_bf16, to_bf16

if not _C.cuda_devices():
    pytest.skip("needs an NVIDIA GPU and a CUDA build of _C", allow_module_level=True)

pytestmark = pytest.mark.cuda
D = 64
POISON = 0x7F80  # bf16 +inf


def reference(q, keys, values, sinks, pos0, window):
    """q [T, H, 64]; keys / values float64 [kv_heads, pos0 + T, 64] by position; → [T, H * 64]."""
    tokens, q_heads = q.shape[:2]
    kv_heads = keys.shape[0]
    group = q_heads // kv_heads
    sink_logits = sinks.astype(np.float64).reshape(kv_heads, group, 1)
    out = np.empty((tokens, kv_heads, group, D))
    for t in range(tokens):
        p = pos0 + t
        lo = max(0, p - window + 1) if window else 0
        qt = q[t].astype(np.float64).reshape(kv_heads, group, D)
        logits = np.einsum("hgd,hnd->hgn", qt, keys[:, lo : p + 1]) / np.sqrt(D)
        logits = np.concatenate([logits, sink_logits], axis=-1)
        w = np.exp(logits - logits.max(axis=-1, keepdims=True))
        w /= w.sum(axis=-1, keepdims=True)
        out[t] = np.einsum("hgn,hnd->hgd", w[..., :-1], values[:, lo : p + 1])
    return out.reshape(tokens, q_heads * D)


def run_case(q_heads: int, kv_heads: int, pos0: int, tokens: int, window: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    total = pos0 + tokens
    capacity = window if window else total + 5
    k_all = to_bf16(rng.standard_normal((kv_heads, total, D)))
    v_all = to_bf16(rng.standard_normal((kv_heads, total, D)))
    q = rng.standard_normal((tokens, q_heads, D)).astype(np.float32) * 2
    sinks = rng.standard_normal(q_heads).astype(np.float32)
    # The cache as decode leaves it after pos0 tokens: position p in slot p % capacity; slots no query of the
    # chunk may read are poisoned.
    k_cache = np.full((kv_heads, capacity, D), POISON, np.uint16)
    v_cache = np.full((kv_heads, capacity, D), POISON, np.uint16)
    first_needed = max(0, pos0 - window + 1) if window else 0
    for p in range(first_needed, pos0):
        k_cache[:, p % capacity] = k_all[:, p]
        v_cache[:, p % capacity] = v_all[:, p]
    k_chunk = np.ascontiguousarray(k_all[:, pos0:].transpose(1, 0, 2))
    v_chunk = np.ascontiguousarray(v_all[:, pos0:].transpose(1, 0, 2))

    out, k_after, v_after = _C.cuda_kernels.prefill_attention(q, k_chunk, v_chunk, k_cache, v_cache, sinks, pos0,
                                                              window)
    ref = reference(q, from_bf16(k_all), from_bf16(v_all), sinks, pos0, window)
    got = from_bf16(out)
    assert np.isfinite(got).all(), "a masked or unwritten slot was read, or the output was not written"
    # bf16 output rounding (2^-9 relative) over fp32 arithmetic.
    error = np.abs(got - ref).max() / np.abs(ref).max()
    assert error < 8e-3, f"max error {error:.2e} of the largest output"
    rel = np.linalg.norm(got - ref) / np.linalg.norm(ref)
    assert rel < 4e-3, f"relative L2 {rel:.2e}"

    expected_k, expected_v = k_cache.copy(), v_cache.copy()
    for p in range(max(pos0, total - capacity), total):
        expected_k[:, p % capacity] = k_all[:, p]
        expected_v[:, p % capacity] = v_all[:, p]
    np.testing.assert_array_equal(k_after, expected_k)
    np.testing.assert_array_equal(v_after, expected_v)


HEADS = {"gpt-oss": (64, 8), "gqa2": (4, 2), "mqa6": (6, 1), "mha": (3, 3)}


@pytest.mark.parametrize("heads", HEADS.values(), ids=HEADS.keys())
@pytest.mark.parametrize("tokens", [1, 7, 16, 129, 300])
@pytest.mark.parametrize("pos0", [0, 5, 127, 128, 1000])
@pytest.mark.parametrize("window", [128, 0], ids=["ring128", "full"])
def test_prefill_attention_matches_float64(heads: tuple[int, int], tokens: int, pos0: int, window: int) -> None:
    run_case(*heads, pos0, tokens, window, seed=tokens * 31 + pos0 + window + heads[0])


@pytest.mark.parametrize(("pos0", "tokens"), [(0, 40), (3, 17), (20, 50), (64, 1)])
def test_chunks_longer_than_a_small_ring(pos0: int, tokens: int) -> None:
    """window 16: the commit wraps the ring several times within one chunk."""
    run_case(4, 2, pos0, tokens, 16, seed=pos0 + tokens)


def test_rejects_a_cache_that_lost_needed_keys() -> None:
    q = np.zeros((4, 2, D), np.float32)
    chunk = np.zeros((4, 1, D), np.uint16)
    cache = np.zeros((1, 8, D), np.uint16)
    # A full layer (window 0) whose cache is smaller than the positions: the keys at 0..3 were overwritten.
    with pytest.raises(ValueError, match="no longer holds"):
        _C.cuda_kernels.prefill_attention(q, chunk, chunk, cache, cache, np.zeros(2, np.float32), 10, 0)
    with pytest.raises(ValueError, match="q_heads / kv_heads"):
        _C.cuda_kernels.prefill_attention(np.zeros((4, 9, D), np.float32), chunk, chunk, cache, cache,
                                          np.zeros(9, np.float32), 0, 0)
