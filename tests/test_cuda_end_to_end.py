"""The CUDA backend end to end against the official reference, gpt_oss.torch.model.Transformer in float32, on
random checkpoints written and loaded through the package's own writer and loader.

DESIGN.md's CUDA tolerance: relative L2 ≤ 2e-2 per position, and the greedy token agrees wherever the
reference's top-2 margin exceeds twice the measured logit error. Random weights make near-ties common, also in
the MoE router: where the reference's 4th and 5th router logits are closer than ROUTER_TIE at some layer, bf16
activations may pick the other expert and that position's logits move by ~0.2 (measured on the device:
every such failure sat on the position of smallest router margin). Such a position is excused, and only it:
any other position must meet the tolerance, and at most MAX_EXCUSED of the positions may be excused.
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
# Router logits are ~N(0, 1); bf16 rounding of the normed input moves them by ~1e-3 (rms), so a top-4/top-5 gap
# under 0.01 (~6 sigma) may flip.
ROUTER_TIE = 1e-2
MAX_EXCUSED = 0.1

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


def _mlp_forward_recording_router_gaps(self: reference_model.MLPBlock, x: torch.Tensor) -> torch.Tensor:
    """gpt_oss.torch.model.MLPBlock.forward, token by token (the original gathers [tokens, 4, rows, cols]
    expert weights at once: 40 GB for 150 tokens at full width), recording each token's router gap."""
    t = self.norm(x)
    g = self.gate(t)
    experts = torch.topk(g, k=self.experts_per_token, dim=-1, sorted=True)
    expert_weights = torch.nn.functional.softmax(experts.values, dim=1)
    if g.shape[-1] > self.experts_per_token:
        top = torch.topk(g, k=self.experts_per_token + 1, dim=-1, sorted=True).values
        self.router_gaps = (top[:, -2] - top[:, -1]).numpy()
    else:
        self.router_gaps = np.full(x.shape[0], np.inf)
    out = torch.empty_like(x)
    for i in range(x.shape[0]):
        ids = experts.indices[i]
        h = torch.einsum("eck,k->ec", self.mlp1_weight[ids], t[i]) + self.mlp1_bias[ids]
        h = reference_model.swiglu(h, limit=self.swiglu_limit)
        h = torch.einsum("eck,ek->ec", self.mlp2_weight[ids], h) + self.mlp2_bias[ids]
        out[i] = x[i] + torch.einsum("ec,e->c", h, expert_weights[i])
    return out


class Reference:
    """The official model of a checkpoint in float32: logits and, per position, the smallest router gap."""

    def __init__(self, path: Path) -> None:
        self.model = reference_model.Transformer.from_checkpoint(str(path), device=torch.device("cpu")).float()

    def __call__(self, tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        original = reference_model.MLPBlock.forward
        reference_model.MLPBlock.forward = _mlp_forward_recording_router_gaps
        try:
            with torch.inference_mode():
                logits = self.model(torch.from_numpy(tokens.astype(np.int64))).numpy()
        finally:
            reference_model.MLPBlock.forward = original
        gaps = np.min([block.mlp.router_gaps for block in self.model.block], axis=0)
        return logits, gaps


@pytest.fixture(scope="module", params=CASES.keys())
def case(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Reference]:
    config = ModelConfig(**CASES[request.param])
    path = write_random_checkpoint(tmp_path_factory.mktemp(request.param), config, seed=len(request.param))
    return path, Reference(path)


def cuda_model(path: Path, **options: int) -> tuple[ModelConfig, _C.Model]:
    config, weights = load_checkpoint(path, progress=False)
    return config, _C.Model(config.to_native(), weights, backend="cuda", **options)


def check_close(ours: np.ndarray, reference: np.ndarray, router_gaps: np.ndarray) -> float:
    """Asserts the tolerance row by row (excusing only router near-ties, see the module doc); returns the
    largest relative error over the rows that were held to it."""
    assert np.isfinite(ours).all(), "non-finite logits"
    errors = np.linalg.norm(ours - reference, axis=-1) / np.linalg.norm(reference, axis=-1)
    excused = (errors > TOLERANCE) & (router_gaps < ROUTER_TIE)
    for i in np.flatnonzero((errors > TOLERANCE) & ~excused):
        pytest.fail(f"position {i}: relative L2 error {errors[i]:.2e} (router gap {router_gaps[i]:.1e})")
    assert excused.sum() <= max(1, MAX_EXCUSED * len(errors)), f"{excused.sum()} positions off, all near router ties"
    for i in np.flatnonzero(~excused):
        top2 = np.sort(reference[i])[-2:]
        if top2[1] - top2[0] > 2 * float(np.abs(ours[i] - reference[i]).max()):
            assert ours[i].argmax() == reference[i].argmax(), f"position {i}: greedy token differs beyond the error"
    print(f"max relative L2 error {errors[~excused].max():.2e}; excused near router ties: "
          f"{[(int(i), float(f'{errors[i]:.2e}')) for i in np.flatnonzero(excused)]}")
    return float(errors[~excused].max())


def test_prefill_logits_match_reference(case: tuple[Path, Reference]) -> None:
    path, reference = case
    config, cuda = cuda_model(path, max_context=512)
    tokens = np.random.default_rng(1).integers(0, config.vocab_size, 150).astype(np.int32)  # past the window
    ours = cuda.forward(cuda.new_sequence(), tokens, all_logits=True)
    check_close(ours, *reference(tokens))


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
    logits, gaps = reference(np.array(tokens, np.int32))
    check_close(np.stack(rows), logits[6:], gaps[6:])


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
