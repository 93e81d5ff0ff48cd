"""Checkpoint loading (official layout, format level) and the random checkpoint writer.

References: the `safetensors` library reads our files and writes files we read; the official gpt_oss.torch
loader reads our random checkpoints. Every corruption must raise CheckpointError naming the file and tensor.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from gpt_oss_native.checkpoint import CheckpointError, expected_weights, load_checkpoint, open_checkpoint
from gpt_oss_native.config import GPT_OSS_20B, ModelConfig
from gpt_oss_native.random_checkpoint import _draw, _official_specs, tiny_config, write_random_checkpoint
from gpt_oss_native.safetensors_io import SafetensorsFile, TensorSpec, write_safetensors

FP4_VALUES = np.array([0, 0.5, 1, 1.5, 2, 3, 4, 6, -0.0, -0.5, -1, -1.5, -2, -3, -4, -6], dtype=np.float64)
SMALL = tiny_config(vocab_size=512)  # format tests do not need harmony's vocabulary


def bf16_to_f64(bits: np.ndarray) -> np.ndarray:
    return (bits.astype(np.uint32) << 16).view(np.float32).astype(np.float64)


def dequantize(blocks: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """MXFP4 → float64 [..., rows, cols], written from the format description in csrc/core/model.h."""
    values = np.stack([FP4_VALUES[blocks & 0x0F], FP4_VALUES[blocks >> 4]], axis=-1)  # low nibble first
    values = values.reshape(*blocks.shape[:-1], 32) * np.exp2(scales.astype(np.float64) - 127)[..., None]
    return values.reshape(*blocks.shape[:-2], -1)


@pytest.fixture(scope="module")
def small_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_random_checkpoint(tmp_path_factory.mktemp("small"), SMALL, seed=3)


def copy_of(checkpoint: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(checkpoint, tmp_path / "copy"))


def rewrite(file: Path, change) -> None:
    """Rewrites a safetensors file through `change(name, dtype, array) -> list[(name, dtype, array)]`."""
    source = SafetensorsFile(file)
    specs = []
    for name, info in source.tensors.items():
        for new_name, dtype, array in change(name, info.dtype, np.array(source.array(name))):
            specs.append(TensorSpec(new_name, dtype, array.shape, [array]))
    del source
    write_safetensors(file, specs, {"format": "pt"})


def write_raw(file: Path, header: bytes | dict, data: bytes = b"") -> None:
    """A safetensors file from a literal header, bypassing our writer (for garbled headers)."""
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    file.write_bytes(struct.pack("<Q", len(raw)) + raw + data)


# ---- round trips and references ----------------------------------------------------------------------


def test_loaded_weights_follow_the_internal_contract(tiny_checkpoint: Path, tiny_config: ModelConfig) -> None:
    config, weights = load_checkpoint(tiny_checkpoint, progress=False)
    assert config == tiny_config
    contract = expected_weights(config)
    assert list(weights) == list(contract)
    numpy_dtype = {"bf16": np.uint16, "f32": np.float32, "u8": np.uint8}
    for name, (kind, shape) in contract.items():
        array = weights[name]
        assert array.dtype == numpy_dtype[kind] and array.shape == shape, name
        assert array.flags.c_contiguous and array.flags.aligned, name
    # The big tensors are views of the mapped file, not copies.
    for name in ("embedding.weight", "unembedding.weight", "block.0.mlp.mlp1_weight.blocks"):
        assert not weights[name].flags.owndata and not weights[name].flags.writeable, name


def test_weights_match_the_safetensors_library(tiny_checkpoint: Path) -> None:
    torch = pytest.importorskip("torch")
    from safetensors.torch import load_file

    _, weights = load_checkpoint(tiny_checkpoint, progress=False)
    stored = load_file(tiny_checkpoint / "model.safetensors")
    assert set(stored) == set(weights)
    for name, tensor in stored.items():
        if tensor.dtype == torch.bfloat16 and weights[name].dtype == np.float32:
            expected = tensor.float().numpy()  # norm scales and sinks: widened exactly
        elif tensor.dtype == torch.bfloat16:
            expected = tensor.view(torch.int16).numpy().view(np.uint16)
        else:
            expected = tensor.numpy()
        np.testing.assert_array_equal(weights[name], expected, err_msg=name)


def test_we_read_files_the_safetensors_library_writes(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file

    rng = np.random.default_rng(0)
    tensors = {
        "a": torch.from_numpy(rng.standard_normal((3, 5)).astype(np.float32)).to(torch.bfloat16),
        "b": torch.from_numpy(rng.integers(0, 256, (7, 2, 16), dtype=np.uint8)),
        "c": torch.from_numpy(rng.standard_normal(11).astype(np.float32)),
        "empty": torch.zeros((0, 4), dtype=torch.float32),
    }
    save_file(tensors, tmp_path / "x.safetensors", metadata={"k": "v"})
    file = SafetensorsFile(tmp_path / "x.safetensors")
    assert file.metadata == {"k": "v"}
    np.testing.assert_array_equal(file.array("a"), tensors["a"].view(torch.int16).numpy().view(np.uint16))
    np.testing.assert_array_equal(file.array("b"), tensors["b"].numpy())
    np.testing.assert_array_equal(file.array("c"), tensors["c"].numpy())
    assert file.array("empty").shape == (0, 4)


def test_official_reference_reads_our_random_checkpoint(tiny_checkpoint: Path) -> None:
    """gpt_oss.torch's own loader (safetensors + its MXFP4 dequantisation) sees the values we map."""
    torch = pytest.importorskip("torch")
    model_module = pytest.importorskip("gpt_oss.torch.model")

    _, weights = load_checkpoint(tiny_checkpoint, progress=False)
    model = model_module.Transformer.from_checkpoint(str(tiny_checkpoint), device=torch.device("cpu"))
    params = dict(model.named_parameters())
    for name, array in weights.items():
        if name.endswith(".blocks"):
            base = name.removesuffix(".blocks")
            ours = dequantize(array, weights[base + ".scales"])
            np.testing.assert_array_equal(params[base].detach().float().numpy(), ours, err_msg=name)
        elif name.endswith(".scales"):
            continue
        else:
            ours = array.astype(np.float64) if array.dtype == np.float32 else bf16_to_f64(array)
            np.testing.assert_array_equal(params[name].detach().float().numpy(), ours, err_msg=name)


def test_random_weights_keep_activations_order_one(tmp_path: Path) -> None:
    """Through 12 layers of the official reference, the residual stream and logits stay O(1)."""
    torch = pytest.importorskip("torch")
    model_module = pytest.importorskip("gpt_oss.torch.model")
    config = tiny_config(vocab_size=1024, num_layers=12, hidden_size=128, intermediate_size=128)
    path = write_random_checkpoint(tmp_path / "deep", config, seed=1)
    model = model_module.Transformer.from_checkpoint(str(path), device=torch.device("cpu")).float()
    tokens = torch.arange(0, 1024, 32)
    with torch.inference_mode():
        x = model.embedding(tokens)
        for block in model.block:
            before = x
            x = block(x)
            update = (x - before).pow(2).mean().sqrt().item()
            assert 0.2 < update < 5, update  # each layer contributes, none explodes
        logits = model.unembedding(model.norm(x))
    rms = x.pow(2).mean().sqrt().item()
    assert 1 < rms < 10, rms
    assert 0.3 < logits.std().item() < 3
    assert torch.softmax(logits, -1).max(-1).values.mean().item() < 0.5  # no collapsed distribution


@pytest.mark.parametrize("hidden", [64, 2880])
def test_expert_weights_have_variance_one_over_fan_in(hidden: int) -> None:
    """Dequantized MXFP4 experts have the variance of the bf16 matrices, 1/fan_in, at any width."""
    config = GPT_OSS_20B.replace(hidden_size=hidden, intermediate_size=hidden)
    rng = np.random.default_rng(0)
    shape = (1, 512, hidden // 32)
    blocks = _draw(config, rng, "block.0.mlp.mlp1_weight.blocks", (*shape, 16))
    scales = _draw(config, rng, "block.0.mlp.mlp1_weight.scales", shape)
    variance = dequantize(blocks, scales).var()
    assert abs(variance * hidden - 1) < 0.1, variance * hidden


def test_writer_is_deterministic_per_seed(tmp_path: Path) -> None:
    a = write_random_checkpoint(tmp_path / "a", SMALL, seed=5)
    b = write_random_checkpoint(tmp_path / "b", SMALL, seed=5)
    c = write_random_checkpoint(tmp_path / "c", SMALL, seed=6)
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()
    assert (a / "model.safetensors").read_bytes() != (c / "model.safetensors").read_bytes()


def test_writer_labels_random_weights(small_checkpoint: Path) -> None:
    assert "RANDOM WEIGHTS" in (small_checkpoint / "README.txt").read_text()
    ckpt = open_checkpoint(small_checkpoint, progress=False)
    assert ckpt.random_weights and "RANDOM" in ckpt.summary()
    # config.json stays exactly what the official reference accepts.
    model_module = pytest.importorskip("gpt_oss.torch.model")
    model_module.ModelConfig(**json.loads((small_checkpoint / "config.json").read_text()))


def test_writer_refuses_to_overwrite_without_permission(small_checkpoint: Path, tmp_path: Path) -> None:
    path = copy_of(small_checkpoint, tmp_path)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        write_random_checkpoint(path, SMALL)
    write_random_checkpoint(path, SMALL.replace(num_layers=3), overwrite=True)
    assert load_checkpoint(path, progress=False)[0].num_layers == 3


def test_official_shards_load_like_one_file(small_checkpoint: Path, tmp_path: Path) -> None:
    sharded = write_random_checkpoint(tmp_path / "sharded", SMALL, seed=3, shards=3)
    assert len(list(sharded.glob("*.safetensors"))) == 3
    _, one = load_checkpoint(small_checkpoint, progress=False)
    _, three = load_checkpoint(sharded, progress=False)
    for name in one:
        np.testing.assert_array_equal(one[name], three[name], err_msg=name)


def test_writer_streams_full_size_tensors_in_bounded_chunks() -> None:
    """gpt-oss-20b's embedding is 1.2 GB: the writer must produce it in chunks, never whole."""
    spec = next(s for s in _official_specs(GPT_OSS_20B, seed=0) if s.name == "embedding.weight")
    chunks = iter(spec.chunks)
    first = next(chunks)
    assert first.dtype == np.uint16 and first.shape[1] == GPT_OSS_20B.hidden_size
    assert first.nbytes <= 64 << 20
    values = bf16_to_f64(first[:64])
    assert 0.9 < values.std() < 1.1  # embedding rows: unit variance


def test_parent_directory_with_original_subdirectory(tiny_checkpoint: Path, tmp_path: Path) -> None:
    shutil.copytree(tiny_checkpoint, tmp_path / "gpt-oss" / "original")
    ckpt = open_checkpoint(tmp_path / "gpt-oss", progress=False)
    assert ckpt.directory == tmp_path / "gpt-oss" / "original" and ckpt.layout == "original"


def test_progress_bar_and_summary(small_checkpoint: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ckpt = open_checkpoint(small_checkpoint, progress=True)
    assert "mapping weights" in capsys.readouterr().err
    assert f"loaded {len(ckpt.weights)} tensors" in ckpt.summary()
    assert ckpt.nbytes == sum(a.nbytes for a in ckpt.weights.values()) and ckpt.seconds > 0


def test_cpu_model_runs_on_loaded_weights(tiny_checkpoint: Path) -> None:
    _C = pytest.importorskip("gpt_oss_native._C")
    config, weights = load_checkpoint(tiny_checkpoint, progress=False)
    model = _C.Model(config.to_native(), weights, backend="cpu", max_context=64, max_sequences=1)
    logits = model.forward(model.new_sequence(), np.array([200006, 1, 2, 3], np.int32))
    assert logits.shape == (config.vocab_size,) and np.isfinite(logits).all()


# ---- corrupt checkpoints ----------------------------------------------------------------------


def load_error(path: Path) -> str:
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path, progress=False)
    return str(info.value)


def test_missing_tensor(small_checkpoint: Path, tmp_path: Path) -> None:
    path = copy_of(small_checkpoint, tmp_path)
    rewrite(path / "model.safetensors", lambda n, d, a: [] if n == "block.1.attn.sinks" else [(n, d, a)])
    message = load_error(path)
    assert "'block.1.attn.sinks' is missing" in message and "model.safetensors" in message


def test_wrong_shape(small_checkpoint: Path, tmp_path: Path) -> None:
    path = copy_of(small_checkpoint, tmp_path)
    name = "block.0.attn.out.weight"
    rewrite(
        path / "model.safetensors", lambda n, d, a: [(n, d, a.reshape(a.shape[::-1]) if n == name else a)]
    )
    message = load_error(path)
    assert f"'{name}' in {path / 'model.safetensors'}" in message
    assert "shape [256, 64], expected [64, 256]" in message


def test_wrong_dtype(small_checkpoint: Path, tmp_path: Path) -> None:
    path = copy_of(small_checkpoint, tmp_path)
    name = "block.1.mlp.gate.weight"

    def widen(n: str, d: str, a: np.ndarray) -> list:
        return [(n, "F32", bf16_to_f64(a).astype(np.float32)) if n == name else (n, d, a)]

    rewrite(path / "model.safetensors", widen)
    message = load_error(path)
    assert f"'{name}' in {path / 'model.safetensors'} has dtype F32, expected BF16" in message


def test_f32_norm_scales_are_accepted(small_checkpoint: Path, tmp_path: Path) -> None:
    """Norm scales and sinks may be stored in f32 (our contract's dtype) as well as bf16."""
    path = copy_of(small_checkpoint, tmp_path)
    rewrite(
        path / "model.safetensors",
        lambda n, d, a: [
            (n, "F32", bf16_to_f64(a).astype(np.float32)) if n.endswith("norm.scale") else (n, d, a)
        ],
    )
    _, widened = load_checkpoint(path, progress=False)
    _, original = load_checkpoint(small_checkpoint, progress=False)
    np.testing.assert_array_equal(widened["norm.scale"], original["norm.scale"])


def test_unexpected_extra_tensor(small_checkpoint: Path, tmp_path: Path) -> None:
    path = copy_of(small_checkpoint, tmp_path)
    extra = "block.2.attn.sinks"  # a third layer the config does not have
    rewrite(
        path / "model.safetensors",
        lambda n, d, a: [(n, d, a), (extra, d, a)] if n == "block.1.attn.sinks" else [(n, d, a)],
    )
    message = load_error(path)
    assert f"'{extra}' in {path / 'model.safetensors'}" in message and "disagree" in message


def test_tensor_stored_twice(small_checkpoint: Path, tmp_path: Path) -> None:
    path = copy_of(small_checkpoint, tmp_path)
    sinks = np.zeros(SMALL.num_attention_heads, np.uint16)
    write_safetensors(
        path / "extra.safetensors", [TensorSpec("block.0.attn.sinks", "BF16", sinks.shape, [sinks])]
    )
    message = load_error(path)
    assert "'block.0.attn.sinks' is stored twice" in message and "extra.safetensors" in message


@pytest.mark.parametrize("cut", ["4 bytes", "mid-header", "after header", "mid-data", "last byte"])
def test_truncated_file(small_checkpoint: Path, tmp_path: Path, cut: str) -> None:
    path = copy_of(small_checkpoint, tmp_path)
    file = path / "model.safetensors"
    data = file.read_bytes()
    header_end = 8 + struct.unpack("<Q", data[:8])[0]
    keep = {
        "4 bytes": 4,
        "mid-header": header_end // 2,
        "after header": header_end,
        "mid-data": (header_end + len(data)) // 2,
        "last byte": len(data) - 1,
    }[cut]
    file.write_bytes(data[:keep])
    message = load_error(path)
    assert str(file) in message and "truncated" in message
    if keep >= header_end:  # the header survives: the message names the first tensor that does not fit
        assert "tensor '" in message and f"only {keep} bytes" in message


def test_empty_file(small_checkpoint: Path, tmp_path: Path) -> None:
    path = copy_of(small_checkpoint, tmp_path)
    (path / "model.safetensors").write_bytes(b"")
    assert "0 bytes is too short" in load_error(path)


GOOD = {"t": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (b"\xff\xfe not json", "not valid JSON"),
        (b"[1, 2]", "must be a JSON object"),
        (b'{"t": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, "t": {}}', "duplicate key"),
        (
            {"t": {"dtype": "F33", "shape": [2], "data_offsets": [0, 8]}},
            "tensor 't' in .*unknown dtype 'F33'",
        ),
        (
            {"t": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}},
            "tensor 't' in .*non-negative integers",
        ),
        ({"t": {"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}}, "tensor 't' in .*0 <= begin <= end"),
        (
            {"t": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}},
            "tensor 't' in .*span 4 bytes but F32 \\[2\\] needs 8",
        ),
        ({"t": {"dtype": "F32", "shape": [2]}}, "tensor 't' in .*exactly dtype, shape and data_offsets"),
        (
            {
                "t": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                "u": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]},
            },
            "tensor 'u' in .*overlap tensor 't'",
        ),
        (
            {
                "t": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                "u": {"dtype": "F32", "shape": [1], "data_offsets": [12, 16]},
            },
            "tensor 'u' in .*leave a gap after byte 8",
        ),
        ({"t": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, "tensor 't' in .*file is truncated"),
        ({"__metadata__": {"a": 1}, **GOOD}, "__metadata__ must map strings to strings"),
    ],
)
def test_garbled_header(tmp_path: Path, header: bytes | dict, expected: str) -> None:
    file = tmp_path / "bad.safetensors"
    write_raw(file, header, data=b"\0" * 12)
    with pytest.raises(CheckpointError, match=expected) as info:
        SafetensorsFile(file)
    assert str(file) in str(info.value)


@pytest.mark.parametrize("field", ["dtype", "shape", "data_offsets"])
def test_any_bad_header_value_gives_a_checkpoint_error(tmp_path: Path, field: str) -> None:
    file = tmp_path / "bad.safetensors"
    bad_values = [
        None,
        -1,
        2**70,
        1.5,
        "x",
        "BF16",
        True,
        [],
        [None],
        [2**70],
        [1.5, 2],
        [-1, 8],
        {"a": 1},
        [[0]],
    ]
    for value in bad_values:
        entry = GOOD["t"] | {field: value}
        write_raw(file, {"t": entry}, data=b"\0" * 8)
        try:
            SafetensorsFile(file)
        except CheckpointError as e:
            assert "tensor 't' in" in str(e)


def test_huge_header_length(tmp_path: Path) -> None:
    file = tmp_path / "bad.safetensors"
    file.write_bytes(struct.pack("<Q", 2**63) + b"{}")
    with pytest.raises(CheckpointError, match="header length 9223372036854775808 does not fit"):
        SafetensorsFile(file)


def test_misaligned_tensor_is_copied_aligned(tmp_path: Path) -> None:
    """Files from other writers may place a tensor at an odd offset; we hand out an aligned copy."""
    file = tmp_path / "odd.safetensors"
    values = np.arange(3, dtype=np.float32)
    write_raw(
        file,
        {
            "b": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]},
            "f": {"dtype": "F32", "shape": [3], "data_offsets": [1, 13]},
        },
        data=b"\x07" + values.tobytes(),
    )
    array = SafetensorsFile(file).array("f")
    assert array.flags.aligned
    np.testing.assert_array_equal(array, values)


def test_random_header_corruption_never_crashes(small_checkpoint: Path, tmp_path: Path) -> None:
    """Any byte of the header replaced: either a CheckpointError or a correct load, never anything else."""
    path = copy_of(small_checkpoint, tmp_path)
    file = path / "model.safetensors"
    pristine = file.read_bytes()
    header_end = 8 + struct.unpack("<Q", pristine[:8])[0]
    rng = np.random.default_rng(0)
    outcomes = {"error": 0, "loaded": 0}
    for position in rng.integers(0, header_end, 60):
        corrupt = bytearray(pristine)
        corrupt[position] = (corrupt[position] + int(rng.integers(1, 256))) % 256
        file.write_bytes(corrupt)
        try:
            load_checkpoint(path, progress=False)
            outcomes["loaded"] += 1
        except CheckpointError:
            outcomes["error"] += 1
    assert outcomes["error"] > 40, outcomes


def test_missing_config(small_checkpoint: Path, tmp_path: Path) -> None:
    path = copy_of(small_checkpoint, tmp_path)
    (path / "config.json").unlink()
    message = load_error(path)
    assert f"{path / 'config.json'} is missing" in message


def test_invalid_config(small_checkpoint: Path, tmp_path: Path) -> None:
    path = copy_of(small_checkpoint, tmp_path)
    (path / "config.json").write_text("{ not json")
    assert f"{path / 'config.json'}: cannot read it as JSON" in load_error(path)
    config = SMALL.to_json() | {"num_expert": 4}
    (path / "config.json").write_text(json.dumps(config))
    message = load_error(path)
    assert str(path / "config.json") in message and "unknown key(s) ['num_expert']" in message


def test_config_that_does_not_match_the_weights(small_checkpoint: Path, tmp_path: Path) -> None:
    path = copy_of(small_checkpoint, tmp_path)
    (path / "config.json").write_text(json.dumps(SMALL.replace(intermediate_size=96).to_json()))
    message = load_error(path)
    assert "'block.0.mlp.mlp1_weight.blocks' in" in message and "expected [8, 192, 2, 16]" in message


def test_no_weights(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps(SMALL.to_json()))
    assert "no *.safetensors files" in load_error(tmp_path)


def test_paths_that_are_not_checkpoints(tmp_path: Path) -> None:
    assert "does not exist" in load_error(tmp_path / "no" / "such" / "dir")
    (tmp_path / "file.bin").write_bytes(b"")
    assert "is a file" in load_error(tmp_path / "file.bin")


def test_repo_id_offline_gives_a_clear_error(tmp_path: Path) -> None:
    """A repo id that is not cached, with the Hub unreachable: a CheckpointError saying what to do."""
    env = os.environ | {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    script = (
        "from gpt_oss_native.checkpoint import CheckpointError, load_checkpoint\n"
        "try:\n    load_checkpoint('openai/gpt-oss-20b', progress=False)\n"
        "except CheckpointError as e:\n    print(e)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], env=env, cwd=tmp_path, capture_output=True, text=True, check=True
    )
    assert "'openai/gpt-oss-20b' is not a local directory" in out.stdout
    assert "fetching it from the Hugging Face Hub failed" in out.stdout and "HF_HUB_OFFLINE" in out.stdout


def test_contract_sizes_match_gpt_oss_20b() -> None:
    """The contract adds up to gpt-oss-20b's published parameter count (20.9 B) and ~12.8 GiB of weights."""
    contract = expected_weights(GPT_OSS_20B)
    params = sum(
        math.prod(shape) * (2 if name.endswith(".blocks") else 1)
        for name, (_, shape) in contract.items()
        if not name.endswith(".scales")
    )
    assert 20.9e9 < params < 21.0e9, params
    size = sum(math.prod(shape) * {"bf16": 2, "f32": 2, "u8": 1}[kind] for kind, shape in contract.values())
    assert 12.5 * 2**30 < size < 13.0 * 2**30, size / 2**30


def test_repo_id_prefers_the_original_files(
    tiny_checkpoint: Path, tiny_checkpoint_hf: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A repo id fetches `original/*` first and falls back to the Hugging Face files when there are none."""
    import huggingface_hub

    snapshots = {"openai/with-original": tmp_path / "a", "someone/hf-only": tmp_path / "b"}
    shutil.copytree(tiny_checkpoint, snapshots["openai/with-original"] / "original")
    shutil.copytree(tiny_checkpoint_hf, snapshots["someone/hf-only"])
    calls = []

    def fake_snapshot_download(repo_id: str, allow_patterns: list[str]) -> str:
        calls.append((repo_id, allow_patterns))
        return str(snapshots[repo_id])

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    ckpt = open_checkpoint("openai/with-original", progress=False)
    assert ckpt.layout == "original" and ckpt.directory == snapshots["openai/with-original"] / "original"
    assert calls == [("openai/with-original", ["original/*"])]
    ckpt = open_checkpoint("someone/hf-only", progress=False)
    assert ckpt.layout == "hf" and ckpt.directory == snapshots["someone/hf-only"]
    assert calls[-1][1] == ["config.json", "*.safetensors", "model.safetensors.index.json"]
