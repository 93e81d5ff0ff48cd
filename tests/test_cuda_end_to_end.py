"""The CUDA backend end to end against the official reference, gpt_oss.torch.model.Transformer in float32, on
random checkpoints written and loaded through the package's own writer and loader.

DESIGN.md's CUDA tolerance: relative L2 ≤ 2e-2 per position, and the greedy token agrees wherever the
reference's top-2 margin exceeds twice the measured logit error. Random weights make near-ties common, also in
the MoE router: where the 4th and 5th router logits of a position are close, bf16 activations may pick the
other expert, that position's logits move by ~0.2 and, through its keys and values, later positions follow
(measured on the device). So a deviation must be explained: at the first position off, the reference is rerun
with that position's 4th expert swapped for its 5th at a layer where the two are within ROUTER_TIE, and the
position must then match; the swaps accumulate (the rerun reproduces their consequences downstream), at most
MAX_FLIPS of them. Any position the reference cannot reproduce that way fails the test.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from gpt_oss_native import _C
from gpt_oss_native.checkpoint import load_checkpoint
from gpt_oss_native.config import ModelConfig
from gpt_oss_native.random_checkpoint import write_random_checkpoint

if not _C.cuda_devices():
    pytest.skip("needs an NVIDIA GPU and a CUDA build of _C", allow_module_level=True)

torch = pytest.importorskip("torch")
reference_model = pytest.importorskip("gpt_oss.torch.model")

pytestmark = pytest.mark.cuda

TOLERANCE = 2e-2
# Router logits are ~N(0, 1); the residual stream's bf16 error moves them by ~1e-2 at most (seen: flips at
# gaps up to 1.2e-2), so only a closer 4th/5th pair may explain a deviation.
ROUTER_TIE = 5e-2
MAX_FLIPS = 8

# Widths are multiples of 64 but not of 128, like gpt-oss's 2880; vocabularies are odd.
CASES = {
    # gpt-oss's attention (64 q heads, 8 KV heads, window 128) and the 20b's expert count.
    "gpt-oss-heads-32-experts": {
        "num_layers": 2, "num_experts": 32, "experts_per_token": 4, "vocab_size": 4099, "hidden_size": 320,
        "intermediate_size": 192, "head_dim": 64, "num_attention_heads": 64, "num_key_value_heads": 8,
        "sliding_window": 128,
    },
    # The 120b's expert count, 3 layers (sliding, full, sliding), small GQA, a window the ring wraps often.
    "128-experts-window-16": {
        "num_layers": 3, "num_experts": 128, "experts_per_token": 4, "vocab_size": 3001, "hidden_size": 192,
        "intermediate_size": 320, "head_dim": 64, "num_attention_heads": 4, "num_key_value_heads": 2,
        "sliding_window": 16,
    },
    # gpt-oss's own widths (hidden = intermediate = 2880) in two layers.
    "full-width": {
        "num_layers": 2, "num_experts": 32, "experts_per_token": 4, "vocab_size": 2053, "hidden_size": 2880,
        "intermediate_size": 2880, "head_dim": 64, "num_attention_heads": 64, "num_key_value_heads": 8,
        "sliding_window": 128,
    },
}


def _mlp_forward(self: reference_model.MLPBlock, x: torch.Tensor) -> torch.Tensor:
    """gpt_oss.torch.model.MLPBlock.forward with the experts applied expert by expert (the original gathers
    [tokens, 4, rows, cols] weights: 40 GB for 150 tokens at full width). Records each token's 4th/5th router
    gap and applies the swaps in self.flips (positions whose 4th expert becomes their 5th)."""
    t = self.norm(x)
    g = self.gate(t)
    k = self.experts_per_token
    top = torch.topk(g, k=min(k + 1, g.shape[-1]), dim=-1, sorted=True)
    values, indices = top.values[:, :k].clone(), top.indices[:, :k].clone()
    gaps = top.values[:, k - 1] - top.values[:, k] if g.shape[-1] > k else torch.full((len(x),), torch.inf)
    self.router_gaps = gaps.numpy()
    for position in self.flips:
        values[position, k - 1], indices[position, k - 1] = top.values[position, k], top.indices[position, k]
    expert_weights = torch.nn.functional.softmax(values, dim=1)
    out = x.clone()
    for e in torch.unique(indices).tolist():
        rows, slots = torch.nonzero(indices == e, as_tuple=True)
        h = t[rows] @ self.mlp1_weight[e].T + self.mlp1_bias[e]
        h = reference_model.swiglu(h, limit=self.swiglu_limit)
        h = h @ self.mlp2_weight[e].T + self.mlp2_bias[e]
        out.index_add_(0, rows, h * expert_weights[rows, slots, None])
    return out


class Reference:
    """The official model of a checkpoint in float32: logits and, per layer and position, the router gap."""

    def __init__(self, path: Path) -> None:
        self.model = reference_model.Transformer.from_checkpoint(str(path), device=torch.device("cpu")).float()

    def __call__(
        self, tokens: np.ndarray, flips: frozenset[tuple[int, int]] = frozenset()
    ) -> tuple[np.ndarray, np.ndarray]:
        """flips: (layer, position) pairs routed to their 5th expert instead of their 4th."""
        for layer, block in enumerate(self.model.block):
            block.mlp.flips = [position for (at, position) in flips if at == layer]
        original = reference_model.MLPBlock.forward
        reference_model.MLPBlock.forward = _mlp_forward
        try:
            with torch.inference_mode():
                logits = self.model(torch.from_numpy(tokens.astype(np.int64))).numpy()
        finally:
            reference_model.MLPBlock.forward = original
        return logits, np.stack([block.mlp.router_gaps for block in self.model.block])


@pytest.fixture(scope="module", params=CASES.keys())
def case(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Reference]:
    config = ModelConfig(**CASES[request.param])
    path = write_random_checkpoint(tmp_path_factory.mktemp(request.param), config, seed=len(request.param))
    return path, Reference(path)


def cuda_model(path: Path, **options: int) -> tuple[ModelConfig, _C.Model]:
    config, weights = load_checkpoint(path, progress=False)
    return config, _C.Model(config.to_native(), weights, backend="cuda", **options)


def relative_errors(ours: np.ndarray, reference: np.ndarray) -> np.ndarray:
    return np.linalg.norm(ours - reference, axis=-1) / np.linalg.norm(reference, axis=-1)


def check_against_reference(ours: np.ndarray, reference: Reference, tokens: np.ndarray, first: int = 0) -> None:
    """ours[i] are the logits after tokens[: first + i + 1]. Asserts the tolerance at every position, explaining
    deviations by router near-tie swaps (module doc), and the greedy token wherever the margin is clear."""
    assert np.isfinite(ours).all(), "non-finite logits"
    flips: frozenset[tuple[int, int]] = frozenset()
    logits, gaps = reference(tokens)
    while True:
        errors = relative_errors(ours, logits[first:])
        off = np.flatnonzero(errors > TOLERANCE)
        if len(off) == 0:
            break
        position = first + int(off[0])
        candidates = [(float(gaps[layer, position]), layer) for layer in range(gaps.shape[0])]
        explained = False
        for gap, layer in sorted(candidates):
            if gap >= ROUTER_TIE or len(flips) >= MAX_FLIPS:
                break
            trial_logits, trial_gaps = reference(tokens, flips | {(layer, position)})
            if relative_errors(ours[off[0]], trial_logits[position]) <= TOLERANCE:
                flips = flips | {(layer, position)}
                logits, gaps, explained = trial_logits, trial_gaps, True
                break
        assert explained, (
            f"position {position}: relative L2 error {errors[off[0]]:.2e}, not explained by a router near-tie "
            f"(smallest 4th/5th gap there {min(candidates)[0]:.1e}; swaps so far {sorted(flips)})"
        )
    reference_rows = logits[first:]
    for i in range(len(ours)):
        top2 = np.sort(reference_rows[i])[-2:]
        if top2[1] - top2[0] > 2 * float(np.abs(ours[i] - reference_rows[i]).max()):
            assert ours[i].argmax() == reference_rows[i].argmax(), f"position {first + i}: greedy token differs"
    print(f"max relative L2 error {relative_errors(ours, reference_rows).max():.2e} with router swaps {sorted(flips)}")


def test_prefill_logits_match_reference(case: tuple[Path, Reference]) -> None:
    path, reference = case
    config, cuda = cuda_model(path, max_context=512)
    tokens = np.random.default_rng(1).integers(0, config.vocab_size, 150).astype(np.int32)  # past the window
    ours = cuda.forward(cuda.new_sequence(), tokens, all_logits=True)
    check_against_reference(ours, reference, tokens)


def test_long_generation_matches_reference_position_by_position(case: tuple[Path, Reference]) -> None:
    """300 greedy decode steps (graph replays) past the window through forward_sample; a second sequence (its
    own cache slot and graph) fed the same tokens through forward gives the logits, and the reference reruns
    the whole sequence at once (no cache) to check every position."""
    path, reference = case
    config, cuda = cuda_model(path, max_context=512)
    tokens = list(np.random.default_rng(2).integers(0, config.vocab_size, 7))
    sampled_seq, logits_seq = cuda.new_sequence(), cuda.new_sequence()
    picked = cuda.forward_sample(sampled_seq, np.array(tokens, np.int32), temperature=0.0)
    rows = [cuda.forward(logits_seq, np.array(tokens, np.int32))]
    for step in range(300):
        top2 = np.sort(rows[-1])[-2:]
        if top2[1] - top2[0] > 1e-3:  # clear of fp32 summation-order noise
            assert picked == int(np.argmax(rows[-1])), f"step {step}: forward_sample disagrees with forward"
        tokens.append(picked)
        picked = cuda.forward_sample(sampled_seq, np.array([picked], np.int32), temperature=0.0)
        rows.append(cuda.forward(logits_seq, np.array([tokens[-1]], np.int32)))
    assert cuda.sequence_length(sampled_seq) == cuda.sequence_length(logits_seq) == 307
    check_against_reference(np.stack(rows), reference, np.array(tokens, np.int32), first=6)


def test_freed_slot_gives_a_fresh_sequence(case: tuple[Path, Reference]) -> None:
    """A new sequence that reuses a freed slot (its cache and graph) sees nothing of the old one."""
    path, _ = case
    config, cuda = cuda_model(path, max_context=256, max_sequences=1)
    rng = np.random.default_rng(3)
    first = rng.integers(0, config.vocab_size, 20).astype(np.int32)
    seq = cuda.new_sequence()
    expected = cuda.forward(seq, first, all_logits=True)
    cuda.forward(seq, rng.integers(0, config.vocab_size, 200).astype(np.int32))
    cuda.free_sequence(seq)
    again = cuda.new_sequence()
    assert cuda.sequence_length(again) == 0
    replay = cuda.forward(again, first, all_logits=True)
    error = np.linalg.norm(replay - expected) / np.linalg.norm(expected)
    assert error < 1e-5, f"relative L2 {error:.2e}: the reused slot leaked state"  # stale keys would be O(1)


def test_user_errors_are_clear_exceptions(tmp_path: Path) -> None:
    config = ModelConfig(**CASES["128-experts-window-16"])
    path = write_random_checkpoint(tmp_path, config, seed=5)
    _, weights = load_checkpoint(path, progress=False)
    native = config.to_native()
    with pytest.raises(ValueError, match="max_context"):
        _C.Model(native, weights, backend="cuda", max_context=10**6)
    with pytest.raises(ValueError, match="does not exist"):
        _C.Model(native, weights, backend="cuda", device=len(_C.cuda_devices()))
    cuda = _C.Model(native, weights, backend="cuda", max_context=8, max_sequences=1)
    seq = cuda.new_sequence()
    with pytest.raises(RuntimeError, match="sequences are in use"):
        cuda.new_sequence()
    with pytest.raises(ValueError, match="outside the vocabulary"):
        cuda.forward(seq, np.array([config.vocab_size], np.int32))
    cuda.forward(seq, np.arange(8, dtype=np.int32))
    with pytest.raises(ValueError, match="past max_context"):
        cuda.forward(seq, np.array([1], np.int32))
    cuda.free_sequence(seq)
    with pytest.raises(ValueError, match="does not exist"):
        cuda.forward(seq, np.array([1], np.int32))
