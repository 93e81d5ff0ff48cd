"""Run-ahead sampling checks shared by the CPU and CUDA tests (tests/test_run_ahead.py,
tests/test_cuda_run_ahead.py): `_C.Model.submit_sample` / `collect_sample` against the blocking
`forward_sample` loop, the path the Engine took before run-ahead, on the same backend.

A sampling tuple is (temperature, top_p, top_k, seed), as `SamplingParams.native_args()` gives it; step k of a
generation uses draw k.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest

Sampling = tuple[float, float, int, int]

SAMPLINGS: dict[str, Sampling] = {
    "greedy": (0.0, 1.0, 0, 0),
    "t1": (1.0, 1.0, 0, 7),
    "top-p-top-k": (0.8, 0.9, 40, 2**64 - 1),
}


def blocking_tokens(model, prompt: Sequence[int], sampling: Sampling, n: int) -> list[int]:
    """n tokens on a fresh sequence, each step one blocking forward_sample fed the token before it."""
    seq = model.new_sequence()
    try:
        out, feed = [], np.asarray(prompt, dtype=np.int32)
        for step in range(n):
            out.append(model.forward_sample(seq, feed, *sampling, step))
            feed = np.array([out[-1]], dtype=np.int32)
        return out
    finally:
        model.free_sequence(seq)


def run_ahead_tokens(model, prompt: Sequence[int], sampling: Sampling, n: int) -> list[int]:
    """n tokens on a fresh sequence, step k + 1 submitted (fed step k's draw on the device) before step k is
    collected: two submissions wait at a time."""
    return interleaved_tokens(model, [(prompt, sampling)], n)[0]


def interleaved_tokens(model, jobs: Sequence[tuple[Sequence[int], Sampling]], n: int) -> list[list[int]]:
    """Run-ahead generations of n tokens for several sequences at once, step by step: every sequence's next
    submission, then every sequence's collect. Each sequence's device-fed step must read its own draw."""
    seqs = [model.new_sequence() for _ in jobs]
    try:
        for seq, (prompt, sampling) in zip(seqs, jobs, strict=True):
            model.submit_sample(seq, np.asarray(prompt, dtype=np.int32), *sampling, 0)
        out: list[list[int]] = [[] for _ in jobs]
        for step in range(n):
            if step + 1 < n:
                for seq, (_, sampling) in zip(seqs, jobs, strict=True):
                    model.submit_sample(seq, None, *sampling, step + 1)
            for tokens, seq in zip(out, seqs, strict=True):
                tokens.append(model.collect_sample(seq))
        for seq, (prompt, _) in zip(seqs, jobs, strict=True):
            assert model.sequence_length(seq) == len(prompt) + n - 1  # every token but the last was fed
        return out
    finally:
        for seq in seqs:
            model.free_sequence(seq)


def check_misuse_raises_and_loses_nothing(model, vocab: int, max_context: int) -> None:
    """Every refused call says why and leaves the sequence as it was. Needs max_sequences >= 2."""
    greedy = SAMPLINGS["greedy"]
    prompt = np.arange(1, 6, dtype=np.int32)
    expected = blocking_tokens(model, prompt, greedy, 3)
    seq = model.new_sequence()
    with pytest.raises(RuntimeError, match="no submitted sample to collect"):
        model.collect_sample(seq)
    with pytest.raises(RuntimeError, match="no drawn token to feed"):
        model.submit_sample(seq, None, *greedy, 0)
    with pytest.raises(ValueError, match="at least one token"):
        model.submit_sample(seq, np.array([], dtype=np.int32), *greedy, 0)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        model.submit_sample(seq, np.array([1, vocab], dtype=np.int32), *greedy, 0)
    with pytest.raises(ValueError, match="top_p"):
        model.submit_sample(seq, prompt, 1.0, 1.5, 0, 0, 0)
    assert model.sequence_length(seq) == 0

    model.submit_sample(seq, prompt, *greedy, 0)
    model.submit_sample(seq, None, *greedy, 1)
    with pytest.raises(RuntimeError, match="already has 2 submitted samples"):
        model.submit_sample(seq, None, *greedy, 2)
    with pytest.raises(RuntimeError, match=r"collect_sample\(\) them before forward$"):
        model.forward(seq, prompt)
    with pytest.raises(RuntimeError, match="before forward_sample"):
        model.forward_sample(seq, prompt, *greedy, 2)
    assert model.sequence_length(seq) == len(prompt) + 1  # the refused calls queued nothing
    assert [model.collect_sample(seq), model.collect_sample(seq)] == expected[:2]

    # A forward() since the last draw leaves nothing to feed; its logits are the next step's.
    logits = model.forward(seq, np.array([expected[1]], dtype=np.int32))
    assert int(np.argmax(logits)) == expected[2]
    with pytest.raises(RuntimeError, match="no drawn token to feed"):
        model.submit_sample(seq, None, *greedy, 3)

    # Past max_context: a device-fed step that would not fit is refused; the one before it still collects.
    model.forward(seq, np.ones(max_context - model.sequence_length(seq) - 1, dtype=np.int32))
    model.submit_sample(seq, np.array([7], dtype=np.int32), *greedy, 0)
    with pytest.raises(ValueError, match="max_context"):
        model.submit_sample(seq, None, *greedy, 1)
    assert model.sequence_length(seq) == max_context
    assert 0 <= model.collect_sample(seq) < vocab

    # free_sequence() waits for what is outstanding and drops it: the next sequence starts clean.
    model.free_sequence(seq)
    seq = model.new_sequence()
    model.submit_sample(seq, prompt, *greedy, 0)
    model.submit_sample(seq, None, *greedy, 1)
    model.free_sequence(seq)
    seq = model.new_sequence()
    with pytest.raises(RuntimeError, match="no submitted sample to collect"):
        model.collect_sample(seq)
    with pytest.raises(RuntimeError, match="no drawn token to feed"):
        model.submit_sample(seq, None, *greedy, 0)
    model.free_sequence(seq)
    assert run_ahead_tokens(model, prompt, greedy, 3) == expected


def check_failed_draws(model, vocab: int) -> None:
    """On a model whose logits are NaN: collect raises forward_sample's error, the device-fed step after it
    fails too, nothing is fed from a failed draw, and the backend keeps working."""
    sampling = SAMPLINGS["t1"]
    prompt = np.arange(1, 4, dtype=np.int32)
    seq = model.new_sequence()
    with pytest.raises(RuntimeError) as blocking:
        model.forward_sample(seq, prompt, *sampling, 0)
    model.free_sequence(seq)

    seq = model.new_sequence()
    model.submit_sample(seq, prompt, *sampling, 0)
    model.submit_sample(seq, None, *sampling, 1)
    with pytest.raises(RuntimeError) as failed:
        model.collect_sample(seq)
    assert str(failed.value) == str(blocking.value)
    with pytest.raises(RuntimeError, match="fed the failed draw of the step before it"):
        model.collect_sample(seq)
    with pytest.raises(RuntimeError, match="last draw failed"):
        model.submit_sample(seq, None, *sampling, 2)
    with pytest.raises(RuntimeError, match="no submitted sample to collect"):
        model.collect_sample(seq)
    # Host tokens are fed as given: that step fails on its own logits, not on the failed draw before it.
    model.submit_sample(seq, np.array([5], dtype=np.int32), *sampling, 2)
    with pytest.raises(RuntimeError) as again:
        model.collect_sample(seq)
    assert str(again.value) == str(blocking.value)
    model.free_sequence(seq)

    # The backend still runs: no failed draw was used as an index.
    seq = model.new_sequence()
    assert model.forward(seq, prompt).shape == (vocab,)
    model.free_sequence(seq)


def check_drop_last_token_misuse(model, vocab: int) -> None:
    """drop_last_token refuses an empty sequence, one with submissions waiting, and a second drop before a token
    is fed, each without changing the sequence; after a drop a device-fed submission is refused, as after
    forward(). Needs max_sequences >= 1."""
    greedy = SAMPLINGS["greedy"]
    prompt = np.arange(1, 6, dtype=np.int32)
    seq = model.new_sequence()
    with pytest.raises(RuntimeError, match="holds no token to drop"):
        model.drop_last_token(seq)
    model.submit_sample(seq, prompt, *greedy, 0)
    with pytest.raises(RuntimeError, match=r"collect_sample\(\) them before drop_last_token$"):
        model.drop_last_token(seq)
    assert model.sequence_length(seq) == len(prompt)
    first = model.collect_sample(seq)
    assert 0 <= first < vocab

    model.drop_last_token(seq)
    assert model.sequence_length(seq) == len(prompt) - 1
    with pytest.raises(RuntimeError, match="fed nothing since its last drop_last_token"):
        model.drop_last_token(seq)
    with pytest.raises(RuntimeError, match="no drawn token to feed"):
        model.submit_sample(seq, None, *greedy, 1)
    assert model.sequence_length(seq) == len(prompt) - 1

    # Fed again, the newest token may go; here the one fed back is the one dropped.
    model.submit_sample(seq, prompt[-1:], *greedy, 0)
    assert model.collect_sample(seq) == first
    model.drop_last_token(seq)
    model.forward(seq, prompt[-1:])
    model.drop_last_token(seq)
    assert model.sequence_length(seq) == len(prompt) - 1
    model.free_sequence(seq)

    # A new sequence (the CUDA backend reuses the slot) does not inherit the last drop: at the length that drop
    # left, its newest token may go.
    seq = model.new_sequence()
    model.forward(seq, prompt[:-1])
    model.drop_last_token(seq)
    assert model.sequence_length(seq) == len(prompt) - 2
    model.free_sequence(seq)


def fed_in_chunks(model, chunks: Sequence[Sequence[int]]) -> int:
    """A fresh sequence fed `chunks`, each by one forward(); the caller frees it."""
    seq = model.new_sequence()
    for chunk in chunks:
        model.forward(seq, np.asarray(chunk, dtype=np.int32))
    return seq


def check_dropped_token_is_forgotten(model, prompt: Sequence[int], sampling: Sampling, ahead: int,
                                     follow: Sequence[int]) -> None:
    """What the Engine does at a stop: `ahead` tokens decoded with a step run ahead, stopped at the last one
    with the step it fed still queued; that step is collected and its token dropped. Then `follow` and a
    run-ahead continuation must give exactly the logits and tokens of a sequence that was never fed the dropped
    token: the prompt, then each kept token on its own (the chunks the run-ahead sequence was fed: the backends'
    prefill and decode paths round differently), then the same."""
    seq = model.new_sequence()
    try:
        model.submit_sample(seq, np.asarray(prompt, dtype=np.int32), *sampling, 0)
        tokens = []
        for step in range(ahead):
            model.submit_sample(seq, None, *sampling, step + 1)
            tokens.append(model.collect_sample(seq))
        model.collect_sample(seq)  # the step run ahead of the stop, fed tokens[-1]
        assert model.sequence_length(seq) == len(prompt) + ahead
        model.drop_last_token(seq)
        assert model.sequence_length(seq) == len(prompt) + ahead - 1
        reference = fed_in_chunks(model, [prompt, *([t] for t in tokens[:-1])])
        try:
            follow = np.asarray(follow, dtype=np.int32)
            logits = model.forward(seq, follow, all_logits=True)
            np.testing.assert_array_equal(logits, model.forward(reference, follow, all_logits=True))
            feed = np.array([int(np.argmax(logits[-1]))], dtype=np.int32)
            continued = []
            model.submit_sample(seq, feed, *sampling, 0)
            for step in range(12):
                if step < 11:
                    model.submit_sample(seq, None, *sampling, step + 1)
                continued.append(model.collect_sample(seq))
            expected = []
            for step in range(12):
                expected.append(model.forward_sample(reference, feed, *sampling, step))
                feed = np.array([expected[-1]], dtype=np.int32)
            assert continued == expected
        finally:
            model.free_sequence(reference)
    finally:
        model.free_sequence(seq)
