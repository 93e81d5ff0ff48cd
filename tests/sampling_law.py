"""The sampling law (csrc/cpu/sampling.cpp) re-implemented in float64 NumPy, independent of the native code: the
kept set, the per-token uniforms of csrc/core/rng.h (splitmix64 in Python ints, and vectorised in uint64), and the
Gumbel-max keys z_i + g_i."""

from __future__ import annotations

import numpy as np

MASK64 = (1 << 64) - 1
DRAW_MULTIPLIER = 0xD1B54A32D192ED03
TOKEN_MULTIPLIER = 0x9E6C63D0676A9A99
# Two keys closer than this (relative to the larger key, at least 1 in absolute terms) may be ordered either way
# by implementations whose log differs in the last ulp (libm, NumPy, CUDA); keys are ~1e-15 exact.
NEAR_TIE = 1e-12


def splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & MASK64
    return x ^ (x >> 31)


def draw_key(seed: int, draw: int) -> int:
    return splitmix64(splitmix64(seed) ^ ((draw * DRAW_MULTIPLIER) & MASK64))


def token_uniform(seed: int, draw: int, token: int) -> float:
    """u_token of a draw in Python ints: (52 random bits + 1/2) / 2^52, in the open interval (0, 1)."""
    bits = splitmix64(draw_key(seed, draw) ^ ((token * TOKEN_MULTIPLIER) & MASK64))
    return ((bits >> 12) + 0.5) / 2.0**52


def token_uniforms(seed: int, draw: int, tokens: np.ndarray) -> np.ndarray:
    """token_uniform for many tokens at once (uint64 arithmetic wraps like the Python ints masked to 64 bits)."""
    x = np.uint64(draw_key(seed, draw)) ^ (tokens.astype(np.uint64) * np.uint64(TOKEN_MULTIPLIER))
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    x = x ^ (x >> np.uint64(31))
    return ((x >> np.uint64(12)).astype(np.float64) + 0.5) / 2.0**52


def kept_set(logits: np.ndarray, temperature: float, top_p: float, top_k: int) -> tuple[np.ndarray, np.ndarray]:
    """K in descending order (logit, then lower index) and softmax(logits / T) renormalised over K, in float64.
    T and top_p are taken as the float32 values the native samplers receive."""
    temperature, top_p = float(np.float32(temperature)), float(np.float32(top_p))
    logits = logits.astype(np.float64)
    order = np.lexsort((np.arange(logits.size), -logits))
    if 0 < top_k < logits.size:
        order = order[:top_k]
    z = logits[order] / temperature
    p = np.exp(z - z.max())
    p /= p.sum()
    if top_p < 1.0:
        keep = int(np.searchsorted(np.cumsum(p), top_p, side="left")) + 1  # the first prefix with mass >= top_p
        order, p = order[:keep], p[:keep] / p[:keep].sum()
    return order, p


def law_token(logits: np.ndarray, temperature: float, top_p: float, top_k: int, seed: int,
              draw: int) -> tuple[int, np.ndarray]:
    """The law's token, and every kept token whose key is within NEAR_TIE of the best one (an implementation may
    answer any of those, and nothing else; normally the token alone)."""
    logits = np.asarray(logits, dtype=np.float32)
    if temperature == 0:
        best = int(np.argmax(logits))
        return best, np.array([best])
    kept, _ = kept_set(logits, temperature, top_p, top_k)
    z = logits[kept].astype(np.float64) / float(np.float32(temperature))
    keys = z - np.log(-np.log(token_uniforms(seed, draw, kept)))
    top = keys.max()
    best = int(kept[keys == top].min())  # ties → lower index
    near = np.sort(kept[keys >= top - NEAR_TIE * max(1.0, abs(top))])
    return best, near
