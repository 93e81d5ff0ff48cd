"""Run-ahead decode on the CUDA backend (csrc/cuda/forward.cu submit_sample / collect_sample): device-fed
steps read the token the previous step's sampler wrote into the slot's own step state, so they must give
exactly the tokens of the blocking forward_sample loop (the same graph on the same inputs; the decode kernels
are deterministic), also for two sequences whose submissions interleave and past the 128-token window; misuse
and failed draws behave as on the CPU (tests/run_ahead_checks.py). drop_last_token forgets the newest token,
past the window too: the sliding layers' ring is exactly the window, so the dropped token's KV entry took the
slot of the position a window earlier, which no later query reads. The Engine, which runs ahead, yields the
blocking loop's tokens and, after a stop, continues from the prefix cache as a sequence that was never fed the
stop token and was fed the same chunks does.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from gpt_oss_native import _C
from gpt_oss_native.checkpoint import load_checkpoint
from gpt_oss_native.config import ModelConfig
from gpt_oss_native.engine import Engine
from gpt_oss_native.random_checkpoint import write_random_checkpoint
from gpt_oss_native.sampling import SamplingParams

if not _C.cuda_devices():
    pytest.skip("needs an NVIDIA GPU and a CUDA build of _C", allow_module_level=True)

from cuda_cases import CASES as ALL_CASES
from run_ahead_checks import (
    SAMPLINGS,
    blocking_tokens,
    check_drop_last_token_misuse,
    check_dropped_token_is_forgotten,
    check_failed_draws,
    check_misuse_raises_and_loses_nothing,
    interleaved_tokens,
    run_ahead_tokens,
)

pytestmark = pytest.mark.cuda

# gpt-oss's attention with its 128-token window, and a 16-token window the ring wraps often.
CASES = {name: ALL_CASES[name] for name in ("gpt-oss-heads-32-experts", "128-experts-window-16")}
MAX_CONTEXT = 512


@pytest.fixture(scope="module", params=CASES.keys())
def case(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, ModelConfig]:
    config = ModelConfig(**CASES[request.param])
    return write_random_checkpoint(tmp_path_factory.mktemp(request.param), config, seed=13), config


def cuda_model(path: Path, weights_edit=None, **options: int) -> _C.Model:
    config, weights = load_checkpoint(path, progress=False)
    if weights_edit:
        weights_edit(weights)
    return _C.Model(config.to_native(), weights, backend="cuda", **options)


@pytest.fixture(scope="module")
def model(case: tuple[Path, ModelConfig]) -> _C.Model:
    return cuda_model(case[0], max_context=MAX_CONTEXT, max_sequences=2)


@pytest.mark.parametrize("sampling", SAMPLINGS.values(), ids=SAMPLINGS.keys())
@pytest.mark.parametrize("prompt_length", [1, 7, 20])
def test_run_ahead_gives_the_blocking_loops_tokens(case, model, sampling, prompt_length: int) -> None:
    """Prompts of one token (staged in the slot's ring), 7 (replayed token by token), 20 (batched prefill)."""
    config = case[1]
    prompt = np.random.default_rng(prompt_length).integers(0, config.vocab_size, prompt_length)
    assert run_ahead_tokens(model, prompt, sampling, 40) == blocking_tokens(model, prompt, sampling, 40)


def test_interleaved_sequences_each_feed_their_own_draws(case, model) -> None:
    """Two slots with steps queued at once: a device-fed step that read another slot's state would diverge."""
    config = case[1]
    rng = np.random.default_rng(4)
    jobs = [(rng.integers(0, config.vocab_size, 5), SAMPLINGS["t1"]),
            (rng.integers(0, config.vocab_size, 12), SAMPLINGS["greedy"])]
    expected = [blocking_tokens(model, prompt, sampling, 50) for prompt, sampling in jobs]
    assert interleaved_tokens(model, jobs, 50) == expected


@pytest.mark.parametrize("sampling", [SAMPLINGS["greedy"], SAMPLINGS["t1"]], ids=["greedy", "t1"])
def test_a_long_run_ahead_generation_past_the_window(case, model, sampling) -> None:
    config = case[1]
    prompt = np.random.default_rng(5).integers(0, config.vocab_size, 7)
    assert run_ahead_tokens(model, prompt, sampling, 300) == blocking_tokens(model, prompt, sampling, 300)


def test_misuse_raises_and_loses_nothing(case) -> None:
    path, config = case
    model = cuda_model(path, max_context=16, max_sequences=2)
    check_misuse_raises_and_loses_nothing(model, config.vocab_size, 16)


def test_the_cuda_backend_runs_ahead(model) -> None:
    assert model.runs_ahead is True


def test_drop_last_token_misuse_is_refused(case) -> None:
    path, config = case
    check_drop_last_token_misuse(cuda_model(path, max_context=16, max_sequences=1), config.vocab_size)


@pytest.mark.parametrize("sampling", [SAMPLINGS["greedy"], SAMPLINGS["t1"]], ids=["greedy", "t1"])
@pytest.mark.parametrize("ahead", [3, 150, 300])
def test_a_dropped_token_is_forgotten(case, model, sampling, ahead: int) -> None:
    """Dropped at position 7 + ahead: inside the window, past the window of 128 (and many of 16), and at 307,
    where the ring of 128 has been written more than twice. Then 12 tokens through the batched prefill, whose
    first query reads the ring next to the dropped token's slot, and a run-ahead continuation."""
    config = case[1]
    rng = np.random.default_rng(ahead)
    prompt, follow = rng.integers(0, config.vocab_size, 7), rng.integers(0, config.vocab_size, 12)
    check_dropped_token_is_forgotten(model, prompt, sampling, ahead, follow)


def test_failed_draws_raise_at_collect_and_the_device_survives(case) -> None:
    """The sampler answers -1 for NaN logits; the device-fed step after it reads that -1 on the device."""
    path, config = case

    def poison(weights: dict[str, np.ndarray]) -> None:
        weights["norm.scale"] = np.full_like(weights["norm.scale"], np.nan)  # every logit NaN

    check_failed_draws(cuda_model(path, poison, max_context=32, max_sequences=1), config.vocab_size)


def test_the_engine_runs_ahead_to_the_blocking_loops_tokens(case, model) -> None:
    path, config = case
    params = SamplingParams(temperature=1.0, seed=3)
    sampling = params.native_args()
    prompt = [int(t) for t in np.random.default_rng(6).integers(0, config.vocab_size, 9)]
    free = blocking_tokens(model, prompt, sampling, 20)
    stop = next(t for i, t in enumerate(free) if i >= 3 and t not in free[:i])
    cut = free.index(stop)
    with Engine(path, backend="cuda", max_context=MAX_CONTEXT, max_sequences=2, progress=False) as engine:
        for max_tokens in (1, 2, 20):
            assert list(engine.generate(prompt, params, max_tokens)) == free[:max_tokens]
        tokens = list(engine.generate(prompt, params, 20, stop_tokens=[stop]))
        assert tokens == free[: cut + 1]

        # The step queued ahead fed the stop token, which was dropped again: the follow-up reuses everything
        # before it and feeds it with the new suffix. Its reference is a sequence fed the same chunks (the
        # prompt, each token but the stop, the stop and the suffix): CUDA's batched and per-token paths
        # round differently, so a fresh prefill of the follow-up could break a near-tie.
        suffix = [int(t) for t in np.random.default_rng(7).integers(0, config.vocab_size, 10)]
        generation = engine.generate(prompt + tokens + suffix, params, 12)
        continued = list(generation)
        assert generation.cached_tokens == len(prompt) + len(tokens) - 1

        closed = engine.generate(prompt, params, 30)
        taken = [next(closed) for _ in range(5)]
        closed.close()
        assert (engine.open_sequences, engine.cached_sequences) == (0, 2)
        assert taken == free[:5]

    seq = model.new_sequence()
    try:
        model.forward(seq, np.array(prompt, np.int32))
        for token in tokens[:-1]:
            model.forward(seq, np.array([token], np.int32))
        expected, feed = [], np.array(tokens[-1:] + suffix, np.int32)
        for step in range(12):
            expected.append(model.forward_sample(seq, feed, *sampling, step))
            feed = np.array([expected[-1]], np.int32)
    finally:
        model.free_sequence(seq)
    assert continued == expected
