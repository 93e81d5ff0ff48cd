"""Checkpoint loading: safetensors files (either layout) → the internal weight names of csrc/core/model.h.

Two layouts exist, holding the same bytes under different names:

* official (``original/``): ``config.json`` + ``model.safetensors`` (or several ``*.safetensors``), names
  ``block.N.attn.qkv.weight``, ``block.N.mlp.mlp1_weight.blocks``, ... — exactly the internal names;
* Hugging Face: ``config.json`` with ``quantization_config`` + ``model.safetensors`` or shards listed by
  ``model.safetensors.index.json``, names ``model.layers.N.self_attn.q_proj.weight``, ...,
  ``model.layers.N.mlp.experts.gate_up_proj_blocks``, ``lm_head.weight``. OpenAI's conversion script
  (transformers' convert_gpt_oss_weights_to_hf.py) only renames tensors and splits qkv into q, k, v row
  ranges; the MXFP4 blocks and scales keep their bytes, shapes and the interleaved glu/linear rows of mlp1
  (transformers' GptOssExperts transposes the dequantized [E, 2I, H] to [E, H, 2I], then reads
  gate = [..., ::2], up = [..., 1::2]). So the mapping is a rename, plus one concatenation of q | k | v rows.

Weights come back as zero-copy read-only views of the mmap'd files (bf16 as uint16, MXFP4 blocks / scales as
uint8); only qkv (concatenated) and the norm scales and sinks (converted to float32) are copies.

Unexpected extra tensors are an error, not a warning: both layouts are closed sets, and a tensor outside them
means the config and the weights disagree (e.g. more layers than num_hidden_layers, or dequantized experts
beside the MXFP4 ones) — running anyway would give silently wrong numbers.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from .config import ConfigError, ModelConfig, is_hf_config
from .safetensors_io import CheckpointError, SafetensorsFile

__all__ = [
    "RANDOM_WEIGHTS_METADATA_KEY",
    "Checkpoint",
    "CheckpointError",
    "expected_weights",
    "load_checkpoint",
    "open_checkpoint",
    "resolve_checkpoint_dir",
]

logger = logging.getLogger(__name__)

HF_INDEX_FILE = "model.safetensors.index.json"
# Set in the safetensors metadata of checkpoints that random_checkpoint.py writes.
RANDOM_WEIGHTS_METADATA_KEY = "gpt_oss_native.random_weights"
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def expected_weights(config: ModelConfig) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Internal name → (dtype, shape), the contract of csrc/core/model.h. dtype is "bf16", "f32" or "u8"."""
    H, V, E, I = config.hidden_size, config.vocab_size, config.num_experts, config.intermediate_size
    attn = config.num_attention_heads * config.head_dim
    out: dict[str, tuple[str, tuple[int, ...]]] = {"embedding.weight": ("bf16", (V, H))}
    for i in range(config.num_layers):
        b = f"block.{i}."
        out |= {
            b + "attn.norm.scale": ("f32", (H,)),
            b + "attn.qkv.weight": ("bf16", (config.qkv_dim, H)),
            b + "attn.qkv.bias": ("bf16", (config.qkv_dim,)),
            b + "attn.sinks": ("f32", (config.num_attention_heads,)),
            b + "attn.out.weight": ("bf16", (H, attn)),
            b + "attn.out.bias": ("bf16", (H,)),
            b + "mlp.norm.scale": ("f32", (H,)),
            b + "mlp.gate.weight": ("bf16", (E, H)),
            b + "mlp.gate.bias": ("bf16", (E,)),
            b + "mlp.mlp1_weight.blocks": ("u8", (E, 2 * I, H // 32, 16)),
            b + "mlp.mlp1_weight.scales": ("u8", (E, 2 * I, H // 32)),
            b + "mlp.mlp1_bias": ("bf16", (E, 2 * I)),
            b + "mlp.mlp2_weight.blocks": ("u8", (E, H, I // 32, 16)),
            b + "mlp.mlp2_weight.scales": ("u8", (E, H, I // 32)),
            b + "mlp.mlp2_bias": ("bf16", (E, H)),
        }
    out["norm.scale"] = ("f32", (H,))
    out["unembedding.weight"] = ("bf16", (V, H))
    return out


# Internal name (with the layer as {i}) → Hugging Face name(s); several names are concatenated along rows.
_HF_NAMES: dict[str, tuple[str, ...]] = {
    "embedding.weight": ("model.embed_tokens.weight",),
    "norm.scale": ("model.norm.weight",),
    "unembedding.weight": ("lm_head.weight",),
    "block.{i}.attn.norm.scale": ("model.layers.{i}.input_layernorm.weight",),
    "block.{i}.attn.qkv.weight": tuple(f"model.layers.{{i}}.self_attn.{p}_proj.weight" for p in "qkv"),
    "block.{i}.attn.qkv.bias": tuple(f"model.layers.{{i}}.self_attn.{p}_proj.bias" for p in "qkv"),
    "block.{i}.attn.sinks": ("model.layers.{i}.self_attn.sinks",),
    "block.{i}.attn.out.weight": ("model.layers.{i}.self_attn.o_proj.weight",),
    "block.{i}.attn.out.bias": ("model.layers.{i}.self_attn.o_proj.bias",),
    "block.{i}.mlp.norm.scale": ("model.layers.{i}.post_attention_layernorm.weight",),
    "block.{i}.mlp.gate.weight": ("model.layers.{i}.mlp.router.weight",),
    "block.{i}.mlp.gate.bias": ("model.layers.{i}.mlp.router.bias",),
    "block.{i}.mlp.mlp1_weight.blocks": ("model.layers.{i}.mlp.experts.gate_up_proj_blocks",),
    "block.{i}.mlp.mlp1_weight.scales": ("model.layers.{i}.mlp.experts.gate_up_proj_scales",),
    "block.{i}.mlp.mlp1_bias": ("model.layers.{i}.mlp.experts.gate_up_proj_bias",),
    "block.{i}.mlp.mlp2_weight.blocks": ("model.layers.{i}.mlp.experts.down_proj_blocks",),
    "block.{i}.mlp.mlp2_weight.scales": ("model.layers.{i}.mlp.experts.down_proj_scales",),
    "block.{i}.mlp.mlp2_bias": ("model.layers.{i}.mlp.experts.down_proj_bias",),
}


def hf_names(config: ModelConfig) -> dict[str, tuple[tuple[str, tuple[int, ...]], ...]]:
    """Internal name → its Hugging Face source tensors, each with its shape (q, k, v split the qkv rows)."""
    q, kv = config.num_attention_heads * config.head_dim, config.num_key_value_heads * config.head_dim
    out = {}
    for name, (_, shape) in expected_weights(config).items():
        layer = name.split(".")[1] if name.startswith("block.") else None
        template = name.replace(f"block.{layer}.", "block.{i}.") if layer is not None else name
        sources = [s.format(i=layer) for s in _HF_NAMES[template]]
        if len(sources) == 3:  # q | k | v
            shapes = [(rows, *shape[1:]) for rows in (q, kv, kv)]
        else:
            shapes = [shape]
        out[name] = tuple(zip(sources, shapes, strict=True))
    return out


@dataclass
class Checkpoint:
    """A loaded checkpoint: config, internal weights and what was read."""

    config: ModelConfig
    weights: dict[str, np.ndarray]
    layout: str  # "original" or "hf"
    directory: Path
    files: list[Path]
    nbytes: int
    seconds: float
    random_weights: bool = False  # written by random_checkpoint.py: its outputs are noise
    metadata: dict[str, str] = field(default_factory=dict)

    def summary(self) -> str:
        random = " (RANDOM weights)" if self.random_weights else ""
        return (
            f"loaded {len(self.weights)} tensors, {self.nbytes / 1e9:.2f} GB from {len(self.files)} "
            f"file(s) in {self.directory} ({self.layout} layout{random}) in {self.seconds:.2f} s"
        )


def load_checkpoint(
    path_or_repo: str | os.PathLike[str], progress: bool = True
) -> tuple[ModelConfig, dict[str, np.ndarray]]:
    """(config, internal weights) of a checkpoint directory or Hugging Face repo id; see open_checkpoint."""
    ckpt = open_checkpoint(path_or_repo, progress=progress)
    return ckpt.config, ckpt.weights


def open_checkpoint(path_or_repo: str | os.PathLike[str], *, progress: bool = True) -> Checkpoint:
    """Maps a checkpoint (official or Hugging Face layout, a local directory or a repo id such as
    ``openai/gpt-oss-20b``) and validates every tensor's presence, dtype and shape.

    Raises CheckpointError (a ValueError) naming the file and tensor for anything wrong.
    """
    start = time.perf_counter()
    directory = resolve_checkpoint_dir(path_or_repo)
    config_file = directory / "config.json"
    raw = _read_config_json(config_file)
    try:
        config = ModelConfig.from_json(raw)
    except ConfigError as e:
        raise CheckpointError(f"{config_file}: {e}") from e
    layout = "hf" if is_hf_config(raw) else "original"
    if layout == "hf" and raw.get("quantization_config") is None:
        raise CheckpointError(
            f"{config_file} has no quantization_config: this Hugging Face checkpoint stores dequantized "
            "experts; gpt_oss_native needs the MXFP4 experts as openai/gpt-oss-* publish them "
            "(gate_up_proj_blocks, ...)"
        )
    files, locate = _hf_tensor_files(directory) if layout == "hf" else _official_tensor_files(directory)
    expected = expected_weights(config)
    if layout == "hf":
        sources = hf_names(config)
    else:
        sources = {name: ((name, shape),) for name, (_, shape) in expected.items()}

    weights: dict[str, np.ndarray] = {}
    used: set[str] = set()
    nbytes = 0
    with tqdm(
        total=sum(map(_nbytes, expected.values())),
        unit="B",
        unit_scale=True,
        desc="mapping weights",
        disable=not progress,
        leave=False,
    ) as bar:
        for name, (kind, shape) in expected.items():
            parts = [_source_array(locate, src, kind, src_shape) for src, src_shape in sources[name]]
            used.update(src for src, _ in sources[name])
            array = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0)
            weights[name] = array.reshape(shape)
            nbytes += array.nbytes
            bar.update(_nbytes(expected[name]))

    stored = {name: file for file in files for name in file.tensors}
    extra = sorted(set(stored) - used)
    if extra:
        shown = ", ".join(f"'{n}' in {stored[n].path}" for n in extra[:5])
        more = f" and {len(extra) - 5} more" if len(extra) > 5 else ""
        raise CheckpointError(
            f"unexpected tensor(s) {shown}{more}: the {layout} layout for this config.json "
            f"({config.num_layers} layers) has no such tensors, so config.json and the weights disagree"
        )

    metadata = {k: v for file in files for k, v in file.metadata.items()}
    ckpt = Checkpoint(
        config=config,
        weights=weights,
        layout=layout,
        directory=directory,
        files=[f.path for f in files],
        nbytes=nbytes,
        seconds=time.perf_counter() - start,
        random_weights=RANDOM_WEIGHTS_METADATA_KEY in metadata,
        metadata=metadata,
    )
    logger.info(ckpt.summary())
    return ckpt


def _nbytes(spec: tuple[str, tuple[int, ...]]) -> int:
    kind, shape = spec
    return int(np.prod(shape)) * {"bf16": 2, "f32": 4, "u8": 1}[kind]


def _source_array(
    locate: Callable[[str], SafetensorsFile], name: str, kind: str, shape: tuple[int, ...]
) -> np.ndarray:
    file = locate(name)
    info = file.tensors[name]
    where = f"tensor '{name}' in {file.path}"
    accepted = {"bf16": ("BF16",), "f32": ("BF16", "F32"), "u8": ("U8",)}[kind]
    if info.dtype not in accepted:
        raise CheckpointError(f"{where} has dtype {info.dtype}, expected {' or '.join(accepted)}")
    stored_shape = info.shape
    if kind == "u8" and len(shape) == 4 and stored_shape == (*shape[:2], shape[2] * shape[3]):
        stored_shape = shape  # MXFP4 blocks saved 3-D ([E, rows, cols / 2]) hold the same bytes
    if stored_shape != shape:
        raise CheckpointError(
            f"{where} has shape {list(info.shape)}, expected {list(shape)} (from config.json)"
        )
    array = file.array(name).reshape(shape)
    if kind == "f32" and info.dtype == "BF16":
        array = (array.astype(np.uint32) << 16).view(np.float32)  # exact: bf16 is the top half of an f32
    return array


def _read_config_json(config_file: Path) -> dict:
    try:
        raw = json.loads(config_file.read_text())
    except FileNotFoundError:
        raise CheckpointError(
            f"{config_file} is missing: a checkpoint directory holds config.json beside its *.safetensors"
        ) from None
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{config_file}: cannot read it as JSON ({e})") from e
    if not isinstance(raw, dict):
        raise CheckpointError(f"{config_file}: expected a JSON object")
    return raw


def _locator(where: dict[str, SafetensorsFile], missing_hint: str) -> Callable[[str], SafetensorsFile]:
    def locate(name: str) -> SafetensorsFile:
        if name not in where:
            raise CheckpointError(f"tensor '{name}' is missing: {missing_hint}")
        return where[name]

    return locate


def _official_tensor_files(directory: Path) -> tuple[list[SafetensorsFile], Callable[[str], SafetensorsFile]]:
    paths = sorted(directory.glob("*.safetensors"))
    if not paths:
        raise CheckpointError(f"{directory} has config.json but no *.safetensors files")
    files = [SafetensorsFile(p) for p in paths]
    where: dict[str, SafetensorsFile] = {}
    for file in files:
        for name in file.tensors:
            if name in where:
                raise CheckpointError(
                    f"tensor '{name}' is stored twice: in {where[name].path} and in {file.path}"
                )
            where[name] = file
    names = ", ".join(p.name for p in paths)
    return files, _locator(where, f"none of {names} in {directory} holds it")


def _hf_tensor_files(directory: Path) -> tuple[list[SafetensorsFile], Callable[[str], SafetensorsFile]]:
    index_file = directory / HF_INDEX_FILE
    if not index_file.exists():
        return _official_tensor_files(directory)  # a single model.safetensors: no index
    try:
        weight_map = json.loads(index_file.read_text())["weight_map"]
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise ValueError("weight_map must map tensor names to file names")
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{index_file}: not a valid safetensors index ({e!r})") from e
    opened: dict[str, SafetensorsFile] = {}
    for shard in sorted(set(weight_map.values())):
        path = directory / shard
        if Path(shard).name != shard or not path.is_file():
            first = next(n for n, s in weight_map.items() if s == shard)
            raise CheckpointError(
                f"{index_file} puts tensor '{first}' in shard '{shard}', which does not exist in {directory} "
                "(incomplete download? fetch every model-*.safetensors file)"
            )
        opened[shard] = SafetensorsFile(path)
    for name, shard in weight_map.items():
        if name not in opened[shard].tensors:
            raise CheckpointError(
                f"{index_file} puts tensor '{name}' in {opened[shard].path}, which does not hold it"
            )
    where = {name: opened[shard] for name, shard in weight_map.items()}
    files = list(opened.values())
    # Tensors a shard holds beyond the index are extra tensors too: report them rather than ignore them.
    for file in files:
        for name in file.tensors:
            if name not in where:
                where[name] = file
    return files, _locator(where, f"{index_file} does not list it")


def resolve_checkpoint_dir(path_or_repo: str | os.PathLike[str]) -> Path:
    """The directory holding config.json + *.safetensors: `path` itself, its `original/`, or a Hugging Face
    snapshot of the repo id `path` (its `original/` files if it has them) when no such local path exists."""
    path = Path(path_or_repo).expanduser()
    if path.exists():
        if not path.is_dir():
            raise CheckpointError(
                f"{path} is a file; pass the checkpoint directory (the one holding config.json)"
            )
        if not _has_weights(path) and _has_weights(path / "original"):
            return path / "original"
        return path  # open_checkpoint says what is missing
    repo = str(path_or_repo)
    if not _REPO_ID.match(repo):
        raise CheckpointError(
            f"{repo} does not exist (and is not a Hugging Face repo id such as openai/gpt-oss-20b)"
        )
    return _download(repo)


def _has_weights(directory: Path) -> bool:
    return (directory / "config.json").is_file() and any(directory.glob("*.safetensors"))


def _download(repo: str) -> Path:
    try:
        from huggingface_hub import snapshot_download

        logger.info("%s is not a local path: fetching it from the Hugging Face Hub", repo)
        snapshot = Path(snapshot_download(repo, allow_patterns=["original/*"]))
        if _has_weights(snapshot / "original"):
            return snapshot / "original"
        snapshot = Path(
            snapshot_download(repo, allow_patterns=["config.json", "*.safetensors", HF_INDEX_FILE])
        )
    # huggingface_hub raises many types (HTTP, offline, auth, not found); all mean the same here.
    except Exception as e:
        raise CheckpointError(
            f"'{repo}' is not a local directory, and fetching it from the Hugging Face Hub failed: "
            f"{type(e).__name__}: {e}. Pass a local checkpoint directory, check the network (offline, set "
            "HF_HUB_OFFLINE=1 to use a cached copy) or log in (`hf auth login`) for gated repos."
        ) from e
    if not _has_weights(snapshot):
        raise CheckpointError(f"the Hugging Face repo '{repo}' has no config.json + *.safetensors checkpoint")
    return snapshot
