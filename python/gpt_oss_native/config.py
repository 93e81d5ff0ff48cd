"""ModelConfig: the model's shape and constants, read from either checkpoint layout's config.json.

Field names are those of csrc/core/model.h's ModelConfig. Two JSON layouts exist:

* official (``original/config.json``, what ``gpt_oss.torch.model.ModelConfig(**json)`` reads):
  ``num_hidden_layers``,
  ``num_experts``, ``experts_per_token``, ..., ``rope_ntk_alpha``, ``rope_ntk_beta``;
* Hugging Face (``config.json`` with ``model_type: gpt_oss``): ``num_local_experts``, ``num_experts_per_tok``,
  ``rope_scaling`` (or transformers 5's ``rope_parameters``) ``{factor, beta_fast, beta_slow,
  original_max_position_embeddings}``, ``layer_types``, ``rms_norm_eps``, plus bookkeeping keys we ignore.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """A config.json that does not describe a gpt-oss model this engine can run."""


@dataclass(frozen=True)
class ModelConfig:
    num_layers: int
    num_experts: int
    experts_per_token: int
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    head_dim: int
    num_attention_heads: int
    num_key_value_heads: int
    sliding_window: int = 128  # on even layers; 0 disables it
    initial_context_length: int = 4096  # YaRN's original context
    rope_theta: float = 150000.0
    rope_scaling_factor: float = 32.0
    rope_ntk_alpha: float = 1.0
    rope_ntk_beta: float = 32.0
    swiglu_limit: float = 7.0
    swiglu_alpha: float = 1.702
    norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        self._validate()

    @property
    def qkv_dim(self) -> int:
        return (self.num_attention_heads + 2 * self.num_key_value_heads) * self.head_dim

    def layer_is_sliding(self, layer: int) -> bool:
        return self.sliding_window > 0 and layer % 2 == 0

    def replace(self, **changes: Any) -> ModelConfig:
        return dataclasses.replace(self, **changes)

    # ---- validation -------------------------------------------------------------------------------------
    def _validate(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            kind = int if f.type == "int" else float
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(f"{f.name} must be a number, got {value!r}")
            if kind is int and not (float(value).is_integer() and abs(value) < 2**31):
                raise ConfigError(f"{f.name} must be a 32-bit integer, got {value!r}")
            object.__setattr__(self, f.name, kind(value))

        def require(ok: bool, what: str) -> None:
            if not ok:
                raise ConfigError(f"invalid model config: {what}")

        require(0 < self.num_layers <= 1024, f"num_layers must be in [1, 1024], got {self.num_layers}")
        require(self.num_experts > 0, f"num_experts must be > 0, got {self.num_experts}")
        require(
            0 < self.experts_per_token <= self.num_experts,
            f"experts_per_token must be in [1, num_experts={self.num_experts}], got {self.experts_per_token}",
        )
        require(self.vocab_size > 0, f"vocab_size must be > 0, got {self.vocab_size}")
        for name in ("hidden_size", "intermediate_size"):
            value = getattr(self, name)
            require(
                value > 0 and value % 32 == 0,
                f"{name} must be a positive multiple of 32 (MXFP4 blocks), got {value}",
            )
        require(
            self.head_dim > 0 and self.head_dim % 2 == 0,
            f"head_dim must be positive and even, got {self.head_dim}",
        )
        require(
            self.num_attention_heads > 0 and self.num_key_value_heads > 0,
            f"head counts must be > 0, got {self.num_attention_heads} / {self.num_key_value_heads}",
        )
        require(
            self.num_attention_heads % self.num_key_value_heads == 0,
            f"num_attention_heads ({self.num_attention_heads}) must be a multiple of num_key_value_heads "
            f"({self.num_key_value_heads})",
        )
        require(self.sliding_window >= 0, f"sliding_window must be >= 0, got {self.sliding_window}")
        require(self.initial_context_length > 0, "initial_context_length must be > 0")
        require(self.rope_theta > 1, f"rope_theta must be > 1, got {self.rope_theta}")
        require(
            self.rope_scaling_factor >= 1, f"rope_scaling_factor must be >= 1, got {self.rope_scaling_factor}"
        )
        require(self.swiglu_limit > 0 and self.swiglu_alpha > 0, "swiglu_limit and swiglu_alpha must be > 0")
        require(self.norm_eps > 0, f"norm_eps must be > 0, got {self.norm_eps}")
        if self.rope_scaling_factor > 1:
            # YaRN's NTK-by-parts ramp must lie inside the rotary dimensions (the reference asserts it).
            require(
                0 < self.rope_ntk_alpha < self.rope_ntk_beta,
                f"rope_ntk_alpha ({self.rope_ntk_alpha}) must be in (0, rope_ntk_beta={self.rope_ntk_beta})",
            )
            half = self.head_dim / 2

            def ramp_edge(beta: float) -> float:
                return (
                    half
                    * math.log(self.initial_context_length / (beta * 2 * math.pi))
                    / math.log(self.rope_theta)
                )

            low, high = ramp_edge(self.rope_ntk_beta), ramp_edge(self.rope_ntk_alpha)
            require(
                0 < low < high < half - 1,
                f"YaRN ramp [{low:.2f}, {high:.2f}] must lie in (0, head_dim/2 - 1 = {half - 1}): "
                "check head_dim, initial_context_length, rope_theta and rope_ntk_alpha/beta",
            )

    # ---- JSON -------------------------------------------------------------------------------------------
    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ModelConfig:
        """Reads either layout (see the module docstring); unknown or missing keys raise ConfigError."""
        if not isinstance(data, dict):
            raise ConfigError(f"a model config must be a JSON object, got {type(data).__name__}")
        if is_hf_config(data):
            fields, layer_types = _fields_from_hf(data)
            config = cls(**fields)
            if layer_types is not None and config.sliding_window:
                layer_types = layer_types if isinstance(layer_types, list) else [layer_types]
                expected = [
                    "sliding_attention" if config.layer_is_sliding(i) else "full_attention"
                    for i in range(config.num_layers)
                ]
                if layer_types != expected:
                    raise ConfigError(
                        "layer_types must alternate sliding_attention (even layers) and full_attention (odd "
                        f"layers) as in gpt-oss, got {layer_types}"
                    )
            return config
        return cls(**_fields_from_official(data))

    @classmethod
    def from_dir(cls, path: str | os.PathLike[str]) -> ModelConfig:
        """Reads `path`/config.json (either layout)."""
        file = Path(path) / "config.json"
        try:
            data = json.loads(file.read_text())
        except FileNotFoundError:
            raise ConfigError(
                f"{file} does not exist: a checkpoint directory needs its config.json"
            ) from None
        except (OSError, ValueError) as e:
            raise ConfigError(f"{file}: cannot read it as JSON ({e})") from e
        try:
            return cls.from_json(data)
        except ConfigError as e:
            raise ConfigError(f"{file}: {e}") from e

    def to_json(self) -> dict[str, Any]:
        """The official layout (what gpt_oss.torch reads). swiglu_alpha and norm_eps, which that layout lacks,
        carry, appear only when they differ from the model's constants."""
        out: dict[str, Any] = {
            "num_hidden_layers": self.num_layers,
            **{name: getattr(self, name) for name in _OFFICIAL_FIELDS},
        }
        for name in _OPTIONAL_OFFICIAL_FIELDS:
            if getattr(self, name) != _DEFAULTS[name]:
                out[name] = getattr(self, name)
        return out

    def to_hf_json(self) -> dict[str, Any]:
        """The Hugging Face layout, as openai/gpt-oss-* publish it (MXFP4 experts)."""
        if self.swiglu_alpha != _DEFAULTS["swiglu_alpha"]:
            raise ConfigError(
                "the Hugging Face layout of gpt-oss has no place for a non-default swiglu_alpha"
            )
        return {
            "architectures": ["GptOssForCausalLM"],
            "model_type": "gpt_oss",
            "attention_bias": True,
            "attention_dropout": 0.0,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "hidden_size": self.hidden_size,
            "initial_context_length": self.initial_context_length,
            "intermediate_size": self.intermediate_size,
            "layer_types": [
                "sliding_attention" if self.layer_is_sliding(i) else "full_attention"
                for i in range(self.num_layers)
            ],
            "max_position_embeddings": int(self.initial_context_length * self.rope_scaling_factor),
            "num_attention_heads": self.num_attention_heads,
            "num_experts_per_tok": self.experts_per_token,
            "num_hidden_layers": self.num_layers,
            "num_key_value_heads": self.num_key_value_heads,
            "num_local_experts": self.num_experts,
            "quantization_config": {
                "modules_to_not_convert": [
                    "model.layers.*.self_attn",
                    "model.layers.*.mlp.router",
                    "model.embed_tokens",
                    "lm_head",
                ],
                "quant_method": "mxfp4",
            },
            "rms_norm_eps": self.norm_eps,
            "rope_scaling": {
                "beta_fast": self.rope_ntk_beta,
                "beta_slow": self.rope_ntk_alpha,
                "factor": self.rope_scaling_factor,
                "original_max_position_embeddings": self.initial_context_length,
                "rope_type": "yarn",
                "truncate": False,
            },
            "rope_theta": self.rope_theta,
            "sliding_window": self.sliding_window,
            "swiglu_limit": self.swiglu_limit,
            "tie_word_embeddings": False,
            "vocab_size": self.vocab_size,
        }

    def to_native(self) -> dict[str, int | float]:
        """The dict `gpt_oss_native._C.Model` takes (model.h's field names)."""
        return dataclasses.asdict(self)


_DEFAULTS = {
    f.name: f.default for f in dataclasses.fields(ModelConfig) if f.default is not dataclasses.MISSING
}
# Official keys besides num_hidden_layers, in the order of gpt_oss.torch.model.ModelConfig.
_OFFICIAL_FIELDS = (
    "num_experts",
    "experts_per_token",
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "swiglu_limit",
    "head_dim",
    "num_attention_heads",
    "num_key_value_heads",
    "sliding_window",
    "initial_context_length",
    "rope_theta",
    "rope_scaling_factor",
    "rope_ntk_alpha",
    "rope_ntk_beta",
)
_OPTIONAL_OFFICIAL_FIELDS = ("swiglu_alpha", "norm_eps")
# An official config may omit the keys ModelConfig has a default for (the same as gpt_oss.torch's). The
# reference defaults its size keys too (to gpt-oss-20b's); here they are required, so that a config missing
# one is an error rather than silently another model.
_OFFICIAL_OPTIONAL_KEYS = set(_DEFAULTS)


def is_hf_config(data: dict[str, Any]) -> bool:
    """Whether a config.json dict is in the Hugging Face layout (else: the official one)."""
    return "model_type" in data or "num_local_experts" in data


def _fields_from_official(data: dict[str, Any]) -> dict[str, Any]:
    known = {"num_hidden_layers", *_OFFICIAL_FIELDS, *_OPTIONAL_OFFICIAL_FIELDS}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(
            f"unknown key(s) {unknown} in an official-layout config (known: {sorted(known)}); a Hugging Face "
            "config.json carries model_type: gpt_oss"
        )
    missing = sorted(known - _OFFICIAL_OPTIONAL_KEYS - set(data))
    if missing:
        raise ConfigError(f"missing key(s) {missing} in an official-layout config")
    fields = {k: v for k, v in data.items() if k != "num_hidden_layers"}
    return {"num_layers": data["num_hidden_layers"], **fields}


# Hugging Face keys that do not change the forward pass this engine computes (training, generation and
# bookkeeping settings). Any other unknown key is an error: it may mean a model variant we would run wrongly.
_HF_IGNORED_KEYS = {
    # gpt_oss settings that do not change inference
    "attention_dropout",
    "hidden_act",  # gpt-oss always uses its clamped SwiGLU; transformers ignores this too
    "initializer_range",
    "max_position_embeddings",
    "output_router_logits",
    "router_aux_loss_coef",
    # transformers' generic PreTrainedConfig fields and bookkeeping
    "_attn_implementation_autoset",
    "_name_or_path",
    "architectures",
    "auto_map",
    "bos_token_id",
    "chunk_size_feed_forward",
    "dtype",
    "eos_token_id",
    "id2label",
    "is_encoder_decoder",
    "label2id",
    "model_type",
    "output_attentions",
    "output_hidden_states",
    "pad_token_id",
    "problem_type",
    "return_dict",
    "torch_dtype",
    "transformers_version",
    "use_cache",
}


def _fields_from_hf(data: dict[str, Any]) -> tuple[dict[str, Any], Any]:
    """ModelConfig's fields, and layer_types to check against the validated config."""
    data = dict(data)
    if data.get("model_type", "gpt_oss") != "gpt_oss":
        raise ConfigError(f"model_type is {data['model_type']!r}, expected 'gpt_oss'")

    def take(key: str, default: Any = dataclasses.MISSING) -> Any:
        if key in data:
            return data.pop(key)
        if default is dataclasses.MISSING:
            raise ConfigError(f"missing key {key!r} in a Hugging Face gpt_oss config")
        return default

    def agree(key: str, value: Any, other_key: str) -> Any:
        # The published config.json repeats a few official keys beside their Hugging Face names.
        if other_key in data and data.pop(other_key) != value:
            raise ConfigError(f"{key} and {other_key} disagree")
        return value

    fields: dict[str, Any] = {
        "num_layers": take("num_hidden_layers"),
        "num_experts": agree("num_local_experts", take("num_local_experts"), "num_experts"),
        "experts_per_token": agree(
            "num_experts_per_tok", take("num_experts_per_tok", 4), "experts_per_token"
        ),
        "vocab_size": take("vocab_size"),
        "hidden_size": take("hidden_size"),
        "intermediate_size": take("intermediate_size"),
        "num_attention_heads": take("num_attention_heads"),
        "num_key_value_heads": take("num_key_value_heads"),
        "swiglu_limit": take("swiglu_limit", _DEFAULTS["swiglu_limit"]),
        "swiglu_alpha": take("swiglu_alpha", _DEFAULTS["swiglu_alpha"]),
        "norm_eps": take("rms_norm_eps", _DEFAULTS["norm_eps"]),
    }
    fields["head_dim"] = take("head_dim", None)
    if fields["head_dim"] is None:  # transformers' default
        try:
            fields["head_dim"] = fields["hidden_size"] // fields["num_attention_heads"]
        except (TypeError, ZeroDivisionError):
            raise ConfigError(
                "head_dim is missing and hidden_size / num_attention_heads gives none"
            ) from None
    fields["sliding_window"] = take("sliding_window", None) or 0

    layer_types = take("layer_types", None)
    if take("tie_word_embeddings", False):
        raise ConfigError("tie_word_embeddings is true, but gpt-oss has a separate unembedding (lm_head)")
    if not take("attention_bias", True):
        raise ConfigError("attention_bias is false, but gpt-oss attention projections have biases")
    quantization = take("quantization_config", None)
    method = quantization.get("quant_method") if isinstance(quantization, dict) else quantization
    if quantization is not None and method != "mxfp4":
        raise ConfigError(
            f"quantization_config.quant_method is {method!r}; this engine runs the MXFP4 experts as "
            "openai/gpt-oss-* publish them"
        )

    rope = take("rope_scaling", None) or take("rope_parameters", None) or {}
    data.pop("rope_parameters", None)
    if not isinstance(rope, dict):
        raise ConfigError(f"rope_scaling must be an object, got {rope!r}")
    rope = dict(rope)
    rope_theta = take("rope_theta", rope.pop("rope_theta", _DEFAULTS["rope_theta"]))
    rope_type = rope.pop("rope_type", rope.pop("type", "yarn"))
    if rope_type != "yarn":
        raise ConfigError(f"rope type {rope_type!r} is not supported; gpt-oss uses 'yarn'")
    if rope.pop("truncate", False):
        raise ConfigError("rope truncate=true rounds YaRN's ramp; gpt-oss uses truncate=false")
    fields["rope_theta"] = rope_theta
    fields["rope_scaling_factor"] = rope.pop("factor", _DEFAULTS["rope_scaling_factor"])
    fields["rope_ntk_beta"] = rope.pop("beta_fast", _DEFAULTS["rope_ntk_beta"])
    fields["rope_ntk_alpha"] = rope.pop("beta_slow", _DEFAULTS["rope_ntk_alpha"])
    fields["initial_context_length"] = agree(
        "original_max_position_embeddings",
        rope.pop("original_max_position_embeddings", data.get("initial_context_length", 4096)),
        "initial_context_length",
    )
    for key in ("attention_factor", "mscale", "mscale_all_dim"):
        if rope.get(key) is not None:
            raise ConfigError(
                f"rope_scaling.{key} is not supported (gpt-oss uses YaRN's default 0.1 ln(s) + 1)"
            )
        rope.pop(key, None)
    if rope:
        raise ConfigError(f"unknown rope_scaling key(s) {sorted(rope)}")

    unknown = sorted(set(data) - _HF_IGNORED_KEYS)
    if unknown:
        raise ConfigError(f"unknown key(s) {unknown} in a Hugging Face gpt_oss config")
    return fields, layer_types


GPT_OSS_20B = ModelConfig(
    num_layers=24,
    num_experts=32,
    experts_per_token=4,
    vocab_size=201088,
    hidden_size=2880,
    intermediate_size=2880,
    head_dim=64,
    num_attention_heads=64,
    num_key_value_heads=8,
)
GPT_OSS_120B = GPT_OSS_20B.replace(num_layers=36, num_experts=128)
