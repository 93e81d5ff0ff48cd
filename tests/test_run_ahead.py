"""Run-ahead decode on the CPU backend: `_C.Model.submit_sample` / `collect_sample` give exactly the tokens of
the blocking `forward_sample` loop, misuse is refused without losing anything, and `drop_last_token` forgets
the newest token as if it had never been fed. The CPU backend computes at submit, so it does not run ahead
(`runs_ahead` is false) and its Engine submits and collects in turn; the Engine is also run here in the CUDA
backend's order (step k + 1 submitted before step k is collected), forced. Either way it yields the tokens of
the blocking loop and pools what the blocking loop's sequence held: the prompt and every token but the last.

References: the blocking forward_sample loop on a fresh sequence (tests/run_ahead_checks.py), never the code
under test; the prefix-cache follow-ups are compared with fresh sequences.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from gpt_oss_native import _C
from gpt_oss_native.checkpoint import load_checkpoint
from gpt_oss_native.engine import Engine
from gpt_oss_native.sampling import SamplingParams
from reference_model import small_config, write_tiny_checkpoint
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

MAX_CONTEXT = 96
PROMPT = [200006, 17360, 200008, 3575, 553, 261, 10297, 13, 200007, 200006, 173781]
GREEDY = SamplingParams(temperature=0)
SEEDED = SamplingParams(temperature=0.9, top_p=0.95, seed=31)


# ---- the native model ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int]:
    """Three layers (sliding, full, sliding) with a window of 8, vocabulary 256."""
    config = small_config(num_layers=3)
    return write_tiny_checkpoint(tmp_path_factory.mktemp("run-ahead"), config, seed=21), config.vocab_size


def cpu_model(path: Path, weights_edit=None, **options: int) -> _C.Model:
    config, weights = load_checkpoint(path, progress=False)
    if weights_edit:
        weights_edit(weights)
    return _C.Model(config.to_native(), weights, backend="cpu", **options)


@pytest.mark.parametrize("sampling", SAMPLINGS.values(), ids=SAMPLINGS.keys())
@pytest.mark.parametrize("prompt_length", [1, 6])
def test_run_ahead_gives_the_blocking_loops_tokens(small, sampling, prompt_length: int) -> None:
    """60 tokens: past several windows of 8, so the sliding rings wrap under device-fed steps."""
    path, vocab = small
    model = cpu_model(path, max_context=128, max_sequences=2)
    prompt = np.random.default_rng(prompt_length).integers(0, vocab, prompt_length)
    assert run_ahead_tokens(model, prompt, sampling, 60) == blocking_tokens(model, prompt, sampling, 60)


def test_interleaved_sequences_each_feed_their_own_draws(small) -> None:
    path, vocab = small
    model = cpu_model(path, max_context=128, max_sequences=2)
    rng = np.random.default_rng(3)
    jobs = [(rng.integers(0, vocab, 5), SAMPLINGS["t1"]),
            (rng.integers(0, vocab, 9), SAMPLINGS["top-p-top-k"])]
    expected = [blocking_tokens(model, prompt, sampling, 30) for prompt, sampling in jobs]
    assert interleaved_tokens(model, jobs, 30) == expected


def test_misuse_raises_and_loses_nothing(small) -> None:
    path, vocab = small
    check_misuse_raises_and_loses_nothing(cpu_model(path, max_context=16, max_sequences=2), vocab, 16)


def test_the_cpu_backend_does_not_run_ahead(small) -> None:
    assert cpu_model(small[0], max_context=16, max_sequences=1).runs_ahead is False


def test_drop_last_token_misuse_is_refused(small) -> None:
    path, vocab = small
    check_drop_last_token_misuse(cpu_model(path, max_context=16, max_sequences=1), vocab)


@pytest.mark.parametrize("sampling", [SAMPLINGS["greedy"], SAMPLINGS["t1"]], ids=["greedy", "t1"])
@pytest.mark.parametrize("ahead", [1, 4, 40, 290])
def test_a_dropped_token_is_forgotten(small, sampling, ahead: int) -> None:
    """Dropped at position 6 + ahead: past the window of 8 from 40 on, and at 290 past the ring of the sliding
    layers (the window plus a 256-token chunk), whose entries have all been overwritten once."""
    path, vocab = small
    model = cpu_model(path, max_context=400, max_sequences=2)
    rng = np.random.default_rng(ahead)
    prompt, follow = rng.integers(0, vocab, 6), rng.integers(0, vocab, 11)
    check_dropped_token_is_forgotten(model, prompt, sampling, ahead, follow)


def test_failed_draws_raise_at_collect(small) -> None:
    path, vocab = small

    def poison(weights: dict[str, np.ndarray]) -> None:
        weights["norm.scale"] = np.full_like(weights["norm.scale"], np.nan)  # every logit NaN

    check_failed_draws(cpu_model(path, poison, max_context=32, max_sequences=1), vocab)


# ---- the Engine ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def blocking(tiny_checkpoint) -> _C.Model:
    """A second native model of the Engine's checkpoint, stepped with the blocking loop."""
    return cpu_model(tiny_checkpoint, max_context=MAX_CONTEXT, max_sequences=1)


@pytest.fixture(params=["in-turn", "run-ahead"])
def engine(request: pytest.FixtureRequest, tiny_checkpoint):
    """The CPU Engine as it is (each step submitted, then collected), and forced into the CUDA backend's order:
    the CPU computes each step at submit, so only the order and the bookkeeping differ, which is what is
    tested."""
    with Engine(tiny_checkpoint, max_context=MAX_CONTEXT, max_sequences=2, progress=False) as engine:
        engine._runs_ahead = request.param == "run-ahead"
        yield engine


@pytest.mark.parametrize("params", [GREEDY, SEEDED], ids=["greedy", "seeded"])
@pytest.mark.parametrize("max_tokens", [1, 2, 3, 17])
def test_the_engine_yields_the_blocking_loops_tokens(engine, blocking, params, max_tokens: int) -> None:
    """Run ahead, 1: no step runs ahead; 2: one; then the budget ends the run-ahead."""
    tokens = list(engine.generate(PROMPT, params, max_tokens=max_tokens))
    assert tokens == blocking_tokens(blocking, PROMPT, params.native_args(), max_tokens)
    assert (engine.open_sequences, engine.cached_sequences) == (0, 1)
    follow = PROMPT + tokens + [17]
    generation = engine.generate(follow, params, max_tokens=4)
    assert list(generation) == blocking_tokens(blocking, follow, params.native_args(), 4)
    assert generation.cached_tokens == len(PROMPT) + max_tokens - 1  # the whole budget: the last never fed


@pytest.mark.parametrize("runs_ahead", [False, True], ids=["cpu", "forced-run-ahead"])
def test_the_cpu_engine_has_no_step_outstanding_when_it_yields(tiny_checkpoint, blocking, runs_ahead) -> None:
    """The CPU's own order hands each token out as soon as its step is computed; forced to run ahead, the
    Engine has the next step queued at every yield but the last of the budget. The tokens are the same."""
    with Engine(tiny_checkpoint, max_context=MAX_CONTEXT, max_sequences=1, progress=False) as engine:
        assert engine._runs_ahead is False
        engine._runs_ahead = runs_ahead
        tokens, outstanding = [], []
        for token in engine.generate(PROMPT, SEEDED, max_tokens=12):
            (seq,) = engine._open
            tokens.append(token)
            outstanding.append(engine._model.outstanding_samples(seq))
    assert tokens == blocking_tokens(blocking, PROMPT, SEEDED.native_args(), 12)
    assert outstanding == ([1] * 11 + [0] if runs_ahead else [0] * 12)


def test_a_stop_token_ends_the_generation_and_its_cache_holds_all_but_it(engine, blocking) -> None:
    free = blocking_tokens(blocking, PROMPT, SEEDED.native_args(), 20)
    stop = next(t for i, t in enumerate(free) if i >= 3 and t not in free[:i])
    cut = free.index(stop)
    tokens = list(engine.generate(PROMPT, SEEDED, max_tokens=20, stop_tokens=[stop]))
    assert tokens == free[: cut + 1]
    assert (engine.open_sequences, engine.cached_sequences) == (0, 1)
    # As harmony renders a reply's <|return|> as <|end|> in the next turn's history: the next prompt replaces
    # the stop token, and reuses everything before it (run ahead, the stop token was fed, then dropped).
    follow = PROMPT + tokens[:-1] + [200007, 200006, 1428, 200008]
    generation = engine.generate(follow, SEEDED, max_tokens=6)
    assert list(generation) == blocking_tokens(blocking, follow, SEEDED.native_args(), 6)
    assert generation.cached_tokens == len(PROMPT) + len(tokens) - 1


@pytest.mark.parametrize("params", [GREEDY, SEEDED], ids=["greedy", "seeded"])
def test_closing_midway_pools_all_but_the_last_token_handed_out(engine, blocking, params) -> None:
    generation = engine.generate(PROMPT, params, max_tokens=30)
    taken = [next(generation) for _ in range(4)]
    generation.close()
    assert (engine.open_sequences, engine.cached_sequences) == (0, 1)  # drained: its length matched
    follow = PROMPT + taken + [42]
    again = engine.generate(follow, params, max_tokens=6)
    assert list(again) == blocking_tokens(blocking, follow, params.native_args(), 6)
    assert again.cached_tokens == len(PROMPT) + 3  # the fourth was handed out (run ahead: fed, then dropped)


class _Failing:
    """A native model whose n-th call of `method` raises before it runs, as a device fault would."""

    def __init__(self, model, method: str, fail_on: int) -> None:
        self._model, self._method, self._calls, self._fail_on = model, method, 0, fail_on

    def __getattr__(self, name: str):
        call = getattr(self._model, name)
        if name != self._method:
            return call

        def failing(*args):
            self._calls += 1
            if self._calls == self._fail_on:
                raise RuntimeError("injected device fault")
            return call(*args)

        return failing


def test_a_failed_step_frees_the_sequence_and_the_engine_goes_on(engine, blocking) -> None:
    native = engine._model
    engine._model = _Failing(native, "collect_sample", fail_on=3)  # run ahead, two steps are queued then
    with pytest.raises(RuntimeError, match="injected device fault"):
        list(engine.generate(PROMPT, GREEDY, max_tokens=10))
    assert (engine.open_sequences, engine.cached_sequences) == (0, 0)
    engine._model = native
    expected = blocking_tokens(blocking, PROMPT, GREEDY.native_args(), 5)
    assert list(engine.generate(PROMPT, GREEDY, max_tokens=5)) == expected


@pytest.mark.parametrize("method", ["collect_sample", "drop_last_token"])
def test_a_drain_that_fails_frees_the_sequence(tiny_checkpoint, blocking, method: str) -> None:
    """Run ahead, close() collects the step queued ahead, then drops the token it fed: a failure of either
    frees the sequence."""
    with Engine(tiny_checkpoint, max_context=MAX_CONTEXT, max_sequences=2, progress=False) as engine:
        engine._runs_ahead = True
        native = engine._model
        engine._model = _Failing(native, method, fail_on=2 if method == "collect_sample" else 1)
        generation = engine.generate(PROMPT, GREEDY, max_tokens=10)
        first = next(generation)
        generation.close()
        assert (engine.open_sequences, engine.cached_sequences) == (0, 0)
        engine._model = native
        expected = blocking_tokens(blocking, PROMPT, GREEDY.native_args(), 3)
        assert first == expected[0]
        assert list(engine.generate(PROMPT, GREEDY, max_tokens=3)) == expected
