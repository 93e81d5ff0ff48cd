"""Where one decode step's time goes, kernel by kernel, from the per-CTA timeline (csrc/cuda/common.cuh).

Needs a build with the timeline compiled in (`-DGPT_OSS_NATIVE_TIMELINE=ON`; `bash benchmarks/build_device_wheel.sh
timeline` makes one in .devwheel/timeline/main/). Builds the model from random weights in memory, fills the context,
records `--steps` greedy decode steps and prints, per kernel (median over the layers of the last step; the
attention and the out-projection apart for the sliding-window and the full layers):

  span    its share of the step: its last CTA's exit minus the previous launch's last exit
  early   how long before the previous launch finished its first CTA was resident (programmatic launch)
  wake    from the previous launch's last exit to this launch's first pass of its dependency wait
  cta     median CTA time from its wait (or entry) to its exit
  tail    last exit minus the median exit: the stragglers
  start   median and 90th percentile of its CTAs' starts, from the previous launch's last exit (negative: resident
          before it ended), and late, the share of its CTAs that started only after it: how many waited for a slot

    python benchmarks/timeline.py [--model 20b] [--context 1024] [--steps 2] [--dump steps.npz]

--dump keeps every step's raw records (one array per step: kernel << 32 | CTA, SM, entry, wait, exit, cycles) for
questions the table does not answer, e.g. which CTAs of a launch are its stragglers and on which SMs.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
from gpt_oss_native import _C

sys.path.insert(0, str(Path(__file__).resolve().parent))
from decode import MODELS, build_model, extend

KERNELS = {1: "embedding", 2: "norm_qkv_rope", 3: "attention", 4: "out-proj + router", 5: "mlp1", 6: "mlp2",
           7: "unembedding", 8: "sample"}
LAUNCH_GAP_NS = 20_000  # CTAs of one launch start within this of each other; launches of a kernel are further apart


def launches(records: np.ndarray) -> list[dict]:
    """Records [n, 6] → one dict per launch, in completion order."""
    by_kernel: dict[int, list[np.ndarray]] = defaultdict(list)
    for r in records:
        by_kernel[int(r[0] >> 32)].append(r)
    out = []
    for kernel, rows in by_kernel.items():
        rows = sorted(rows, key=lambda r: int(r[2]))
        groups, current = [], [rows[0]]
        for r in rows[1:]:
            if int(r[2]) - int(current[-1][2]) > LAUNCH_GAP_NS:
                groups.append(current)
                current = []
            current.append(r)
        groups.append(current)
        for g in groups:
            a = np.array(g, dtype=np.int64)
            start, waited, end = a[:, 2], a[:, 3], a[:, 4]
            ready = np.maximum(start, waited)
            out.append({
                "kernel": KERNELS.get(kernel, str(kernel)), "ctas": len(g), "first_start": int(start.min()),
                "first_waited": int(waited[waited > 0].min()) if (waited > 0).any() else None,
                "last_end": int(end.max()), "median_end": float(np.median(end)),
                "cta_ns": float(np.median(end - ready)), "starts": start,
            })
    return sorted(out, key=lambda x: x["last_end"])


def summarize(step: list[dict]) -> dict:
    per_kernel: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    layer = -1
    for prev, cur in itertools.pairwise(step):
        name = cur["kernel"]
        layer += name == "norm_qkv_rope"
        if name in ("attention", "out-proj + router"):  # gpt-oss: a sliding window on the even layers
            name += " (sliding)" if layer % 2 == 0 else " (full)"
        k = per_kernel[name]
        k["span"].append(cur["last_end"] - prev["last_end"])
        k["early"].append(prev["last_end"] - cur["first_start"])
        if cur["first_waited"] is not None:
            k["wake"].append(cur["first_waited"] - prev["last_end"])
        k["cta"].append(cur["cta_ns"])
        k["tail"].append(cur["last_end"] - cur["median_end"])
        starts = cur["starts"] - prev["last_end"]
        k["start50"].append(float(np.median(starts)))
        k["start90"].append(float(np.percentile(starts, 90)))
        k["late"].append(100.0 * float(np.mean(starts > 0)))
        k["ctas"].append(cur["ctas"])
    total = step[-1]["last_end"] - step[0]["first_start"]
    print(f"one decode step: {total / 1e3:.1f} µs, {len(step)} launches")
    print(f"{'kernel':<28}{'launches':>9}{'CTAs':>7}{'span µs':>9}{'Σ span':>9}{'early':>8}{'wake':>8}"
          f"{'cta':>8}{'tail':>8}{'start50':>9}{'start90':>9}{'late %':>8}")
    table = {}
    for name, k in per_kernel.items():
        med = {key: float(np.median(v)) / 1e3 for key, v in k.items() if v and key not in ("ctas", "late")}
        med["launches"], med["ctas"], med["span_sum"] = len(k["span"]), int(np.median(k["ctas"])), sum(k["span"]) / 1e3
        med["late"] = float(np.median(k["late"]))
        table[name] = med
        print(f"{name:<28}{med['launches']:>9}{med['ctas']:>7}{med['span']:>9.2f}{med['span_sum']:>9.1f}"
              f"{med['early']:>8.2f}{med.get('wake', float('nan')):>8.2f}{med['cta']:>8.2f}{med['tail']:>8.2f}"
              f"{med['start50']:>9.2f}{med['start90']:>9.2f}{med['late']:>8.0f}")
    return {"step_us": total / 1e3, "kernels": table}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="20b", choices=MODELS)
    parser.add_argument("--context", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/gpt_oss_bench"))
    parser.add_argument("--dump", type=Path, help="save each step's raw records here (.npz)")
    args = parser.parse_args()
    kernels = _C.cuda_kernels
    if not kernels.timeline_built:
        sys.exit("this build records no timeline: bash benchmarks/build_device_wheel.sh timeline (CMake "
                 "-DGPT_OSS_NATIVE_TIMELINE=ON)")
    config = MODELS[args.model]
    model, _weights = build_model(args.model, config, "memory", args.workdir, args.context + args.steps + 16)
    seq = model.new_sequence()
    rng = np.random.default_rng(1)
    extend(model, seq, args.context, config.vocab_size, rng)
    token = np.array([int(rng.integers(0, config.vocab_size))], np.int32)
    for _ in range(4):
        token = np.array([model.forward_sample(seq, token, temperature=0.0)], np.int32)
    kernels.timeline_start(1 << 20)
    results, raw = [], {}
    for step in range(args.steps):
        token = np.array([model.forward_sample(seq, token, temperature=0.0)], np.int32)
        records = kernels.timeline_read()
        raw[f"step{step}"] = records
        results.append(summarize(launches(records)))
    kernels.timeline_start(0)
    if args.dump:
        np.savez_compressed(args.dump, **raw)
    print(json.dumps({"model": args.model, "context": args.context, "steps": results}))


if __name__ == "__main__":
    main()
