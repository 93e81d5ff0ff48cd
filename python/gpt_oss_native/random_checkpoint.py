"""Random gpt-oss checkpoints in either layout, for tests, the `demo` command and full-size benchmarks.

The weights are noise, scaled so activations stay O(1) through many layers: bf16 matrices ~ N(0, 1/fan_in),
small biases, norm scales ~ 1, sinks ~ N(0, 1), MXFP4 experts with uniformly random E2M1 codes and E8M0 scales
chosen so each expert matrix also has variance 1/fan_in. Every tensor draws from its own generator, seeded by
(seed, internal name, row), so the official and Hugging Face layouts of one seed hold identical weights.
Writing streams chunk by chunk, drawing chunks in parallel (a full-size gpt-oss-20b, 13.8 GB, takes ~12 s on
16 cores); every safetensors file's metadata and a README.txt say that the weights are random.
"""

from __future__ import annotations

import json
import math
import os
import zlib
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np

from .checkpoint import HF_INDEX_FILE, RANDOM_WEIGHTS_METADATA_KEY, expected_weights, hf_names
from .config import ModelConfig
from .safetensors_io import TensorSpec, write_safetensors

__all__ = ["tiny_config", "write_random_checkpoint"]

_CHUNK_ELEMENTS = 1 << 22  # 16 MB of float32 scratch per chunk
_LOOKAHEAD = 2 * (os.cpu_count() or 1)  # chunks drawn ahead of the writer
# E2M1 codes drawn uniformly: E[v^2] over the 16 values of csrc/core/model.h's kFp4Values.
_FP4_RMS = math.sqrt(sum(v * v for v in (0, 0.5, 1, 1.5, 2, 3, 4, 6)) / 8)
_BIAS_STD = 0.1
# Stored as OpenAI stores them: the f32 tensors (norm scales, sinks) as BF16.
_DTYPES = {"bf16": "BF16", "f32": "BF16", "u8": "U8"}
_NORM_STD = 0.1
README = """RANDOM WEIGHTS: this is not a trained model.

Written by gpt_oss_native.random_checkpoint (layout={layout}, seed={seed}) for tests, demos and speed
benchmarks. It has the shapes of a gpt-oss model, but every weight is random noise: its text is gibberish.
"""


def tiny_config(vocab_size: int = 201088, **overrides: float) -> ModelConfig:
    """A small model whose forward takes milliseconds. The default vocabulary is harmony's full 201088 ids, so
    every token id exists; with hidden_size 64 its embedding is ~26 MB."""
    fields: dict[str, int | float] = {
        "num_layers": 2,
        "num_experts": 8,
        "experts_per_token": 4,
        "vocab_size": vocab_size,
        "hidden_size": 64,
        "intermediate_size": 64,
        "head_dim": 64,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "sliding_window": 16,
    }
    return ModelConfig(**(fields | overrides))


def write_random_checkpoint(
    path: str | os.PathLike[str],
    config: ModelConfig,
    layout: str = "original",
    seed: int = 0,
    shards: int = 1,
    overwrite: bool = False,
) -> Path:
    """Writes config.json, the safetensors file(s) (and the index, for layout="hf" with shards > 1) and a
    README.txt into `path`; returns it. Refuses to touch an existing checkpoint unless `overwrite`."""
    if layout not in ("original", "hf"):
        raise ValueError(f"layout must be 'original' or 'hf', got {layout!r}")
    if shards < 1:
        raise ValueError(f"shards must be >= 1, got {shards}")
    directory = Path(path)
    directory.mkdir(parents=True, exist_ok=True)
    ours = [
        *directory.glob("*.safetensors"),
        *(directory / n for n in ("config.json", HF_INDEX_FILE, "README.txt") if (directory / n).exists()),
    ]
    if ours and not overwrite:
        raise FileExistsError(
            f"{directory} already holds a checkpoint ({ours[0].name}); pass overwrite=True to replace it"
        )
    for file in ours:
        file.unlink()

    with ThreadPoolExecutor(os.cpu_count()) as pool:
        specs = (_hf_specs if layout == "hf" else _official_specs)(config, seed, pool)
        _write_files(directory, specs, layout, seed, shards)
    (directory / "README.txt").write_text(README.format(layout=layout, seed=seed))
    config_json = config.to_hf_json() if layout == "hf" else config.to_json()
    # Last, so an interrupted write leaves no config.json and never looks like a checkpoint.
    (directory / "config.json").write_text(json.dumps(config_json, indent=2) + "\n")
    return directory


def _write_files(directory: Path, specs: list[TensorSpec], layout: str, seed: int, shards: int) -> None:
    groups = _split(specs, shards)
    # Shards are named as in openai/gpt-oss-*: model-00000-of-00002, ..., model-00002-of-00002 (0-based).
    names = (
        ["model.safetensors"]
        if shards == 1
        else [f"model-{k:05d}-of-{shards - 1:05d}.safetensors" for k in range(shards)]
    )
    metadata = {"format": "pt", RANDOM_WEIGHTS_METADATA_KEY: f"layout={layout} seed={seed}"}
    for name, group in zip(names, groups, strict=True):
        write_safetensors(directory / name, group, metadata)
    if layout == "hf" and shards > 1:
        index = {
            "metadata": {"total_size": sum(s.nbytes for s in specs)},
            "weight_map": {s.name: name for name, group in zip(names, groups, strict=True) for s in group},
        }
        (directory / HF_INDEX_FILE).write_text(json.dumps(index, indent=2))


def _split(specs: list[TensorSpec], shards: int) -> list[list[TensorSpec]]:
    """Consecutive groups of about equal bytes (every group non-empty)."""
    if shards > len(specs):
        raise ValueError(f"cannot split {len(specs)} tensors into {shards} shards")
    total = sum(s.nbytes for s in specs)
    groups: list[list[TensorSpec]] = [[] for _ in range(shards)]
    done = 0
    for i, spec in enumerate(specs):
        k = min(shards - 1, done * shards // total)
        k = max(k, shards - (len(specs) - i))  # leave at least one tensor for each later shard
        k = min(k, next((j for j in range(shards) if not groups[j]), shards - 1))
        groups[k].append(spec)
        done += spec.nbytes
    return groups


def _official_specs(config: ModelConfig, seed: int, pool: Executor | None = None) -> list[TensorSpec]:
    return [
        TensorSpec(name, _DTYPES[kind], shape, _chunks(config, seed, name, shape, pool))
        for name, (kind, shape) in expected_weights(config).items()
    ]


def _hf_specs(config: ModelConfig, seed: int, pool: Executor | None = None) -> list[TensorSpec]:
    specs = []
    sources = hf_names(config)
    for name, (kind, shape) in expected_weights(config).items():
        row = 0
        for src, src_shape in sources[name]:  # q, k, v: consecutive row ranges of qkv
            rows = (row, row + src_shape[0])
            specs.append(
                TensorSpec(src, _DTYPES[kind], src_shape, _chunks(config, seed, name, shape, pool, rows))
            )
            row += src_shape[0]
    return specs


def _chunks(
    config: ModelConfig,
    seed: int,
    name: str,
    shape: tuple[int, ...],
    pool: Executor | None = None,
    rows: tuple[int, int] | None = None,
) -> Iterator[np.ndarray]:
    """Rows `rows` (default: all) of the tensor, in chunks, lazily, so a writer holds only a few chunks at a
    time. Each chunk of rows has its own generator, so the values depend on neither `rows` nor `pool`, which
    draws chunks ahead in parallel."""
    first, last = rows or (0, shape[0])
    rows_per_chunk = max(1, _CHUNK_ELEMENTS // max(1, math.prod(shape[1:])))
    key = zlib.crc32(name.encode())

    def draw(start: int) -> np.ndarray:
        rng = np.random.default_rng([seed, key, start])
        chunk = _draw(config, rng, name, (min(rows_per_chunk, shape[0] - start), *shape[1:]))
        return chunk[max(first - start, 0) : last - start]

    starts = range(first - first % rows_per_chunk, last, rows_per_chunk)
    if pool is None:
        yield from map(draw, starts)
        return
    ahead: deque[Future[np.ndarray]] = deque()
    for start in starts:
        ahead.append(pool.submit(draw, start))
        if len(ahead) > _LOOKAHEAD:
            yield ahead.popleft().result()
    while ahead:
        yield ahead.popleft().result()


def _draw(config: ModelConfig, rng: np.random.Generator, name: str, shape: tuple[int, ...]) -> np.ndarray:
    H, n = config.hidden_size, math.prod(shape)
    if name.endswith(".blocks"):  # uniformly random E2M1 codes, two per byte
        return rng.bit_generator.random_raw(-(-n // 8)).view(np.uint8)[:n].reshape(shape)
    if name.endswith(".scales"):
        # E8M0 exponents from two neighbouring octaves, mixed so that the weights' mean variance is exactly
        # 1/fan_in (as for the bf16 matrices) whatever fan_in is: E[4^e] = 4^target.
        fan_in = H if "mlp1" in name else config.intermediate_size
        target = -math.log2(math.sqrt(fan_in) * _FP4_RMS)
        low = math.floor(target)
        upper_share = (4 ** (target - low) - 1) / 3
        return (127 + low + (rng.random(shape, dtype=np.float32) < upper_share)).astype(np.uint8)
    if name.endswith("norm.scale"):
        return _bf16(rng, shape, std=_NORM_STD, mean=1.0)
    if name.endswith("sinks"):
        return _bf16(rng, shape, std=1.0)
    if "bias" in name:
        return _bf16(rng, shape, std=_BIAS_STD)
    fan_in = {
        "embedding.weight": 1,  # rows enter the residual stream directly: unit variance
        "attn.out.weight": config.num_attention_heads * config.head_dim,
    }.get(name.split(".", 2)[-1] if name.startswith("block.") else name, H)
    return _bf16(rng, shape, std=1 / math.sqrt(fan_in))


def _bf16(rng: np.random.Generator, shape: tuple[int, ...], std: float, mean: float = 0.0) -> np.ndarray:
    """N(mean, std^2) samples truncated to bf16 (the top half of each f32: random weights need no
    rounding), as uint16 bit patterns."""
    x = rng.standard_normal(shape, dtype=np.float32)
    x *= np.float32(std)
    x += np.float32(mean)
    return np.ascontiguousarray(x.view(np.uint16)[..., 1::2])  # little-endian: odd halves are the high ones
