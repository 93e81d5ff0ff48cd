"""Weight-streaming kernels at the real gpt-oss shapes (batch-1 decode): time per launch, achieved GB/s and the
share of the device-to-device copy bandwidth measured in the same run.

Each launch is timed inside a CUDA graph of several launches (the decode path runs them that way), taking the
median over replays; the kernels use programmatic dependent launch, so each launch's ramp overlaps the previous
one's tail as in decode. The chained row times out-projection + router → mlp1 → mlp2 in decode order. MoE launches rotate through every expert and the out-projection through 8 copies of its
matrix, so no weight is served from L2. Prints one table; the last line is JSON.

    python benchmarks/bench_kernels_weights.py [--reps 20] [--sweep]

--sweep adds the fixed-cost probes: mlp1 / mlp2 (20b) at k = 1, 2, 4, 8 experts and a graph-timed copy of
8..128 MB. A straight line through time against bytes separates a kernel's per-byte rate (the slope) from
its fixed cost per launch (the intercept: ramp, first-load latency, tail).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from gpt_oss_native import _C

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "kernels"))
from weights_reference import from_bf16, rmsnorm_bf16

HIDDEN, INTER, VOCAB, K, Q_DIM = 2880, 2880, 201088, 4, 4096
MODELS = {"20b": 32, "120b": 128}
FLOOR_TBPS = 3.0  # the H100 copy rate the floors in the kernel files assume


def random_bf16_bits(rng: np.random.Generator, n: int) -> np.ndarray:
    """Finite bf16 patterns of magnitude [2^-7, 2^-6), random sign and mantissa: fast to make at 1 GB."""
    bits = np.frombuffer(rng.bytes(2 * n), dtype=np.uint16)
    return (bits & 0x807F) | 0x3C00


def mxfp4_experts(rng: np.random.Generator, experts: int, rows: int, cols: int):
    blocks = np.frombuffer(rng.bytes(experts * rows * cols // 2), dtype=np.uint8).reshape(experts, rows, cols // 32, 16)
    scales = rng.integers(119, 128, size=(experts, rows, cols // 32), dtype=np.uint8)
    bias = random_bf16_bits(rng, experts * rows).reshape(experts, rows)
    return blocks, scales, bias


def torch_copy_gbps(nbytes: int, reps: int) -> float | None:
    """A kernel-driven device copy through PyTorch, where the machine has it (read + write GB/s, median)."""
    try:
        import torch
    except ImportError:
        return None
    src = torch.empty(nbytes, dtype=torch.uint8, device="cuda").fill_(90)
    dst = torch.empty_like(src)
    times = []
    for _ in range(reps + 2):
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        dst.copy_(src)
        stop.record()
        stop.synchronize()
        times.append(start.elapsed_time(stop))
    del src, dst
    torch.cuda.empty_cache()
    return 2 * nbytes / (sorted(times[2:])[reps // 2] * 1e-3) / 1e9


def row(name: str, shape: str, nbytes: float, us: float, copy_gbps: float) -> dict:
    gbps = nbytes / us / 1e3
    print(f"  measured {name} {shape}: {us:.2f} µs, {gbps:.0f} GB/s", flush=True)
    return {
        "kernel": name,
        "shape": shape,
        "bytes": int(nbytes),
        "floor_us": nbytes / (FLOOR_TBPS * 1e6),
        "us": us,
        "gbps": gbps,
        "pct_copy": 100.0 * gbps / copy_gbps,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--sweep", action="store_true", help="fixed-cost probes (see the module docstring)")
    args = parser.parse_args()
    kernels = _C.cuda_kernels
    device = _C.cuda_devices()[0]
    rng = np.random.default_rng(0)

    copy_bytes = 1 << 30
    memcpy_gbps = 2 * copy_bytes / kernels.time_copy(copy_bytes, args.reps) / 1e3
    torch_gbps = torch_copy_gbps(copy_bytes, args.reps)
    copy_gbps = max(memcpy_gbps, torch_gbps or 0.0)
    rows = []

    x = (rng.standard_normal(HIDDEN) * 3).astype(np.float32)
    norm_scale = rng.uniform(0.5, 2.0, HIDDEN).astype(np.float32)
    w_o = random_bf16_bits(rng, HIDDEN * Q_DIM).reshape(HIDDEN, Q_DIM)
    rows.append(row("bf16_gemv_bias_residual", "2880x4096", HIDDEN * Q_DIM * 2,
                    kernels.time_bf16_gemv_bias_residual(w_o, 8, args.reps), copy_gbps))
    for model, experts in MODELS.items():
        gate_w = random_bf16_bits(rng, experts * HIDDEN).reshape(experts, HIDDEN)
        gate_b = random_bf16_bits(rng, experts)
        b1, s1, bias1 = mxfp4_experts(rng, experts, 2 * INTER, HIDDEN)
        b2, s2, bias2 = mxfp4_experts(rng, experts, HIDDEN, INTER)
        t = kernels.time_moe(x, norm_scale, w_o, gate_w, gate_b, b1, s1, bias1, b2, s2, bias2, K, args.reps)
        row_bytes1, row_bytes2 = HIDDEN // 2 + HIDDEN // 32, INTER // 2 + INTER // 32
        rows.append(row("out-proj + router", f"{model} E={experts}", HIDDEN * Q_DIM * 2 + experts * (HIDDEN + 1) * 2,
                        t["outproj_router_us"], copy_gbps))
        rows.append(row("moe_mlp1_swiglu", f"{model} k=4 5760x2880",
                        K * 2 * INTER * (row_bytes1 + 2), t["mlp1_us"], copy_gbps))
        rows.append(row("moe_mlp2_residual", f"{model} k=4 2880x2880",
                        K * HIDDEN * (row_bytes2 + 2), t["mlp2_us"], copy_gbps))
        rows.append(row("out-proj+router→mlp1→mlp2", f"{model} chained", sum(r["bytes"] for r in rows[-3:]),
                        t["chain_us"], copy_gbps))
        del b1, s1, bias1, b2, s2, bias2

    w_u = random_bf16_bits(rng, VOCAB * HIDDEN).reshape(VOCAB, HIDDEN)
    # The fused sample's rows (temperature 0: argmax; 1: the Gumbel-max draw) against the plain unembedding.
    for label, temperature in (("unembedding", None), ("unembedding+argmax", 0.0), ("unembedding+sample T=1", 1.0)):
        rows.append(row(label, "201088x2880", VOCAB * HIDDEN * 2 + VOCAB * 4,
                        kernels.time_unembedding(w_u, norm_scale, x, temperature, args.reps), copy_gbps))
    # Screened sampling: the int8 copy (1 byte a weight, 16 bytes of constants and 4 of bound a row) and the rows
    # it recomputes; how many rows reach the best lower bound on these weights (each costs one bf16 row read).
    screened_candidates = {}
    for label, temperature in (("unembedding screened argmax", 0.0), ("unembedding screened T=1", 1.0)):
        rows.append(row(label, "201088x2880", VOCAB * (HIDDEN + 16 + 4),
                        kernels.time_unembedding_screened(w_u, norm_scale, x, temperature, args.reps), copy_gbps))
        _, upper, m = kernels.unembedding_screened_sample(w_u, norm_scale, x, 1e-5, temperature, 1234,
                                                          np.zeros(1, np.uint64))
        screened_candidates[label] = int(np.count_nonzero(~(upper < m)))
    # Spot check at the real shape: 64 rows against float64.
    logits = kernels.unembedding(w_u, norm_scale, x, 1e-5)
    pick = rng.choice(VOCAB, 64, replace=False)
    xn = from_bf16(rmsnorm_bf16(x, norm_scale, 1e-5))
    ref = from_bf16(w_u[pick]) @ xn
    unembedding_rel_err = float(np.max(np.abs(logits[pick] - ref)) / np.max(np.abs(ref)))

    sample_logits = (rng.standard_normal(VOCAB) * 3).astype(np.float32)
    for label, (temperature, top_p, top_k) in {
        "greedy": (0.0, 1.0, 0),
        "T=1": (1.0, 1.0, 0),
        "T=1 top_p=0.9": (1.0, 0.9, 0),
        "T=1 top_k=40": (1.0, 1.0, 40),
    }.items():
        us = kernels.time_sample(sample_logits, temperature, top_p, top_k, args.reps)
        rows.append(row("sample", label, VOCAB * 4, us, copy_gbps))

    if args.sweep:
        sweep(kernels, rng, w_o, args.reps)

    print(f"device: {device['name']}  copy (read + write, 1 GiB): cudaMemcpy {memcpy_gbps:.0f} GB/s, "
          f"torch {torch_gbps or float('nan'):.0f} GB/s; % copy below uses {copy_gbps:.0f} GB/s")
    print(f"{'kernel':<26}{'shape':<24}{'MB':>9}{'floor µs':>10}{'µs':>10}{'GB/s':>8}{'% copy':>8}")
    for r in rows:
        print(f"{r['kernel']:<26}{r['shape']:<24}{r['bytes'] / 1e6:>9.2f}{r['floor_us']:>10.2f}{r['us']:>10.2f}"
              f"{r['gbps']:>8.0f}{r['pct_copy']:>8.1f}")
    print(f"unembedding spot check (64 rows, real shape): max error / max |logit| = {unembedding_rel_err:.2e}")
    print("unembedding screened: rows recomputed " +
          ", ".join(f"{label.split()[-1]} {n}" for label, n in screened_candidates.items()))
    print(json.dumps({"device": device["name"], "copy_gbps": copy_gbps, "memcpy_gbps": memcpy_gbps,
                      "torch_copy_gbps": torch_gbps, "rows": rows,
                      "unembedding_rel_err": unembedding_rel_err, "screened_candidates": screened_candidates}))


def fit_line(xs: list[float], ys: list[float]) -> tuple[float, float]:
    slope, intercept = np.polyfit(np.asarray(xs), np.asarray(ys), 1)
    return float(slope), float(intercept)


def sweep(kernels, rng: np.random.Generator, w_o: np.ndarray, reps: int) -> None:
    """Time against bytes for the MoE kernels (k experts) and a plain copy: slope and intercept of each."""
    experts = MODELS["20b"]
    x = (rng.standard_normal(HIDDEN) * 3).astype(np.float32)
    norm_scale = rng.uniform(0.5, 2.0, HIDDEN).astype(np.float32)
    gate_w = random_bf16_bits(rng, experts * HIDDEN).reshape(experts, HIDDEN)
    gate_b = random_bf16_bits(rng, experts)
    b1, s1, bias1 = mxfp4_experts(rng, experts, 2 * INTER, HIDDEN)
    b2, s2, bias2 = mxfp4_experts(rng, experts, HIDDEN, INTER)
    row_bytes = HIDDEN // 2 + HIDDEN // 32 + 2
    series: dict[str, tuple[list[float], list[float]]] = {"mlp1": ([], []), "mlp2": ([], []), "copy": ([], [])}
    for k in (1, 2, 4, 8):
        t = kernels.time_moe(x, norm_scale, w_o, gate_w, gate_b, b1, s1, bias1, b2, s2, bias2, k, reps)
        for name, rows_per_expert in (("mlp1", 2 * INTER), ("mlp2", HIDDEN)):
            mb = k * rows_per_expert * row_bytes / 1e6
            series[name][0].append(mb)
            series[name][1].append(t[f"{name}_us"])
    for mb in (8, 16, 32, 64, 128):
        series["copy"][0].append(float(mb))  # read + write bytes moved
        series["copy"][1].append(kernels.time_copy(mb * 500_000, reps))
    print("sweep (graph-timed µs at MB moved; fit: µs = intercept + MB / slope)")
    for name, (mbs, us) in series.items():
        slope, intercept = fit_line(mbs, us)
        points = "  ".join(f"{m:.1f} MB {u:.2f}" for m, u in zip(mbs, us))
        print(f"  sweep {name:<5} {points}  | fit: {intercept:.2f} µs + MB at {1 / slope:.2f} TB/s")


if __name__ == "__main__":
    main()
