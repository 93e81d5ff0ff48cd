"""Engine and SamplingParams on the tiny random checkpoint (CPU backend).

References: a second native model driven step by step through `forward` (logits) and `_C.sample_logits`
(the sampler's definition), never the Engine's own loop.
"""

from __future__ import annotations

import gc
import threading

import numpy as np
import pytest
from gpt_oss_native import _C
from gpt_oss_native.checkpoint import load_checkpoint
from gpt_oss_native.engine import Engine
from gpt_oss_native.harmony import ChannelDelta
from gpt_oss_native.sampling import SamplingParams

MAX_CONTEXT = 64
PROMPT = [200006, 17360, 200008, 3575, 553, 261, 10297, 13, 200007, 200006, 173781]


@pytest.fixture(scope="module")
def engine(tiny_checkpoint):
    with Engine(tiny_checkpoint, max_context=MAX_CONTEXT, max_sequences=2, progress=False) as engine:
        yield engine


@pytest.fixture(scope="module")
def reference(tiny_checkpoint):
    """An independent native model to step through by hand."""
    config, weights = load_checkpoint(tiny_checkpoint, progress=False)
    return _C.Model(config.to_native(), weights, "cpu", MAX_CONTEXT, 1, 0, 0)


def _reference_tokens(model, prompt: list[int], params: SamplingParams, n: int) -> list[int]:
    """n tokens: forward's last-position logits, then sample_logits with draw = step (argmax when greedy)."""
    seq = model.new_sequence()
    try:
        out, tokens = [], np.array(prompt, dtype=np.int32)
        for step in range(n):
            logits = model.forward(seq, tokens)
            if params.greedy:
                token = int(np.argmax(logits))
            else:
                token = int(_C.sample_logits(logits, *params.native_args()[:3], params.seed, step))
            out.append(token)
            tokens = np.array([token], dtype=np.int32)
        return out
    finally:
        model.free_sequence(seq)


def test_greedy_generation_is_the_argmax_of_forward_at_every_step(engine, reference):
    params = SamplingParams(temperature=0)
    tokens = list(engine.generate(PROMPT, params, max_tokens=20))
    assert tokens == _reference_tokens(reference, PROMPT, params, 20)
    assert engine.open_sequences == 0


@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(temperature=1.0, seed=7),
        SamplingParams(temperature=0.7, top_p=0.9, top_k=50, seed=2**64 - 1),
    ],
)
def test_sampled_generation_draws_from_the_seed_step_by_step(engine, reference, params):
    tokens = list(engine.generate(PROMPT, params, max_tokens=12))
    assert tokens == _reference_tokens(reference, PROMPT, params, 12)


def test_a_seed_repeats_and_another_differs(engine):
    first = list(engine.generate(PROMPT, SamplingParams(seed=123), max_tokens=16))
    again = list(engine.generate(PROMPT, SamplingParams(seed=123), max_tokens=16))
    other = list(engine.generate(PROMPT, SamplingParams(seed=124), max_tokens=16))
    assert first == again
    assert first != other


def test_max_tokens_is_respected(engine):
    for n in (0, 1, 5):
        assert len(list(engine.generate(PROMPT, SamplingParams(seed=1), max_tokens=n))) == n


def test_generation_stops_after_a_stop_token(engine):
    params = SamplingParams(temperature=0)
    free = list(engine.generate(PROMPT, params, max_tokens=20))
    stop = next(t for i, t in enumerate(free) if i >= 3 and t not in free[:i])
    cut = free.index(stop)
    assert list(engine.generate(PROMPT, params, max_tokens=20, stop_tokens=[stop, -1])) == free[: cut + 1]


def test_the_context_bounds_the_generation(engine):
    params = SamplingParams(seed=5)
    long_prompt = (PROMPT * 10)[: MAX_CONTEXT - 3]
    # The sampled token after the last cache slot is still produced: 3 fed back + 1.
    assert len(list(engine.generate(long_prompt, params, max_tokens=100))) == 4
    assert len(list(engine.generate((PROMPT * 10)[:MAX_CONTEXT], params, max_tokens=100))) == 1
    with pytest.raises(ValueError, match=f"65 tokens, more than max_context={MAX_CONTEXT}"):
        engine.generate((PROMPT * 10)[: MAX_CONTEXT + 1], params, max_tokens=1)


def test_closing_a_generator_midway_frees_its_sequence(engine):
    params = SamplingParams(seed=3)
    gens = [engine.generate(PROMPT, params, max_tokens=50) for _ in range(2)]
    next(gens[0])
    next(gens[1])
    assert engine.open_sequences == 2
    extra = engine.generate(PROMPT, params, max_tokens=5)
    with pytest.raises(RuntimeError, match="all 2 sequences are in use"):
        next(extra)
    gens[0].close()
    del gens[1]  # dropped without close(), as when a client disconnects
    gc.collect()
    assert engine.open_sequences == 0
    # Every slot can be opened again, and the freed caches hold nothing of the old sequences.
    again = [engine.generate(PROMPT, params, max_tokens=6) for _ in range(2)]
    results = [list(g) for g in again]
    assert results[0] == results[1] == list(engine.generate(PROMPT, params, max_tokens=6))


def test_concurrent_generations_match_sequential_ones(engine):
    jobs = [(PROMPT, SamplingParams(seed=11)), (PROMPT[:5] + [1000, 2000], SamplingParams(temperature=0))]
    sequential = [list(engine.generate(p, s, max_tokens=24)) for p, s in jobs]
    concurrent: list[list[int] | None] = [None, None]
    barrier = threading.Barrier(len(jobs))

    def work(i: int) -> None:
        barrier.wait()
        concurrent[i] = list(engine.generate(*jobs[i], max_tokens=24))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert concurrent == sequential
    assert engine.open_sequences == 0


def test_bad_requests_are_refused_before_any_work(engine):
    params = SamplingParams()
    with pytest.raises(ValueError, match="prompt_tokens is empty"):
        engine.generate([], params, 4)
    with pytest.raises(
        ValueError, match=r"prompt token 201088 at position 1 is outside the vocabulary \[0, 201088\)"
    ):
        engine.generate([1, 201088], params, 4)
    with pytest.raises(ValueError, match="flat sequence of token ids"):
        engine.generate([[1, 2]], params, 4)
    with pytest.raises(ValueError, match="flat sequence of token ids"):
        engine.generate([1.5], params, 4)
    with pytest.raises(ValueError, match="max_tokens must be an int >= 0"):
        engine.generate([1], params, -1)
    with pytest.raises(TypeError, match="sampling must be a SamplingParams"):
        engine.generate([1], {"temperature": 0}, 4)  # type: ignore[arg-type]
    assert engine.open_sequences == 0


def test_generate_harmony_streams_channel_deltas(engine):
    deltas = list(
        engine.generate_harmony(
            "Why is the sky blue?", SamplingParams(seed=9), max_tokens=8, reasoning_effort="low"
        )
    )
    assert deltas and all(isinstance(d, ChannelDelta) for d in deltas)
    assert all(d.channel is None for d in deltas), "random weights do not write harmony"
    assert engine.open_sequences == 0


def test_engine_arguments_are_checked(tiny_checkpoint):
    with pytest.raises(ValueError, match="unknown backend 'tpu'"):
        Engine(tiny_checkpoint, backend="tpu", progress=False)
    with pytest.raises(ValueError, match="max_context must be an int >= 1"):
        Engine(tiny_checkpoint, max_context=0, progress=False)
    with pytest.raises(ValueError, match="does not exist"):
        Engine(tiny_checkpoint / "nope", progress=False)


@pytest.mark.skipif(bool(_C.cuda_devices()), reason="this machine can run the CUDA backend")
def test_the_cuda_backend_fails_fast_where_it_cannot_run(tiny_checkpoint):
    with pytest.raises(RuntimeError, match="no CUDA backend|no CUDA device"):
        Engine(tiny_checkpoint, backend="cuda", progress=False)


def test_a_closed_engine_refuses_work(tiny_checkpoint):
    engine = Engine(tiny_checkpoint, max_context=MAX_CONTEXT, progress=False)
    running = engine.generate(PROMPT, SamplingParams(seed=1), max_tokens=10)
    next(running)
    engine.close()
    with pytest.raises(RuntimeError, match="closed while a generation was running"):
        next(running)
    with pytest.raises(RuntimeError, match="Engine is closed"):
        next(engine.generate(PROMPT, SamplingParams(), max_tokens=1))


# ---- SamplingParams ------------------------------------------------------------------------------------


def test_sampling_params_defaults_and_seed():
    params = SamplingParams()
    assert (params.temperature, params.top_p, params.top_k) == (1.0, 1.0, 0)
    assert isinstance(params.seed, int) and 0 <= params.seed < 2**64
    assert SamplingParams().seed != params.seed
    assert SamplingParams(seed=5).native_args() == (1.0, 1.0, 0, 5)
    assert SamplingParams(temperature=0).greedy and not params.greedy


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"temperature": -0.1}, ValueError, "temperature must be a finite number >= 0"),
        ({"temperature": float("nan")}, ValueError, "temperature must be a finite number >= 0"),
        ({"temperature": "hot"}, TypeError, "temperature must be a number"),
        ({"top_p": 0}, ValueError, r"top_p must be in \(0, 1\]"),
        ({"top_p": 1.5}, ValueError, r"top_p must be in \(0, 1\]"),
        ({"top_k": -1}, ValueError, "top_k must be >= 0"),
        ({"top_k": 2.5}, TypeError, "top_k must be an int"),
        ({"seed": -1}, ValueError, r"seed must be in \[0, 2\*\*64\)"),
        ({"seed": 2**64}, ValueError, r"seed must be in \[0, 2\*\*64\)"),
        ({"seed": True}, TypeError, "seed must be an int or None"),
    ],
)
def test_sampling_params_validation(kwargs, error, message):
    with pytest.raises(error, match=message):
        SamplingParams(**kwargs)
