"""The two checkpoint layouts: config.json in either form, and the Hugging Face tensors mapped onto ours.

References: the official gpt_oss.torch ModelConfig, transformers' GptOssConfig and GptOssForCausalLM (optional
test dependency: it runs our random Hugging Face checkpoint with its own loader and MXFP4 dequantisation), the
`safetensors` library for raw reads.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from gpt_oss_native.checkpoint import CheckpointError, load_checkpoint, open_checkpoint
from gpt_oss_native.config import GPT_OSS_20B, GPT_OSS_120B, ConfigError, ModelConfig
from gpt_oss_native.random_checkpoint import tiny_config, write_random_checkpoint
from gpt_oss_native.safetensors_io import SafetensorsFile, TensorSpec, write_safetensors

# openai/gpt-oss-20b's config.json and original/config.json as published on the Hub.
HUB_20B_CONFIG = {
    "architectures": ["GptOssForCausalLM"],
    "attention_bias": True,
    "attention_dropout": 0.0,
    "eos_token_id": 200002,
    "experts_per_token": 4,
    "head_dim": 64,
    "hidden_act": "silu",
    "hidden_size": 2880,
    "initial_context_length": 4096,
    "initializer_range": 0.02,
    "intermediate_size": 2880,
    "layer_types": ["sliding_attention", "full_attention"] * 12,
    "max_position_embeddings": 131072,
    "model_type": "gpt_oss",
    "num_attention_heads": 64,
    "num_experts_per_tok": 4,
    "num_hidden_layers": 24,
    "num_key_value_heads": 8,
    "num_local_experts": 32,
    "output_router_logits": False,
    "pad_token_id": 199999,
    "quantization_config": {
        "modules_to_not_convert": [
            "model.layers.*.self_attn",
            "model.layers.*.mlp.router",
            "model.embed_tokens",
            "lm_head",
        ],
        "quant_method": "mxfp4",
    },
    "rms_norm_eps": 1e-05,
    "rope_scaling": {
        "beta_fast": 32.0,
        "beta_slow": 1.0,
        "factor": 32.0,
        "original_max_position_embeddings": 4096,
        "rope_type": "yarn",
        "truncate": False,
    },
    "rope_theta": 150000,
    "router_aux_loss_coef": 0.9,
    "sliding_window": 128,
    "swiglu_limit": 7.0,
    "tie_word_embeddings": False,
    "transformers_version": "4.55.0.dev0",
    "use_cache": True,
    "vocab_size": 201088,
}
HUB_20B_ORIGINAL_CONFIG = {
    "num_hidden_layers": 24,
    "num_experts": 32,
    "experts_per_token": 4,
    "vocab_size": 201088,
    "hidden_size": 2880,
    "intermediate_size": 2880,
    "swiglu_limit": 7.0,
    "head_dim": 64,
    "num_attention_heads": 64,
    "num_key_value_heads": 8,
    "sliding_window": 128,
    "initial_context_length": 4096,
    "rope_theta": 150000,
    "rope_scaling_factor": 32.0,
    "rope_ntk_alpha": 1,
    "rope_ntk_beta": 32,
}
SMALL = tiny_config(vocab_size=512)
# csrc/core/model.h's ModelConfig, in order.
MODEL_H_FIELDS = [
    "num_layers",
    "num_experts",
    "experts_per_token",
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "head_dim",
    "num_attention_heads",
    "num_key_value_heads",
    "sliding_window",
    "initial_context_length",
    "rope_theta",
    "rope_scaling_factor",
    "rope_ntk_alpha",
    "rope_ntk_beta",
    "swiglu_limit",
    "swiglu_alpha",
    "norm_eps",
]

# ---- config.json ------------------------------------------------------------------------------------------


def test_published_configs_read_as_the_presets() -> None:
    assert ModelConfig.from_json(HUB_20B_CONFIG) == GPT_OSS_20B
    assert ModelConfig.from_json(HUB_20B_ORIGINAL_CONFIG) == GPT_OSS_20B
    hub_120b = HUB_20B_CONFIG | {
        "num_hidden_layers": 36,
        "num_local_experts": 128,
        "layer_types": ["sliding_attention", "full_attention"] * 18,
    }
    assert ModelConfig.from_json(hub_120b) == GPT_OSS_120B
    assert (
        ModelConfig.from_json(HUB_20B_ORIGINAL_CONFIG | {"num_hidden_layers": 36, "num_experts": 128})
        == GPT_OSS_120B
    )


@pytest.mark.parametrize(
    "config", [GPT_OSS_20B, GPT_OSS_120B, SMALL, SMALL.replace(norm_eps=1e-6, swiglu_alpha=1.5)]
)
def test_json_round_trips(config: ModelConfig) -> None:
    assert ModelConfig.from_json(json.loads(json.dumps(config.to_json()))) == config
    if config.swiglu_alpha == 1.702:
        assert ModelConfig.from_json(json.loads(json.dumps(config.to_hf_json()))) == config


def test_official_reference_reads_to_json() -> None:
    model_module = pytest.importorskip("gpt_oss.torch.model")
    reference = model_module.ModelConfig(**GPT_OSS_20B.to_json())
    assert reference == model_module.ModelConfig(**HUB_20B_ORIGINAL_CONFIG)


def test_transformers_config_agrees() -> None:
    """transformers reads our Hugging Face config.json, and we read the config.json it writes back."""
    transformers = pytest.importorskip("transformers")
    hf = transformers.GptOssConfig(**GPT_OSS_20B.to_hf_json())
    assert hf.num_local_experts == 32 and hf.layer_types[:2] == ["sliding_attention", "full_attention"]
    assert ModelConfig.from_json(json.loads(hf.to_json_string())) == GPT_OSS_20B
    assert ModelConfig.from_json(hf.to_dict()) == GPT_OSS_20B  # every generic field written out


def test_to_native_has_the_fields_of_model_h() -> None:
    native = GPT_OSS_20B.to_native()
    assert list(native) == MODEL_H_FIELDS
    assert native["num_layers"] == 24 and isinstance(native["rope_theta"], float)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"tie_word_embeddings": True}, "tie_word_embeddings is true"),
        ({"attention_bias": False}, "attention_bias is false"),
        ({"model_type": "llama"}, "model_type is 'llama'"),
        ({"layer_types": ["full_attention", "sliding_attention"] * 12}, "layer_types must alternate"),
        ({"rope_scaling": HUB_20B_CONFIG["rope_scaling"] | {"rope_type": "linear"}}, "rope type 'linear'"),
        ({"rope_scaling": HUB_20B_CONFIG["rope_scaling"] | {"truncate": True}}, "truncate=true"),
        ({"rope_scaling": HUB_20B_CONFIG["rope_scaling"] | {"mscale": 0.5}}, "rope_scaling.mscale"),
        ({"rope_scaling": HUB_20B_CONFIG["rope_scaling"] | {"colour": 1}}, "unknown rope_scaling key"),
        ({"quantization_config": {"quant_method": "bitsandbytes"}}, "quant_method is 'bitsandbytes'"),
        ({"experts_per_token": 2}, "num_experts_per_tok and experts_per_token disagree"),
        ({"initial_context_length": 8192}, "disagree"),
        ({"moe_shared_experts": 1}, r"unknown key\(s\) \['moe_shared_experts'\]"),
        ({"num_local_experts": None}, "num_experts must be a number"),
        (
            {"num_attention_heads": 60},
            r"num_attention_heads \(60\) must be a multiple of num_key_value_heads",
        ),
    ],
)
def test_bad_hf_config(change: dict, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected):
        ModelConfig.from_json(HUB_20B_CONFIG | change)


def test_hf_config_missing_key() -> None:
    config = dict(HUB_20B_CONFIG)
    del config["hidden_size"]
    with pytest.raises(ConfigError, match="missing key 'hidden_size'"):
        ModelConfig.from_json(config)


@pytest.mark.parametrize("layout", ["hf", "original"])
def test_any_bad_value_gives_a_config_error(layout: str) -> None:
    """Every key set to every kind of wrong value: a ConfigError or a valid config, never another exception."""
    base = HUB_20B_CONFIG if layout == "hf" else HUB_20B_ORIGINAL_CONFIG
    bad_values = [None, -1, 0, 1, 2.5, 1e30, "x", True, [], [1], {}, {"a": 1}]
    for key in base:
        for value in bad_values:
            try:
                ModelConfig.from_json(base | {key: value})
            except ConfigError:
                pass
        with pytest.raises(ConfigError):
            ModelConfig.from_json({k: v for k, v in base.items() if k != key} | {key + "_typo": base[key]})


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"hidden_size": 2800}, "hidden_size must be a positive multiple of 32"),
        ({"intermediate_size": 0}, "intermediate_size must be a positive multiple of 32"),
        ({"experts_per_token": 40}, r"experts_per_token must be in \[1, num_experts=32\]"),
        ({"head_dim": 63}, "head_dim must be positive and even"),
        ({"num_key_value_heads": 0}, "head counts must be > 0"),
        ({"sliding_window": -1}, "sliding_window must be >= 0"),
        ({"rope_scaling_factor": 0.5}, "rope_scaling_factor must be >= 1"),
        ({"initial_context_length": 64}, "YaRN ramp"),
        ({"num_layers": 2.5}, "num_layers must be a 32-bit integer"),
        ({"vocab_size": 2**31}, "vocab_size must be a 32-bit integer"),
        ({"num_layers": 1025}, "num_layers must be in"),
        ({"num_experts": "32"}, "num_experts must be a number"),
    ],
)
def test_invalid_config_values(change: dict, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected):
        GPT_OSS_20B.replace(**change)


def test_official_config_unknown_and_missing_keys() -> None:
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['num_local_expert'\]"):
        ModelConfig.from_json(HUB_20B_ORIGINAL_CONFIG | {"num_local_expert": 3})
    partial = {k: v for k, v in HUB_20B_ORIGINAL_CONFIG.items() if k not in ("vocab_size", "num_experts")}
    with pytest.raises(ConfigError, match=r"missing key\(s\) \['num_experts', 'vocab_size'\]"):
        ModelConfig.from_json(partial)
    # Size keys the reference would default to gpt-oss-20b's are required too.
    for key in ("experts_per_token", "head_dim"):
        with pytest.raises(ConfigError, match=rf"missing key\(s\) \['{key}'\]"):
            ModelConfig.from_json({k: v for k, v in HUB_20B_ORIGINAL_CONFIG.items() if k != key})


def test_official_config_defaults_are_the_reference_ones() -> None:
    import dataclasses

    from gpt_oss.torch.model import ModelConfig as ReferenceConfig

    reference_defaults = {f.name: f.default for f in dataclasses.fields(ReferenceConfig)}
    optional = ("swiglu_limit", "sliding_window", "initial_context_length", "rope_theta", "rope_scaling_factor",
                "rope_ntk_alpha", "rope_ntk_beta")
    trimmed = ModelConfig.from_json({k: v for k, v in HUB_20B_ORIGINAL_CONFIG.items() if k not in optional})
    assert {k: getattr(trimmed, k) for k in optional} == {k: reference_defaults[k] for k in optional}


def test_from_dir(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps(HUB_20B_CONFIG))
    assert ModelConfig.from_dir(tmp_path) == GPT_OSS_20B
    with pytest.raises(ConfigError, match="config.json does not exist"):
        ModelConfig.from_dir(tmp_path / "elsewhere")


# ---- the Hugging Face tensor layout ------------------------------------------------------------


def assert_same_weights(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert list(a) == list(b)
    for name, array in a.items():
        assert array.dtype == b[name].dtype and array.shape == b[name].shape, name
        np.testing.assert_array_equal(array, b[name], err_msg=name)


def test_both_layouts_give_identical_weights(tiny_checkpoint: Path, tiny_checkpoint_hf: Path) -> None:
    official = open_checkpoint(tiny_checkpoint, progress=False)
    hf = open_checkpoint(tiny_checkpoint_hf, progress=False)
    assert (official.layout, hf.layout) == ("original", "hf")
    assert official.config == hf.config
    assert len(hf.files) == 2
    assert_same_weights(official.weights, hf.weights)


def test_both_layouts_give_identical_logits(tiny_checkpoint: Path, tiny_checkpoint_hf: Path) -> None:
    _C = pytest.importorskip("gpt_oss_native._C")
    tokens = np.array([200006, 17, 4000, 90000, 200008, 5, 6, 7], np.int32)
    logits = []
    for path in (tiny_checkpoint, tiny_checkpoint_hf):
        config, weights = load_checkpoint(path, progress=False)
        model = _C.Model(config.to_native(), weights, backend="cpu", max_context=64, max_sequences=1)
        logits.append(model.forward(model.new_sequence(), tokens, all_logits=True))
    np.testing.assert_array_equal(logits[0], logits[1])


def test_qkv_rows_are_q_then_k_then_v(tiny_checkpoint_hf: Path, tiny_config: ModelConfig) -> None:
    """Read the HF q/k/v projections with the safetensors library and find them in our qkv rows."""
    torch = pytest.importorskip("torch")
    from safetensors import safe_open

    _, weights = load_checkpoint(tiny_checkpoint_hf, progress=False)
    index = json.loads((tiny_checkpoint_hf / "model.safetensors.index.json").read_text())["weight_map"]
    q = tiny_config.num_attention_heads * tiny_config.head_dim
    kv = tiny_config.num_key_value_heads * tiny_config.head_dim
    rows = {"q": slice(0, q), "k": slice(q, q + kv), "v": slice(q + kv, q + 2 * kv)}
    for layer in range(tiny_config.num_layers):
        for part, row_range in rows.items():
            for kind in ("weight", "bias"):
                name = f"model.layers.{layer}.self_attn.{part}_proj.{kind}"
                with safe_open(tiny_checkpoint_hf / index[name], framework="pt") as f:
                    stored = f.get_tensor(name).view(torch.int16).numpy().view(np.uint16)
                np.testing.assert_array_equal(
                    weights[f"block.{layer}.attn.qkv.{kind}"][row_range], stored, err_msg=name
                )


def test_single_file_hf_checkpoint(tiny_checkpoint: Path, tmp_path: Path, tiny_config: ModelConfig) -> None:
    path = write_random_checkpoint(tmp_path / "hf1", tiny_config, layout="hf", seed=0, shards=1)
    assert not (path / "model.safetensors.index.json").exists()
    assert_same_weights(
        load_checkpoint(tiny_checkpoint, progress=False)[1], load_checkpoint(path, progress=False)[1]
    )


def test_shards_are_named_like_the_hub(tmp_path: Path) -> None:
    path = write_random_checkpoint(tmp_path / "hf3", SMALL, layout="hf", shards=3)
    names = sorted(p.name for p in path.glob("*.safetensors"))
    assert names == [f"model-0000{k}-of-00002.safetensors" for k in range(3)]
    index = json.loads((path / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == set(names)
    assert index["metadata"]["total_size"] == sum(
        info.nbytes for name in names for info in SafetensorsFile(path / name).tensors.values()
    )


@pytest.fixture
def small_hf(tmp_path: Path) -> Path:
    return write_random_checkpoint(tmp_path / "hf", SMALL, layout="hf", seed=2, shards=2)


def hf_error(path: Path) -> str:
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path, progress=False)
    return str(info.value)


def rewrite_shards(path: Path, change) -> None:
    """Applies `change(name, dtype, array) -> [(name, dtype, array)]` to every shard; rewrites the index."""
    weight_map = {}
    for file in sorted(path.glob("*.safetensors")):
        source = SafetensorsFile(file)
        specs = []
        for name, info in source.tensors.items():
            for new_name, dtype, array in change(name, info.dtype, np.array(source.array(name))):
                specs.append(TensorSpec(new_name, dtype, array.shape, [array]))
                weight_map[new_name] = file.name
        del source
        write_safetensors(file, specs)
    (path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


def test_three_dimensional_blocks_are_accepted(small_hf: Path) -> None:
    """MXFP4 blocks saved as [experts, rows, cols / 2] hold the bytes of [experts, rows, cols / 32, 16]."""
    _, before = load_checkpoint(small_hf, progress=False)
    rewrite_shards(
        small_hf, lambda n, d, a: [(n, d, a.reshape(*a.shape[:2], -1) if n.endswith("_blocks") else a)]
    )
    _, after = load_checkpoint(small_hf, progress=False)
    assert_same_weights(before, after)


def test_dequantized_hf_checkpoint_is_refused(small_hf: Path) -> None:
    config = json.loads((small_hf / "config.json").read_text())
    del config["quantization_config"]
    (small_hf / "config.json").write_text(json.dumps(config))
    message = hf_error(small_hf)
    assert "no quantization_config" in message and "MXFP4" in message


def test_dequantized_experts_beside_mxfp4_are_extra_tensors(small_hf: Path) -> None:
    def add_dense(n: str, d: str, a: np.ndarray) -> list:
        if n.endswith("layers.0.mlp.experts.gate_up_proj_bias"):
            dense = np.zeros((SMALL.num_experts, SMALL.hidden_size, 2 * SMALL.intermediate_size), np.uint16)
            return [(n, d, a), ("model.layers.0.mlp.experts.gate_up_proj", "BF16", dense)]
        return [(n, d, a)]

    rewrite_shards(small_hf, add_dense)
    message = hf_error(small_hf)
    assert (
        "unexpected tensor(s) 'model.layers.0.mlp.experts.gate_up_proj' in" in message
        and ".safetensors" in message
    )


def test_hf_missing_tensor_names_the_hf_name(small_hf: Path) -> None:
    rewrite_shards(
        small_hf, lambda n, d, a: [] if n == "model.layers.1.self_attn.v_proj.bias" else [(n, d, a)]
    )
    message = hf_error(small_hf)
    assert "'model.layers.1.self_attn.v_proj.bias' is missing" in message and "index.json" in message


def test_hf_wrong_shape_names_the_hf_tensor_and_shard(small_hf: Path) -> None:
    name = "model.layers.0.self_attn.k_proj.weight"
    rewrite_shards(small_hf, lambda n, d, a: [(n, d, a[:-64] if n == name else a)])
    message = hf_error(small_hf)
    assert f"tensor '{name}' in {small_hf}" in message and "shape [64, 64], expected [128, 64]" in message


def test_index_pointing_to_a_missing_shard(small_hf: Path) -> None:
    shard = max(small_hf.glob("*.safetensors"))
    shard.unlink()
    message = hf_error(small_hf)
    assert f"in shard '{shard.name}', which does not exist" in message and "tensor '" in message


def test_index_listing_a_tensor_its_shard_lacks(small_hf: Path) -> None:
    index_file = small_hf / "model.safetensors.index.json"
    index = json.loads(index_file.read_text())
    shards = sorted(set(index["weight_map"].values()))
    name = "lm_head.weight"
    index["weight_map"][name] = next(s for s in shards if s != index["weight_map"][name])
    index_file.write_text(json.dumps(index))
    message = hf_error(small_hf)
    assert f"puts tensor '{name}' in" in message and "which does not hold it" in message


@pytest.mark.parametrize("text", ["{", '{"weight_map": 3}', '{"metadata": {}}', '{"weight_map": {"a": 1}}'])
def test_garbled_index(small_hf: Path, text: str) -> None:
    (small_hf / "model.safetensors.index.json").write_text(text)
    assert "not a valid safetensors index" in hf_error(small_hf)


def test_index_cannot_escape_the_directory(small_hf: Path, tmp_path: Path) -> None:
    index_file = small_hf / "model.safetensors.index.json"
    index = json.loads(index_file.read_text())
    outside = tmp_path / "outside.safetensors"
    shutil.copy(min(small_hf.glob("*.safetensors")), outside)
    index["weight_map"] = {k: "../outside.safetensors" for k in index["weight_map"]}
    index_file.write_text(json.dumps(index))
    assert "does not exist" in hf_error(small_hf)


@pytest.mark.slow
def test_transformers_computes_the_same_logits(tmp_path: Path) -> None:
    """transformers' GptOssForCausalLM, loading our random HF checkpoint with its own loader and MXFP4
    dequantisation, agrees in fp32 with our CPU backend fed by our loader (24 tokens, window 8)."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")  # transformers needs it for MXFP4 checkpoints
    _C = pytest.importorskip("gpt_oss_native._C")

    config = tiny_config(vocab_size=1024, num_layers=4, sliding_window=8)
    path = write_random_checkpoint(tmp_path / "hf", config, layout="hf", seed=4, shards=2)
    reference = transformers.GptOssForCausalLM.from_pretrained(path, dtype=torch.float32)
    tokens = np.arange(3, 1000, 37)[:24].astype(np.int32)
    with torch.inference_mode():
        expected = reference(torch.from_numpy(tokens.astype(np.int64))[None]).logits[0].numpy()
    loaded, weights = load_checkpoint(path, progress=False)
    model = _C.Model(loaded.to_native(), weights, backend="cpu", max_context=64, max_sequences=1)
    ours = model.forward(model.new_sequence(), tokens, all_logits=True)
    error = np.linalg.norm(ours - expected) / np.linalg.norm(expected)
    assert error < 1e-5, error
