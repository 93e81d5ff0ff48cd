"""The CUDA backend end to end against the official reference, gpt_oss.torch.model.Transformer in float32, on
random checkpoints written and loaded through the package's own writer and loader.

DESIGN.md's CUDA tolerance: relative L2 ≤ 2e-2 per position, and the greedy token agrees wherever the
reference's top-2 margin exceeds twice the measured logit error. Random weights make near-ties common, also in
the MoE router: where router logits around the 4th place are within ~1e-2, bf16 activations may pick another
set of 4 experts, that position's logits move by ~0.2 and, through its keys and values, later positions follow
(measured on the device, and reproduced on the CPU by rounding the reference where the CUDA backend rounds).
So a deviation must be explained: at the first position off, the reference is rerun with that position's
experts at one layer replaced by another set that logits perturbed by less than ROUTER_TIE would select, and
the position must then match; such swaps accumulate (the rerun reproduces their consequences downstream), at
most MAX_SWAPS of the positions. A position the reference cannot reproduce that way fails the test.
"""

from __future__ import annotations

import itertools
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
# Router logits are ~N(0, 1); the residual stream's bf16 error moves them by ~1e-2 at most (seen: swaps within
# 1.2e-2), so only sets of experts within this of the reference's top 4 may explain a deviation.
ROUTER_TIE = 5e-2
MAX_SWAPS = 0.1  # of the positions
ALTERNATIVES = 3  # experts past the k-th that an alternative set may take

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
    [tokens, 4, rows, cols] weights: 40 GB for 150 tokens at full width). Records each token's router ranking
    (top k + ALTERNATIVES) and routes the positions in self.swaps to the expert sets given there."""
    t = self.norm(x)
    g = self.gate(t)
    k = self.experts_per_token
    top = torch.topk(g, k=min(k + ALTERNATIVES, g.shape[-1]), dim=-1, sorted=True)
    self.ranking = (top.indices.numpy(), top.values.numpy())
    indices = top.indices[:, :k].clone()
    for position, experts in self.swaps.items():
        indices[position] = torch.tensor(experts)
    expert_weights = torch.nn.functional.softmax(torch.gather(g, 1, indices), dim=1)
    out = x.clone()
    for e in torch.unique(indices).tolist():
        rows, slots = torch.nonzero(indices == e, as_tuple=True)
        h = t[rows] @ self.mlp1_weight[e].T + self.mlp1_bias[e]
        h = reference_model.swiglu(h, limit=self.swiglu_limit)
        h = h @ self.mlp2_weight[e].T + self.mlp2_bias[e]
        out.index_add_(0, rows, h * expert_weights[rows, slots, None])
    return out


Swaps = dict[tuple[int, int], tuple[int, ...]]  # (layer, position) → the experts routed there instead


class Reference:
    """The official model of a checkpoint in float32: logits and each layer's router ranking per position."""

    def __init__(self, path: Path) -> None:
        self.model = reference_model.Transformer.from_checkpoint(str(path), device=torch.device("cpu")).float()

    def __call__(self, tokens: np.ndarray, swaps: Swaps | None = None) -> tuple[np.ndarray, list]:
        for layer, block in enumerate(self.model.block):
            block.mlp.swaps = {pos: experts for (at, pos), experts in (swaps or {}).items() if at == layer}
        original = reference_model.MLPBlock.forward
        reference_model.MLPBlock.forward = _mlp_forward
        try:
            with torch.inference_mode():
                logits = self.model(torch.from_numpy(tokens.astype(np.int64))).numpy()
        finally:
            reference_model.MLPBlock.forward = original
        return logits, [block.mlp.ranking for block in self.model.block]


def near_tie_alternatives(rankings: list, position: int, k: int) -> list[tuple[float, int, tuple[int, ...]]]:
    """(slack, layer, experts): expert sets other than the top k that logits moved by less than ROUTER_TIE
    could select at this position, the most plausible (smallest slack) first."""
    out = []
    for layer, (indices, values) in enumerate(rankings):
        ids, vals = indices[position], values[position]
        for chosen in itertools.combinations(range(len(ids)), k):
            if chosen == tuple(range(k)):
                continue
            left_out = [i for i in range(len(ids)) if i not in chosen]
            slack = float(vals[left_out].max() - vals[list(chosen)].min())
            if slack < ROUTER_TIE:
                out.append((slack, layer, tuple(int(ids[i]) for i in chosen)))
    return sorted(out)


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
    k = reference.model.block[0].mlp.experts_per_token
    swaps: Swaps = {}
    logits, rankings = reference(tokens)
    while True:
        errors = relative_errors(ours, logits[first:])
        off = np.flatnonzero(errors > TOLERANCE)
        if len(off) == 0:
            break
        position = first + int(off[0])
        assert len(swaps) < max(1, MAX_SWAPS * len(ours)), f"position {position}: too many router swaps {swaps}"
        alternatives = near_tie_alternatives(rankings, position, k)
        for _, layer, experts in alternatives:
            trial = swaps | {(layer, position): experts}
            trial_logits, trial_rankings = reference(tokens, trial)
            if relative_errors(ours[off[0]], trial_logits[position]) <= TOLERANCE:
                swaps, logits, rankings = trial, trial_logits, trial_rankings
                break
        else:
            raise AssertionError(
                f"position {position}: relative L2 error {errors[off[0]]:.2e}, not explained by any of "
                f"{len(alternatives)} router near-tie alternatives (swaps so far {swaps})"
            )
    reference_rows = logits[first:]
    for i in range(len(ours)):
        top2 = np.sort(reference_rows[i])[-2:]
        if top2[1] - top2[0] > 2 * float(np.abs(ours[i] - reference_rows[i]).max()):
            assert ours[i].argmax() == reference_rows[i].argmax(), f"position {first + i}: greedy token differs"
    print(f"max relative L2 error {relative_errors(ours, reference_rows).max():.2e}; router swaps {swaps}")


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
