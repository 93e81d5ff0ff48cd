"""CPU decode speed of gpt_oss_native: tokens per second of _C.Model(backend="cpu") on one sequence.

Random weights of the chosen shape are built in memory (speed does not depend on the values, only that they are
finite and O(1), so big tensors tile a small random pool). The default is the full gpt-oss-20b shape: about
13 GB of host memory. `--layers 4` gives a quick look at the per-layer cost.

    python benchmarks/cpu_decode.py [--model 20b|120b] [--layers N] [--prompt 32] [--tokens 32] [--threads 0]

Prints a table; the last line is JSON.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import time

import numpy as np
from gpt_oss_native import _C
from gpt_oss_native.config import GPT_OSS_20B, GPT_OSS_120B, ModelConfig

_POOL = 1 << 22
_FP4_RMS = math.sqrt(sum(v * v for v in (0, 0.5, 1, 1.5, 2, 3, 4, 6)) / 8)


def random_weights(config: ModelConfig, seed: int = 0) -> dict[str, np.ndarray]:
    """The internal weight dict (csrc/core/model.h), each tensor tiling a small random pool."""
    rng = np.random.default_rng(seed)
    normal = rng.standard_normal(_POOL, dtype=np.float32)
    codes = np.frombuffer(rng.bytes(_POOL), np.uint8)
    H, V, E, I = config.hidden_size, config.vocab_size, config.num_experts, config.intermediate_size
    q, D = config.num_attention_heads, config.head_dim

    def bf16(shape: tuple[int, ...], std: float) -> np.ndarray:
        bits = (normal * np.float32(std)).view(np.uint32) >> 16
        return np.resize(bits.astype(np.uint16), shape)

    def scales(shape: tuple[int, ...], fan_in: int) -> np.ndarray:
        center = 127 - round(math.log2(math.sqrt(fan_in) * _FP4_RMS))
        return np.resize((center - 1 + codes % 3).astype(np.uint8), shape)

    w = {
        "embedding.weight": bf16((V, H), 1.0),
        "norm.scale": np.ones(H, np.float32),
        "unembedding.weight": bf16((V, H), 1 / math.sqrt(H)),
    }
    for i in range(config.num_layers):
        b = f"block.{i}."
        w |= {
            b + "attn.norm.scale": np.ones(H, np.float32),
            b + "attn.qkv.weight": bf16((config.qkv_dim, H), 1 / math.sqrt(H)),
            b + "attn.qkv.bias": bf16((config.qkv_dim,), 0.1),
            b + "attn.sinks": np.zeros(q, np.float32),
            b + "attn.out.weight": bf16((H, q * D), 1 / math.sqrt(q * D)),
            b + "attn.out.bias": bf16((H,), 0.1),
            b + "mlp.norm.scale": np.ones(H, np.float32),
            b + "mlp.gate.weight": bf16((E, H), 1 / math.sqrt(H)),
            b + "mlp.gate.bias": bf16((E,), 0.1),
            b + "mlp.mlp1_weight.blocks": np.resize(codes, (E, 2 * I, H // 32, 16)),
            b + "mlp.mlp1_weight.scales": scales((E, 2 * I, H // 32), H),
            b + "mlp.mlp1_bias": bf16((E, 2 * I), 0.1),
            b + "mlp.mlp2_weight.blocks": np.resize(codes, (E, H, I // 32, 16)),
            b + "mlp.mlp2_weight.scales": scales((E, H, I // 32), I),
            b + "mlp.mlp2_bias": bf16((E, H), 0.1),
        }
    return w


def bytes_per_decoded_token(config: ModelConfig) -> int:
    """Weight bytes one decode step must read: attention, router, the routed experts, the unembedding."""
    H, I, k = config.hidden_size, config.intermediate_size, config.experts_per_token
    attn = (config.qkv_dim * H + H * config.num_attention_heads * config.head_dim) * 2
    router = config.num_experts * H * 2
    experts = k * (2 * I * H + H * I) * 17 // 32  # 4.25 bits per MXFP4 weight (codes + scales)
    return config.num_layers * (attn + router + experts) + config.vocab_size * H * 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=["20b", "120b"], default="20b")
    parser.add_argument("--layers", type=int, default=None, help="override the layer count (quick looks)")
    parser.add_argument("--prompt", type=int, default=32, help="prefill tokens before decoding")
    parser.add_argument("--tokens", type=int, default=32, help="decode steps timed")
    parser.add_argument("--threads", type=int, default=0, help="0: all cores")
    args = parser.parse_args()

    config = GPT_OSS_20B if args.model == "20b" else GPT_OSS_120B
    if args.layers is not None:
        config = config.replace(num_layers=args.layers)
    t0 = time.perf_counter()
    weights = random_weights(config)
    gb = sum(a.nbytes for a in weights.values()) / 1e9
    build_s = time.perf_counter() - t0
    model = _C.Model(config.to_native(), weights, backend="cpu", max_context=args.prompt + args.tokens + 8,
                     num_threads=args.threads)

    seq = model.new_sequence()
    prompt = np.random.default_rng(1).integers(0, config.vocab_size, args.prompt).astype(np.int32)
    t0 = time.perf_counter()
    token = model.forward_sample(seq, prompt, temperature=0.0)
    prefill_s = time.perf_counter() - t0
    steps = []
    for _ in range(args.tokens):
        t0 = time.perf_counter()
        token = model.forward_sample(seq, np.array([token], np.int32), temperature=0.0)
        steps.append(time.perf_counter() - t0)

    step_s = statistics.median(steps)
    decode_tps = 1.0 / step_s
    gbps = bytes_per_decoded_token(config) / step_s / 1e9
    threads = args.threads or os.cpu_count()
    rows = [
        ("model", f"gpt-oss-{args.model} shape, {config.num_layers} layers (random weights, {gb:.1f} GB)"),
        ("cpu", f"{platform.processor() or platform.machine()}, {threads} threads"),
        ("weights built", f"{build_s:.1f} s"),
        ("prefill", f"{args.prompt} tokens in {prefill_s:.2f} s = {args.prompt / prefill_s:.1f} tok/s"),
        ("decode", f"{decode_tps:.2f} tok/s (median of {args.tokens} steps, {step_s * 1e3:.1f} ms/token)"),
        ("decode min/max", f"{min(steps) * 1e3:.1f} / {max(steps) * 1e3:.1f} ms"),
        ("weight stream", f"{gbps:.1f} GB/s ({bytes_per_decoded_token(config) / 1e9:.2f} GB per token)"),
    ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    print(json.dumps({
        "benchmark": "cpu_decode", "model": args.model, "layers": config.num_layers, "threads": threads,
        "prompt_tokens": args.prompt, "decode_tokens": args.tokens, "prefill_tok_s": args.prompt / prefill_s,
        "decode_tok_s": decode_tps, "decode_ms_median": step_s * 1e3, "weight_stream_gb_s": gbps,
    }))


if __name__ == "__main__":
    main()
