"""Batch-1 decode speed of the CUDA backend on full-size random gpt-oss-20b / -120b weights.

For each model: build the weights, load them into `_C.Model(..., backend="cuda")`, then for each context
(1k, 8k, 32k by default) extend one sequence to that length (timed: the prefill rate), decode a few warm-up
tokens and time `--tokens` greedy decode steps twice (sampler and Python calls included): as the Engine runs
them (run-ahead: step k + 1 is submitted, fed step k's token on the device, before step k is collected;
tok/s and the columns after it) and through the blocking forward_sample (the last column, blocking tok/s: it
pays the host round trip between tokens that run-ahead hides; timed just before, N tokens earlier in the
context). Reports tok/s, ms/token, the bytes one token must read (weights of the 4 routed experts, attention,
router, the unembedding or its screened int8 copy, the KV cache at that context) over the time, and that rate
as a share of the device-to-device copy bandwidth measured in the same run. Before that, the prefill A/B:
`--prefill-lengths` prompts (1k by default) on a fresh sequence through the batched prefill and through the
per-token decode-graph replay (GPT_OSS_NATIVE_CUDA_PREFILL=batched / replay), tok/s each. Prints tables; the
last line is JSON.

Weights (say which in any report):
  --source disk    write_random_checkpoint to --workdir, then load_checkpoint (the product's loading path)
  --source memory  random arrays in the internal naming, built in host memory where load_checkpoint's output
                   would be; one random layer is shared by every layer's host arrays (each layer still gets
                   its own device copy, so the bytes streamed per token are the real ones). Use for 120b
                   (65 GB would not fit the device machine's disk and time).

`--profile` runs a 2-layer model of the chosen shape at a 1k context and decodes one token inside an NVTX
range named "profile", for `ncu --nvtx --nvtx-include profile/` (benchmarks/device_run.sh does this);
`--ncu-csv FILE` turns ncu's CSV into the per-kernel table of one layer.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import re
import sys
import time
from pathlib import Path

import numpy as np
from gpt_oss_native import _C
from gpt_oss_native.checkpoint import expected_weights, load_checkpoint
from gpt_oss_native.config import GPT_OSS_20B, GPT_OSS_120B, ModelConfig
from gpt_oss_native.random_checkpoint import _draw, write_random_checkpoint

MODELS = {"20b": GPT_OSS_20B, "120b": GPT_OSS_120B}
GB = 1e9
PREFILL_ENV = "GPT_OSS_NATIVE_CUDA_PREFILL"
PREFILL_MODES = ("batched", "replay")


def memory_weights(config: ModelConfig, seed: int = 0) -> dict[str, np.ndarray]:
    """Internal-name weights in host memory; block tensors drawn once and shared by every layer."""
    rng = np.random.default_rng(seed)
    drawn: dict[str, np.ndarray] = {}
    weights = {}
    for name, (kind, shape) in expected_weights(config).items():
        key = name.split(".", 2)[2] if name.startswith("block.") else name
        if key == "unembedding.weight":
            key = "embedding.weight"  # same shape and law; one 1.16 GB draw serves both
        if key not in drawn:
            array = _draw(config, rng, name, shape)
            if kind == "f32":
                array = (array.astype(np.uint32) << 16).view(np.float32)
            drawn[key] = np.ascontiguousarray(array)
        weights[name] = drawn[key]
    return weights


def unembedding_bytes(config: ModelConfig) -> float:
    """Bytes the fused draw streams: the screened int8 copy (codes, a bf16 scale per 64 columns, two f32
    row norms, the f32 upper bound written and read back) unless GPT_OSS_NATIVE_CUDA_SCREEN=0, else the bf16
    weight. The screened draw's recomputed rows (~130 greedy on random weights: 0.7 MB) are left out."""
    V, H = config.vocab_size, config.hidden_size
    if os.environ.get("GPT_OSS_NATIVE_CUDA_SCREEN", "1") == "0":
        return 2 * V * H
    chunks = -(-H // 64)
    return V * (64 * chunks + 2 * chunks + 8 + 2 * 4)


def bytes_per_token(config: ModelConfig, context: float) -> float:
    """Bytes a decode step must read at this context: every dense weight, the routed experts, the KV cache
    (sliding layers see at most the window), the unembedding (unembedding_bytes) and one embedding row."""
    H, E, I = config.hidden_size, config.num_experts, config.intermediate_size
    attn = config.num_attention_heads * config.head_dim
    per_layer = 2 * (config.qkv_dim * H + config.qkv_dim + H * attn + H + E * H + E)  # bf16 dense + biases
    per_layer += 4 * (2 * H + config.num_attention_heads)  # f32 norm scales and sinks
    mlp1 = 2 * I * H * 17 / 32 + 2 * I * 2  # MXFP4 codes (0.5 B) + scales (1/32 B) per weight, bf16 bias
    mlp2 = H * I * 17 / 32 + H * 2
    per_layer += config.experts_per_token * (mlp1 + mlp2)
    kv = 0.0
    for layer in range(config.num_layers):
        keys = min(context, config.sliding_window) if config.layer_is_sliding(layer) else context
        kv += 2 * keys * config.num_key_value_heads * config.head_dim * 2
    return config.num_layers * per_layer + kv + unembedding_bytes(config) + 2 * H + 4 * H


def copy_bandwidth() -> float | None:
    """Device-to-device copy rate in GB/s, counting bytes read plus written (torch, if present)."""
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    n = 1 << 30
    a = torch.empty(n, dtype=torch.uint8, device="cuda")
    b = torch.empty_like(a)
    a.fill_(1)
    for _ in range(3):
        b.copy_(a)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    reps = 20
    start.record()
    for _ in range(reps):
        b.copy_(a)
    end.record()
    end.synchronize()
    rate = 2 * n * reps / (start.elapsed_time(end) / 1e3) / GB
    del a, b
    torch.cuda.empty_cache()
    return rate


def build_model(name: str, config: ModelConfig, source: str, workdir: Path, max_context: int) -> tuple:
    start = time.perf_counter()
    if source == "disk":
        path = workdir / f"random-{name}"
        if not (path / "config.json").exists():
            write_random_checkpoint(path, config, seed=0, overwrite=True)
        written = time.perf_counter()
        config, weights = load_checkpoint(path, progress=False)
    else:
        weights = memory_weights(config)
        written = time.perf_counter()
    model = _C.Model(config.to_native(), weights, backend="cuda", max_context=max_context, max_sequences=1)
    loaded = time.perf_counter()
    print(f"[{name}] weights from {source} in {written - start:.1f} s, load + upload {loaded - written:.1f} s "
          f"({model.backend})", flush=True)
    return model, weights


def extend(model: _C.Model, seq: int, target: int, vocab: int, rng: np.random.Generator) -> float | None:
    """Prefills the sequence up to `target` tokens; returns the prefill rate (tok/s) of that chunk."""
    n = target - model.sequence_length(seq)
    if n <= 0:
        return None
    tokens = rng.integers(0, vocab, n).astype(np.int32)
    start = time.perf_counter()
    model.forward(seq, tokens)
    return n / (time.perf_counter() - start)


def consume(seconds: float) -> None:
    """The caller's work on a token (harmony parsing, streaming it out), simulated by spinning."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def decode_blocking(model: _C.Model, seq: int, token: int, steps: int, consumer_s: float) -> tuple[int, float]:
    """`steps` greedy steps, each a blocking forward_sample, then `consumer_s` of the caller's work; the last
    token and the seconds they took."""
    start = time.perf_counter()
    for _ in range(steps):
        token = model.forward_sample(seq, np.array([token], np.int32), temperature=0.0)
        consume(consumer_s)
    return token, time.perf_counter() - start


def decode_run_ahead(model: _C.Model, seq: int, token: int, steps: int, consumer_s: float) -> tuple[int, float]:
    """`steps` greedy steps as the Engine runs them: step k + 1 is submitted (fed step k's draw on the device)
    before step k is collected, then `consumer_s` of the caller's work on token k; the last token and the
    seconds from the first submit to the last token's work."""
    start = time.perf_counter()
    for step in range(steps):
        if step == 0:
            model.submit_sample(seq, np.array([token], np.int32), temperature=0.0)
        if step + 1 < steps:
            model.submit_sample(seq, None, temperature=0.0)
        token = model.collect_sample(seq)
        consume(consumer_s)
    return token, time.perf_counter() - start


def prefill_ab(name: str, model: _C.Model, config: ModelConfig, lengths: list[int]) -> list[dict]:
    """Prefill tok/s of each length on a fresh sequence, batched and per-token replay. Each mode is warmed up
    first (scratch allocation, graph capture, module loading)."""
    rng = np.random.default_rng(2)
    previous = os.environ.get(PREFILL_ENV)
    rows = []
    try:
        for mode in PREFILL_MODES:
            os.environ[PREFILL_ENV] = mode
            for i, n in enumerate([16, *lengths]):  # the first, short prompt only warms the mode up
                seq = model.new_sequence()
                tokens = rng.integers(0, config.vocab_size, n).astype(np.int32)
                start = time.perf_counter()
                model.forward(seq, tokens)
                elapsed = time.perf_counter() - start
                model.free_sequence(seq)
                if i > 0:
                    rows.append({"model": name, "mode": mode, "tokens": n, "tok_s": n / elapsed, "s": elapsed})
                    print(f"[{name}] prefill {n} tokens, {mode}: {n / elapsed:.0f} tok/s ({elapsed * 1e3:.1f} ms)",
                          flush=True)
    finally:
        if previous is None:
            os.environ.pop(PREFILL_ENV, None)
        else:
            os.environ[PREFILL_ENV] = previous
    return rows


def bench_model(
    name: str, config: ModelConfig, args: argparse.Namespace, copy_gbs: float | None
) -> tuple[list[dict], list[dict]]:
    contexts = sorted(args.contexts)
    max_context = max([contexts[-1] + 2 * (args.warmup + args.tokens) + 8, *args.prefill_lengths])
    model, _weights = build_model(name, config, args.source if name == "20b" else "memory", args.workdir,
                                  max_context)
    prefill_rows = prefill_ab(name, model, config, args.prefill_lengths) if args.prefill_lengths else []
    rng = np.random.default_rng(1)
    seq = model.new_sequence()
    rows = []
    for context in contexts:
        prefill = extend(model, seq, context, config.vocab_size, rng)
        token = int(rng.integers(0, config.vocab_size))
        consumer_s = args.consumer_us * 1e-6
        token, _ = decode_blocking(model, seq, token, args.warmup, consumer_s)
        token, _ = decode_run_ahead(model, seq, token, args.warmup, consumer_s)
        token, blocking = decode_blocking(model, seq, token, args.tokens, consumer_s)
        at = model.sequence_length(seq)
        token, elapsed = decode_run_ahead(model, seq, token, args.tokens, consumer_s)
        per_token = elapsed / args.tokens
        moved = bytes_per_token(config, at + args.tokens / 2)
        row = {
            "model": name, "context": context, "tok_s": 1 / per_token, "ms_token": per_token * 1e3,
            "gb_token": moved / GB, "gb_s": moved / per_token / GB,
            "pct_copy": 100 * moved / per_token / GB / copy_gbs if copy_gbs else None,
            "prefill_tok_s": prefill, "tok_s_blocking": args.tokens / blocking,
        }
        rows.append(row)
        print(f"[{name}] ctx {context}: {row['tok_s']:.1f} tok/s run-ahead ({row['tok_s_blocking']:.1f} "
              f"blocking), {row['ms_token']:.3f} ms/token, {row['gb_s']:.0f} GB/s"
              + (f", prefill {prefill:.0f} tok/s" if prefill else ""), flush=True)
    model.free_sequence(seq)
    return rows, prefill_rows


def profile(args: argparse.Namespace) -> None:
    """One decode step of a 2-layer model at a 1k context inside the NVTX range "profile" (for ncu)."""
    import torch

    config = MODELS[args.models[0]].replace(num_layers=2)
    model = _C.Model(config.to_native(), memory_weights(config), backend="cuda", max_context=2048, max_sequences=1)
    seq = model.new_sequence()
    rng = np.random.default_rng(0)
    model.forward(seq, rng.integers(0, config.vocab_size, 1023).astype(np.int32))
    token = np.array([7], np.int32)
    model.forward_sample(seq, token, temperature=0.0)
    torch.cuda.synchronize()
    torch.cuda.nvtx.range_push("profile")
    model.forward_sample(seq, token, temperature=0.0)
    torch.cuda.nvtx.range_pop()


def ncu_table(csv_path: Path) -> list[tuple[str, float]]:
    """(kernel, µs) in launch order from `ncu --csv --metrics gpu__time_duration.sum` output."""
    lines = csv_path.read_text().splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith('"ID"'))
    to_us = {"nsecond": 1e-3, "ns": 1e-3, "usecond": 1.0, "us": 1.0, "msecond": 1e3, "ms": 1e3}
    launches = []
    for row in csv.DictReader(lines[header:]):
        if row.get("Metric Name") != "gpu__time_duration.sum":
            continue
        name = re.sub(r"\(anonymous namespace\)::", "", row["Kernel Name"]).removeprefix("void ")
        name = name.split("(")[0].split("<")[0].split("::")[-1]
        value = float(row["Metric Value"].replace(",", "")) * to_us.get(row.get("Metric Unit", "nsecond"), 1e-3)
        launches.append((name, value))
    print("\nOne decode step, kernel by kernel (ncu, caches flushed, 2-layer 20b-shaped model at ctx 1k):")
    for name, us in launches:
        print(f"  {name:<44} {us:>9.2f} µs")
    print(f"  {'total':<44} {sum(us for _, us in launches):>9.2f} µs")
    return launches


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["20b", "120b"], choices=MODELS)
    parser.add_argument("--contexts", nargs="+", type=int, default=[1024, 8192, 32768])
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--warmup", type=int, default=8)
    parser.add_argument("--consumer-us", type=float, default=0.0,
                        help="µs of caller work per token (spun), as a server's streaming adds: run-ahead hides it")
    parser.add_argument("--prefill-lengths", nargs="*", type=int, default=[1024],
                        help="prompt lengths of the batched-vs-replay prefill A/B (none: skip it)")
    parser.add_argument("--source", choices=["disk", "memory"], default="memory", help="for 20b; 120b: memory")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/gpt_oss_bench"))
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--ncu-csv", type=Path)
    args = parser.parse_args()

    if args.ncu_csv:
        print(json.dumps({"launches_us": ncu_table(args.ncu_csv)}))
        return
    if args.profile:
        profile(args)
        return
    if not _C.cuda_devices():
        sys.exit("no CUDA device: this benchmark needs a GPU")
    device = _C.cuda_devices()[0]
    copy_gbs = copy_bandwidth()
    print(f"{device['name']}: device-to-device copy {copy_gbs or math.nan:.0f} GB/s (read + write)", flush=True)
    rows, prefill_rows = [], []
    for name in args.models:
        decode_rows, ab_rows = bench_model(name, MODELS[name], args, copy_gbs)
        rows += decode_rows
        prefill_rows += ab_rows

    print(f"\n{'model':<6} {'ctx':>6} {'tok/s':>8} {'ms/tok':>8} {'GB/tok':>7} {'GB/s':>7} {'% copy':>7} "
          f"{'prefill tok/s':>13} {'blocking tok/s':>14}")
    for r in rows:
        pct = f"{r['pct_copy']:.0f}" if r["pct_copy"] is not None else "-"
        prefill = f"{r['prefill_tok_s']:.0f}" if r["prefill_tok_s"] else "-"
        print(f"{r['model']:<6} {r['context']:>6} {r['tok_s']:>8.1f} {r['ms_token']:>8.3f} {r['gb_token']:>7.2f} "
              f"{r['gb_s']:>7.0f} {pct:>7} {prefill:>13} {r['tok_s_blocking']:>14.1f}")
    if prefill_rows:
        print(f"\n{'model':<6} {'prompt':>6} {'mode':>8} {'tok/s':>8} {'ms':>9}")
        for r in prefill_rows:
            print(f"{r['model']:<6} {r['tokens']:>6} {r['mode']:>8} {r['tok_s']:>8.0f} {r['s'] * 1e3:>9.1f}")
    print(json.dumps({"device": device["name"], "copy_gb_s": copy_gbs, "tokens": args.tokens,
                      "source_20b": args.source, "source_120b": "memory", "results": rows,
                      "prefill": prefill_rows}))


if __name__ == "__main__":
    main()
