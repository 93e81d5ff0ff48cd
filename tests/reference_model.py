"""Tiny random gpt-oss weights and the official reference's logits for them (tests only; uses torch).

`random_weights` builds the internal weight dict of csrc/core/model.h straight from NumPy (bf16 as uint16, MXFP4
blocks / scales as uint8, norm scales and sinks as float32), scaled so activations stay O(1). `reference_logits`
loads the very same values into `gpt_oss.torch.model.Transformer` (MXFP4 dequantised as
gpt_oss/torch/weights.py does), runs it in float32 and returns [tokens, vocab] logits.
"""

from __future__ import annotations

import math

import numpy as np

FP4_VALUES = np.array(
    [+0.0, +0.5, +1.0, +1.5, +2.0, +3.0, +4.0, +6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0],
    dtype=np.float32,
)
_FP4_RMS = float(np.sqrt(np.mean(FP4_VALUES**2)))


def model_config(**fields: int | float) -> dict[str, int | float]:
    """A config dict for _C.Model: small defaults, overridden by `fields`."""
    config: dict[str, int | float] = {
        "num_layers": 2,
        "num_experts": 4,
        "experts_per_token": 2,
        "vocab_size": 256,
        "hidden_size": 64,
        "intermediate_size": 64,
        "head_dim": 16,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "sliding_window": 8,
    }
    return config | fields


def bf16_to_f32(bits: np.ndarray) -> np.ndarray:
    return (bits.astype(np.uint32) << 16).view(np.float32)


def dequantize_mxfp4(blocks: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """[..., rows, cols/32, 16] codes + [..., rows, cols/32] E8M0 scales → float32 [..., rows, cols]: low nibble
    first, value · 2^(scale − 127), exactly as gpt_oss/torch/weights.py decodes them."""
    values = np.stack([FP4_VALUES[blocks & 0x0F], FP4_VALUES[blocks >> 4]], axis=-1)  # [..., G, 16, 2]
    values = values.reshape(*blocks.shape[:-1], 32)
    values = np.ldexp(values, scales.astype(np.int32)[..., None] - 127)
    return values.reshape(*blocks.shape[:-2], -1).astype(np.float32)


def random_weights(config: dict[str, int | float], seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    H, V, E = int(config["hidden_size"]), int(config["vocab_size"]), int(config["num_experts"])
    I, D = int(config["intermediate_size"]), int(config["head_dim"])
    q_heads, kv_heads = int(config["num_attention_heads"]), int(config["num_key_value_heads"])
    qkv = (q_heads + 2 * kv_heads) * D

    def bf16(shape: tuple[int, ...], std: float) -> np.ndarray:
        values = (rng.standard_normal(shape) * std).astype(np.float32)
        return (values.view(np.uint32) >> 16).astype(np.uint16)

    def f32(shape: tuple[int, ...], mean: float, std: float) -> np.ndarray:
        return (mean + rng.standard_normal(shape) * std).astype(np.float32)

    def mxfp4(experts: int, rows: int, cols: int) -> tuple[np.ndarray, np.ndarray]:
        blocks = rng.integers(0, 256, (experts, rows, cols // 32, 16), dtype=np.uint8)
        # Scale near 1 / (rms(code) · sqrt(cols)) so each dot product is O(1), ±1 octave of spread.
        base = 127 - round(math.log2(_FP4_RMS * math.sqrt(cols)))
        scales = rng.integers(base - 1, base + 2, (experts, rows, cols // 32)).astype(np.uint8)
        return blocks, scales

    w: dict[str, np.ndarray] = {
        "embedding.weight": bf16((V, H), 1.0),
        "norm.scale": f32((H,), 1.0, 0.1),
        "unembedding.weight": bf16((V, H), 1.0 / math.sqrt(H)),
    }
    for i in range(int(config["num_layers"])):
        b = f"block.{i}."
        mlp1_blocks, mlp1_scales = mxfp4(E, 2 * I, H)
        mlp2_blocks, mlp2_scales = mxfp4(E, H, I)
        w |= {
            b + "attn.norm.scale": f32((H,), 1.0, 0.1),
            b + "attn.qkv.weight": bf16((qkv, H), 1.0 / math.sqrt(H)),
            b + "attn.qkv.bias": bf16((qkv,), 0.1),
            b + "attn.sinks": f32((q_heads,), 0.0, 1.0),
            b + "attn.out.weight": bf16((H, q_heads * D), 1.0 / math.sqrt(q_heads * D)),
            b + "attn.out.bias": bf16((H,), 0.1),
            b + "mlp.norm.scale": f32((H,), 1.0, 0.1),
            b + "mlp.gate.weight": bf16((E, H), 1.0 / math.sqrt(H)),
            b + "mlp.gate.bias": bf16((E,), 0.1),
            b + "mlp.mlp1_weight.blocks": mlp1_blocks,
            b + "mlp.mlp1_weight.scales": mlp1_scales,
            b + "mlp.mlp1_bias": bf16((E, 2 * I), 0.1),
            b + "mlp.mlp2_weight.blocks": mlp2_blocks,
            b + "mlp.mlp2_weight.scales": mlp2_scales,
            b + "mlp.mlp2_bias": bf16((E, H), 0.1),
        }
    return w


def reference_logits(config: dict[str, int | float], weights: dict[str, np.ndarray], tokens: np.ndarray) -> np.ndarray:
    """Logits [len(tokens), vocab] of gpt_oss.torch.model.Transformer holding `weights`, computed in float32."""
    import torch
    from gpt_oss.torch.model import ModelConfig, Transformer

    if float(config.get("norm_eps", 1e-5)) != 1e-5 or float(config.get("swiglu_alpha", 1.702)) != 1.702:
        raise ValueError("the reference hard-codes norm_eps 1e-5 and swiglu_alpha 1.702")
    fields = {k: v for k, v in config.items() if k not in ("num_layers", "norm_eps", "swiglu_alpha")}
    model = Transformer(ModelConfig(num_hidden_layers=int(config["num_layers"]), **fields), device=torch.device("cpu"))
    model = model.float().eval()
    for name, param in model.named_parameters():
        if name.endswith(("mlp1_weight", "mlp2_weight")):
            value = dequantize_mxfp4(weights[name + ".blocks"], weights[name + ".scales"])
        else:
            value = weights[name]
            value = bf16_to_f32(value) if value.dtype == np.uint16 else value
        assert param.shape == value.shape, (name, param.shape, value.shape)
        param.data.copy_(torch.from_numpy(np.ascontiguousarray(value)))
    with torch.inference_mode():
        return model(torch.from_numpy(tokens.astype(np.int64))).numpy()
