"""The Engine's prefix cache on the tiny random checkpoint (CPU backend): a prompt that extends a finished
sequence's tokens continues that sequence, and every generation equals what a fresh sequence gives.

Reference: a second native model stepped by hand from an empty sequence (the whole prompt prefilled at once),
never the Engine.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
from gpt_oss_native import _C
from gpt_oss_native.checkpoint import load_checkpoint
from gpt_oss_native.engine import Engine
from gpt_oss_native.sampling import SamplingParams

MAX_CONTEXT = 96
PROMPT = [200006, 17360, 200008, 3575, 553, 261, 10297, 13, 200007, 200006, 173781]
GREEDY = SamplingParams(temperature=0)
PARAMS = [GREEDY, SamplingParams(temperature=0.8, top_p=0.95, seed=99)]


@pytest.fixture(scope="module")
def reference(tiny_checkpoint):
    config, weights = load_checkpoint(tiny_checkpoint, progress=False)
    model = _C.Model(config.to_native(), weights, "cpu", MAX_CONTEXT, 1, 0, 0)

    def tokens(prompt: list[int], params: SamplingParams, n: int) -> list[int]:
        seq = model.new_sequence()
        try:
            out, feed = [], np.array(prompt, dtype=np.int32)
            for step in range(n):
                logits = model.forward(seq, feed)
                if params.greedy:
                    token = int(np.argmax(logits))
                else:
                    token = int(_C.sample_logits(logits, *params.native_args()[:3], params.seed, step))
                out.append(token)
                feed = np.array([token], dtype=np.int32)
            return out
        finally:
            model.free_sequence(seq)

    return tokens


@pytest.fixture
def engine(tiny_checkpoint):
    with Engine(tiny_checkpoint, max_context=MAX_CONTEXT, max_sequences=2, progress=False) as engine:
        yield engine


def run(engine: Engine, prompt: list[int], params: SamplingParams, n: int) -> tuple[list[int], int]:
    """The tokens of one generation and how many prompt tokens it took from the cache."""
    generation = engine.generate(prompt, params, max_tokens=n)
    tokens = list(generation)
    return tokens, generation.cached_tokens


@pytest.mark.parametrize("params", PARAMS, ids=["greedy", "seeded"])
def test_a_conversation_reuses_each_turn_and_matches_fresh_generations(engine, reference, params):
    prompt, in_cache = list(PROMPT), 0
    for turn in range(3):
        tokens, cached = run(engine, prompt, params, 8)
        assert tokens == reference(prompt, params, 8), f"turn {turn}"
        assert cached == in_cache
        in_cache = len(prompt) + len(tokens) - 1  # the prompt and the reply but its last token (never fed)
        prompt = prompt + tokens + [200006, 1428 + turn, 200008, 3575 + turn, 200007, 200006, 173781]
    stats = engine.stats
    assert (stats.generations, stats.hits) == (3, 2)
    assert stats.reused_tokens == len(PROMPT) + 7 + (len(PROMPT) + 7 + 1 + 7 + 7)
    assert engine.open_sequences == 0 and engine.cached_sequences == 1


def test_a_prompt_that_diverges_right_after_the_cached_tokens_reuses_them(engine, reference):
    tokens, _ = run(engine, PROMPT, GREEDY, 6)
    cache = PROMPT + tokens[:-1]
    other = next(t for t in (17, 18) if t != tokens[-1])  # not the token the model sampled last
    prompt = cache + [other, 1000]
    ours, cached = run(engine, prompt, GREEDY, 6)
    assert cached == len(cache)
    assert ours == reference(prompt, GREEDY, 6)


def test_a_prompt_that_diverges_inside_the_cached_tokens_starts_afresh(engine, reference):
    run(engine, PROMPT, GREEDY, 6)
    prompt = PROMPT[:5] + [4000, 4001, 4002]
    ours, cached = run(engine, prompt, GREEDY, 6)
    assert cached == 0
    assert ours == reference(prompt, GREEDY, 6)
    assert engine.cached_sequences == 2  # both kept: the first may still be extended


def test_a_prompt_equal_to_the_cached_tokens_is_not_reused(engine, reference):
    """The last prompt position's logits must come from a forward, so at least one token is fed."""
    tokens, _ = run(engine, PROMPT, GREEDY, 1)  # the cache holds exactly PROMPT
    assert tokens == reference(PROMPT, GREEDY, 1)
    again, cached = run(engine, PROMPT, GREEDY, 5)
    assert cached == 0
    assert again == reference(PROMPT, GREEDY, 5)
    shorter, cached = run(engine, PROMPT[:-2], GREEDY, 3)  # a prompt that the cached tokens extend
    assert cached == 0
    assert shorter == reference(PROMPT[:-2], GREEDY, 3)


def test_the_longest_cached_prefix_wins(engine):
    run(engine, PROMPT, GREEDY, 1)  # cache: PROMPT
    run(engine, PROMPT[:4], GREEDY, 1)  # a miss (PROMPT is longer), cached too: the pool has room
    assert engine.cached_sequences == 2
    _, cached = run(engine, PROMPT + [300], GREEDY, 2)
    assert cached == len(PROMPT)


def test_cached_sequences_never_block_a_generation_and_the_least_recently_used_goes_first(engine, reference):
    first, _ = run(engine, PROMPT, GREEDY, 3)
    run(engine, PROMPT[:6] + [500], GREEDY, 3)
    assert engine.cached_sequences == 2  # every slot of max_sequences=2 holds a cached sequence
    # Two generations at once need both slots: both cached sequences are freed.
    a = engine.generate([7, 8, 9], GREEDY, max_tokens=4)
    b = engine.generate([10, 11, 12], GREEDY, max_tokens=4)
    assert next(a) == reference([7, 8, 9], GREEDY, 1)[0]
    assert next(b) == reference([10, 11, 12], GREEDY, 1)[0]
    assert (engine.open_sequences, engine.cached_sequences) == (2, 0)
    a.close()
    b.close()
    assert (engine.open_sequences, engine.cached_sequences) == (0, 2)

    # LRU: [a, b] cached; a miss evicts a, then b is still there to extend.
    engine.clear_prefix_cache()
    run(engine, PROMPT, GREEDY, 3)  # cache A
    tokens_b, _ = run(engine, [20, 21, 22], GREEDY, 3)  # cache B
    run(engine, [30, 31], GREEDY, 2)  # a miss: evicts A (the least recently used)
    _, cached = run(engine, [20, 21, 22] + tokens_b + [1], GREEDY, 2)
    assert cached == 3 + len(tokens_b) - 1
    _, cached = run(engine, PROMPT + first + [1], GREEDY, 2)
    assert cached == 0


def test_a_generation_closed_midway_is_cached_with_exactly_the_tokens_it_fed(engine, reference):
    generation = engine.generate(PROMPT, GREEDY, max_tokens=20)
    taken = [next(generation) for _ in range(5)]
    generation.close()
    assert (engine.open_sequences, engine.cached_sequences) == (0, 1)
    prompt = PROMPT + taken + [42]
    ours, cached = run(engine, prompt, GREEDY, 6)
    assert cached == len(PROMPT) + 4  # the fifth token was handed out, never fed
    assert ours == reference(prompt, GREEDY, 6)


def test_a_generation_dropped_by_the_garbage_collector_is_cached_too(engine, reference):
    generation = engine.generate(PROMPT, GREEDY, max_tokens=20)
    taken = [next(generation), next(generation)]
    del generation
    assert (engine.open_sequences, engine.cached_sequences) == (0, 1)
    _, cached = run(engine, PROMPT + taken, GREEDY, 2)
    assert cached == len(PROMPT) + 1


def test_concurrent_conversations_each_reuse_their_own_sequence(tiny_checkpoint, reference):
    prompts = {name: [200006, 17360 + i, 200008, 3575, 553, 261 + i, 200007, 200006, 173781]
               for i, name in enumerate(("a", "b"))}
    results: dict[str, list[tuple[list[int], list[int], int]]] = {name: [] for name in prompts}
    errors: list[BaseException] = []
    with Engine(tiny_checkpoint, max_context=MAX_CONTEXT, max_sequences=2, progress=False) as engine:

        def converse(name: str) -> None:
            try:
                prompt = prompts[name]
                for turn in range(3):
                    tokens, cached = run(engine, prompt, PARAMS[1], 6)
                    results[name].append((prompt, tokens, cached))
                    prompt = prompt + tokens + [200006, 1000 + turn, 200007]
            except BaseException as e:  # noqa: BLE001 - reported by the main thread
                errors.append(e)

        threads = [threading.Thread(target=converse, args=(name,)) for name in prompts]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        assert not errors, errors
        stats = engine.stats
    for name, turns in results.items():
        assert len(turns) == 3
        for turn, (prompt, tokens, cached) in enumerate(turns):
            assert tokens == reference(prompt, PARAMS[1], 6), (name, turn)
            assert (cached > 0) == (turn > 0), (name, turn)
    assert (stats.generations, stats.hits) == (6, 4)


def test_a_sequence_that_filled_the_context_is_not_cached(tiny_checkpoint):
    with Engine(tiny_checkpoint, max_context=16, max_sequences=1, progress=False) as engine:
        tokens = list(engine.generate(PROMPT, GREEDY, max_tokens=100))
        assert len(tokens) == 16 - len(PROMPT) + 1  # the last sampled token is never fed
        assert engine.cached_sequences == 0


def test_the_prefix_cache_can_be_turned_off(tiny_checkpoint, reference):
    with Engine(tiny_checkpoint, max_context=MAX_CONTEXT, max_sequences=1, progress=False,
                prefix_cache=False) as engine:
        tokens, _ = run(engine, PROMPT, GREEDY, 5)
        assert engine.cached_sequences == 0
        prompt = PROMPT + tokens + [9]
        again, cached = run(engine, prompt, GREEDY, 5)
        assert cached == 0 and again == reference(prompt, GREEDY, 5)
        stats = engine.stats
        assert (stats.generations, stats.hits, stats.reused_tokens) == (2, 0, 0)
        assert stats.prompt_tokens == len(PROMPT) + len(prompt)


def test_one_slot_chat_reuses_and_close_frees_the_cache(tiny_checkpoint):
    """max_sequences=1 (the chat command's engine): the cached sequence is the one slot, reused or evicted."""
    with Engine(tiny_checkpoint, max_context=MAX_CONTEXT, max_sequences=1, progress=False) as engine:
        tokens, _ = run(engine, PROMPT, GREEDY, 4)
        _, cached = run(engine, PROMPT + tokens, GREEDY, 4)
        assert cached == len(PROMPT) + 3
        run(engine, [5, 6, 7], GREEDY, 2)  # a miss evicts it
        assert engine.stats.hit_rate == pytest.approx(cached / (2 * len(PROMPT) + 4 + 3))
        assert engine.cached_sequences == 1
    assert engine.cached_sequences == 0


class _OneCacheAtATime:
    """A native model that, like the CUDA backend out of GPU memory, cannot hold a second live sequence."""

    def __init__(self, model) -> None:
        self._model, self.live = model, set()

    def new_sequence(self) -> int:
        if self.live:
            raise RuntimeError("not enough GPU memory for another sequence's KV cache")
        seq = self._model.new_sequence()
        self.live.add(seq)
        return seq

    def free_sequence(self, seq: int) -> None:
        self.live.discard(seq)
        self._model.free_sequence(seq)

    def __getattr__(self, name: str):
        return getattr(self._model, name)


def test_a_backend_out_of_memory_gets_the_cached_sequences_back(tiny_checkpoint, reference):
    with Engine(tiny_checkpoint, max_context=MAX_CONTEXT, max_sequences=4, progress=False) as engine:
        engine._model = _OneCacheAtATime(engine._model)
        run(engine, PROMPT, GREEDY, 3)
        assert engine.cached_sequences == 1
        # A prompt that does not extend the cached sequence needs a new one: the backend refuses until the
        # cached sequence is freed, and the generation still matches a fresh one.
        tokens, cached = run(engine, [40, 41, 42], GREEDY, 3)
        assert (tokens, cached) == (reference([40, 41, 42], GREEDY, 3), 0)
        assert engine.cached_sequences == 1
