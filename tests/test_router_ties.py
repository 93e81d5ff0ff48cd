"""The router near-tie check of the CUDA end-to-end tests (tests/router_ties.py) runs without a GPU: the official
reference, rounded to bf16 where the CUDA backend rounds, plays the CUDA backend. Its deviations from the fp32
reference must all be explained by near-tie swaps, and real mismatches (noise, a wrong sliding window) must not.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from gpt_oss_native.config import ModelConfig
from gpt_oss_native.random_checkpoint import write_random_checkpoint

torch = pytest.importorskip("torch")
reference_model = pytest.importorskip("gpt_oss.torch.model")
from router_ties import Reference, check_against_reference

pytestmark = pytest.mark.slow  # ~30 s on two cores: each explanation reruns the reference

# 128 experts and a 16-token window: near-ties are frequent (this seed needs five swaps over 150 positions).
CONFIG = {
    "num_layers": 3, "num_experts": 128, "experts_per_token": 4, "vocab_size": 3001, "hidden_size": 192,
    "intermediate_size": 320, "head_dim": 64, "num_attention_heads": 4, "num_key_value_heads": 2,
    "sliding_window": 16,
}


def _bf16(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.bfloat16).float()


def _attention_rounded(self: reference_model.AttentionBlock, x: torch.Tensor) -> torch.Tensor:
    """AttentionBlock.forward with k, v and the attention output rounded to bf16 (the CUDA KV cache and the
    out-projection's input)."""
    t = self.norm(x)
    qkv = self.qkv(t)
    heads, kv_heads, d = self.num_attention_heads, self.num_key_value_heads, self.head_dim
    q = qkv[:, : heads * d].contiguous().view(-1, kv_heads, heads // kv_heads, d)
    k = qkv[:, heads * d : (heads + kv_heads) * d].contiguous().view(-1, kv_heads, d)
    v = qkv[:, (heads + kv_heads) * d :].contiguous().view(-1, kv_heads, d)
    q, k = self.rope(q, k)
    t = reference_model.sdpa(q, _bf16(k), _bf16(v), self.sinks, self.sm_scale, self.sliding_window)
    return x + self.out(_bf16(t))


def _mlp_rounded(self: reference_model.MLPBlock, x: torch.Tensor) -> torch.Tensor:
    """MLPBlock.forward with the normed input and the SwiGLU output rounded to bf16 (the router's and the
    experts' inputs on the CUDA backend)."""
    t = _bf16(self.norm(x))
    top = torch.topk(self.gate(t), k=self.experts_per_token, dim=-1, sorted=True)
    weights = torch.softmax(top.values, dim=1)
    out = x.clone()
    for e in torch.unique(top.indices).tolist():
        rows, slots = torch.nonzero(top.indices == e, as_tuple=True)
        h = _bf16(reference_model.swiglu(t[rows] @ self.mlp1_weight[e].T + self.mlp1_bias[e], limit=self.swiglu_limit))
        out.index_add_(0, rows, (h @ self.mlp2_weight[e].T + self.mlp2_bias[e]) * weights[rows, slots, None])
    return out


@contextmanager
def _rounded_like_cuda() -> Iterator[None]:
    originals = reference_model.AttentionBlock.forward, reference_model.MLPBlock.forward
    reference_model.AttentionBlock.forward, reference_model.MLPBlock.forward = _attention_rounded, _mlp_rounded
    try:
        yield
    finally:
        reference_model.AttentionBlock.forward, reference_model.MLPBlock.forward = originals


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Reference, np.ndarray]:
    config = ModelConfig(**CONFIG)
    path = write_random_checkpoint(tmp_path_factory.mktemp("ties"), config, seed=21)
    tokens = np.random.default_rng(1).integers(0, config.vocab_size, 150).astype(np.int32)
    return path, Reference(path), tokens


def _rounded_logits(path: Path, tokens: np.ndarray, sliding_window: int | None = None) -> np.ndarray:
    model = reference_model.Transformer.from_checkpoint(str(path), device=torch.device("cpu")).float()
    if sliding_window is not None:
        for block in model.block[::2]:
            block.attn.sliding_window = sliding_window
    with _rounded_like_cuda(), torch.inference_mode():
        return model(torch.from_numpy(tokens.astype(np.int64))).numpy()


def test_bf16_rounding_deviations_are_all_explained(setup: tuple[Path, Reference, np.ndarray]) -> None:
    path, reference, tokens = setup
    swaps = check_against_reference(_rounded_logits(path, tokens), reference, tokens)
    assert swaps, "this seed has router near-ties that bf16 rounding breaks the other way"


def test_noise_at_one_position_is_not_explained(setup: tuple[Path, Reference, np.ndarray]) -> None:
    _, reference, tokens = setup
    logits, _ = reference(tokens)
    noise = np.random.default_rng(0).standard_normal(logits.shape[1]).astype(np.float32)
    logits[30] += 0.1 * np.linalg.norm(logits[30]) / np.linalg.norm(noise) * noise
    with pytest.raises(AssertionError, match="position 30: .* not explained"):
        check_against_reference(logits, reference, tokens)


def test_a_wrong_sliding_window_is_not_explained(setup: tuple[Path, Reference, np.ndarray]) -> None:
    path, reference, tokens = setup
    with pytest.raises(AssertionError, match="not explained|too many router swaps"):
        check_against_reference(_rounded_logits(path, tokens, sliding_window=17), reference, tokens)
