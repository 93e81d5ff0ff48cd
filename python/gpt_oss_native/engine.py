"""Engine: one loaded model on one backend, streaming generations for any number of callers.

>>> from gpt_oss_native import Engine, SamplingParams
>>> from gpt_oss_native import harmony
>>> engine = Engine("gpt-oss-20b/original", backend="cuda")
>>> prompt = harmony.render_prompt("Why is the sky blue?", reasoning_effort="low")
>>> for token in engine.generate(prompt, SamplingParams(temperature=0), max_tokens=256,
...                              stop_tokens=harmony.stop_tokens()):
...     ...

The API the server and the chat client build on:

- ``Engine(model, backend="cpu", max_context=8192, max_sequences=8, num_threads=0, progress=True, device=0,
  prefix_cache=True)``
- ``engine.generate(prompt_tokens, sampling, max_tokens, stop_tokens=None) -> Generation``: an iterator of token
  ids as they are produced, the stop token included; the caller learns why it ended from the last token (in
  ``stop_tokens``: a stop; else the ``max_tokens`` or context limit). Closing the iterator early (``close()``,
  ``break`` in a ``with contextlib.closing(...)``, garbage collection) releases its sequence. Once started,
  ``generation.cached_tokens`` says how many prompt tokens came from the prefix cache.
- ``engine.generate_harmony(messages, sampling, max_tokens, **render_options) -> Iterator[ChannelDelta]``
- ``engine.config`` (ModelConfig), ``engine.max_context``, ``engine.max_sequences``, ``engine.backend``,
  ``engine.random_weights``, ``engine.summary`` (what was loaded, how long it took),
  ``engine.open_sequences``, ``engine.cached_sequences``, ``engine.stats`` (prefix cache counters),
  ``engine.prefix_cache``, ``engine.clear_prefix_cache()``, ``engine.close()`` (also a context manager).

Decode runs ahead where the backend computes asynchronously (``_C.Model.runs_ahead``: CUDA): step k + 1, fed
step k's token on the device, is queued before the host waits for step k, so the device computes it while the
caller handles token k and never waits for the host between tokens. The CPU backend computes at submit, where
running ahead would only hand every token out a step late: there each step is submitted and collected in turn.

Prefix cache: a finished generation's sequence stays in a pool (least recently used first out), tagged with the
tokens its KV cache holds: the prompt and every generated token but the last (the last was sampled, never fed).
A generation that ended early (a stop token, ``close()``) with a step run ahead had fed its last token too, so
that token is dropped from the sequence again (``_C.Model.drop_last_token``) before the sequence is pooled.
A new prompt that extends such a token list continues that sequence and prefills only the new suffix: a tool
loop's next prompt is the last one, the model's call and the tool's output (the server and the chat command
continue from the model's own tokens for that: ``server.conversation.Transcript``), and a new turn after an
answer without reasoning extends the last one too. The backends cannot truncate a sequence (sliding-window
layers keep only a ring of recent positions), so a prompt that diverges inside a cached list starts afresh:
e.g. a new user turn after an answer with reasoning, which harmony drops from the history. The result equals a fresh generation's up to fp32
summation order (the prefix was fed in other chunks, which the backends guarantee to 1e-5; see
tests/test_incremental_decode.py); the sampler's draws are counted per generation, so seeds repeat. Pooled
sequences never block a generation: one that needs a sequence evicts the least recently used.

Thread safety: each generation owns a native sequence (its KV cache); a lock serialises the native calls, so
generators consumed from several threads interleave step by step and each sees exactly the tokens it would
see alone.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Self

import numpy as np

from .checkpoint import open_checkpoint
from .config import ModelConfig
from .sampling import SamplingParams

if TYPE_CHECKING:
    from openai_harmony import Message

    from .harmony import ChannelDelta

__all__ = ["Engine", "Generation", "PrefixCacheStats"]

BACKENDS = ("cpu", "cuda")


@dataclasses.dataclass
class PrefixCacheStats:
    """What the prefix cache saved since the Engine was loaded."""

    generations: int = 0  # generations that acquired a sequence
    hits: int = 0  # of them, those that continued a cached sequence
    prompt_tokens: int = 0  # prompt tokens of those generations
    reused_tokens: int = 0  # prompt tokens found in a cached sequence, not prefilled again

    @property
    def hit_rate(self) -> float:
        """The share of prompt tokens that were not prefilled again."""
        return self.reused_tokens / self.prompt_tokens if self.prompt_tokens else 0.0


class Generation(Iterator[int]):
    """The iterator ``Engine.generate`` returns: token ids, plus ``cached_tokens`` (how many prompt tokens came
    from the prefix cache; set when the first token is requested). ``close()`` ends it early."""

    def __init__(self, start: Callable[[list[int]], Iterator[int]]) -> None:
        # The generator writes the count into this cell, not into self: no reference cycle, so dropping the
        # Generation releases its sequence at once.
        self._cached = [0]
        self._tokens = start(self._cached)

    @property
    def cached_tokens(self) -> int:
        return self._cached[0]

    def __next__(self) -> int:
        return next(self._tokens)

    def close(self) -> None:
        self._tokens.close()  # type: ignore[attr-defined]


class Engine:
    """A gpt-oss model loaded on one backend; see the module docstring for the API."""

    def __init__(
        self,
        model: str | os.PathLike[str],
        backend: str = "cpu",
        max_context: int = 8192,
        max_sequences: int = 8,
        num_threads: int = 0,
        progress: bool = True,
        device: int = 0,
        prefix_cache: bool = True,
    ) -> None:
        """Loads ``model`` (a checkpoint directory in either layout, or a Hugging Face repo id such as
        ``openai/gpt-oss-20b``) and builds the native model.

        ``max_context`` is the most tokens one sequence holds (prompt + generated); ``max_sequences`` how many
        generations may be open at once; ``num_threads`` the CPU backend's threads (0: all cores); ``device``
        the CUDA device. With ``progress``, a progress bar and a summary line go to stderr. ``prefix_cache``
        keeps finished sequences for prompts that extend them (see the module docstring).
        """
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}: choose one of {', '.join(BACKENDS)}")
        for name, value, low in (
            ("max_context", max_context, 1),
            ("max_sequences", max_sequences, 1),
            ("num_threads", num_threads, 0),
            ("device", device, 0),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
        from . import _C

        if backend == "cuda":
            _require_cuda(_C, device)

        checkpoint = open_checkpoint(model, progress=progress)
        start = time.perf_counter()
        self._model = _C.Model(
            checkpoint.config.to_native(),
            checkpoint.weights,
            backend,
            max_context,
            max_sequences,
            num_threads,
            device,
        )
        build_seconds = time.perf_counter() - start
        self._runs_ahead: bool = self._model.runs_ahead  # see the module docstring
        self.config: ModelConfig = checkpoint.config
        self.max_context = max_context
        self.max_sequences = max_sequences
        self.backend: str = self._model.backend
        self.directory: Path = checkpoint.directory
        self.random_weights = checkpoint.random_weights
        self._lock = threading.RLock()  # reentrant: a generator closed by GC may free inside a locked region
        self._open: set[int] = set()
        self.prefix_cache = bool(prefix_cache)
        self._pool: OrderedDict[int, np.ndarray] = OrderedDict()  # sequence → its cache's tokens; LRU first
        self._stats = PrefixCacheStats()
        self.summary = f"{checkpoint.summary()}; {self.backend} model ready in {build_seconds:.2f} s"
        if progress:
            print(self.summary, file=sys.stderr)

    # ---- generation ------------------------------------------------------------------------------------

    def generate(
        self,
        prompt_tokens: Sequence[int] | np.ndarray,
        sampling: SamplingParams,
        max_tokens: int,
        stop_tokens: Iterable[int] | None = None,
    ) -> Generation:
        """Streams up to ``max_tokens`` token ids following ``prompt_tokens``.

        The prompt is prefilled in one native call, then each step feeds the last token back and samples the
        next on the backend (draw ``i`` of ``sampling.seed`` for the ``i``-th token, so a seed repeats); on a
        backend that runs ahead, the step after the one being waited for is already queued (see the module
        docstring). Stops after a token in ``stop_tokens`` (yielded), after ``max_tokens``, or when the
        sequence fills ``max_context``. Arguments are checked here, before the iterator is returned. With the
        prefix cache, only the part of the prompt that no cached sequence holds is prefilled.
        """
        prompt = self._check_prompt(prompt_tokens)
        if not isinstance(sampling, SamplingParams):
            raise TypeError(f"sampling must be a SamplingParams, got {type(sampling).__name__}")
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 0:
            raise ValueError(f"max_tokens must be an int >= 0, got {max_tokens!r}")
        stops = frozenset(int(t) for t in stop_tokens or ())
        # The k-th generated token (from 0) needs the prompt and k fed-back tokens in the cache.
        budget = min(max_tokens, self.max_context - len(prompt) + 1)
        return Generation(lambda cached: self._generate(cached, prompt, sampling.native_args(), budget, stops))

    def _generate(
        self,
        cached_out: list[int],
        prompt: np.ndarray,
        sampling: tuple[float, float, int, int],
        budget: int,
        stops: frozenset[int],
    ) -> Iterator[int]:
        if budget <= 0:
            return
        seq, cached = self._acquire(prompt)
        cached_out[0] = cached
        # Steps queued when the loop waits for one: the next one too where the backend runs ahead.
        depth = 2 if self._runs_ahead else 1
        drawn: list[int] = []  # the tokens collected, in step order
        submitted = 0  # steps queued; step s > 0 was fed drawn[s - 1], on the device
        failed = False  # a native call raised: what the cache holds is unknown
        try:
            for step in range(budget):
                while submitted < min(step + depth, budget):  # never past the budget
                    self._submit(seq, None if submitted else prompt[cached:], sampling, submitted)
                    submitted += 1
                token = self._collect(seq)
                drawn.append(token)
                yield token
                if token in stops:
                    return
        except Exception:
            failed = True
            raise
        finally:
            self._finish(seq, prompt, drawn, submitted, failed)

    def generate_harmony(
        self,
        messages: str | Sequence[Message],
        sampling: SamplingParams,
        max_tokens: int,
        **render_options,
    ) -> Iterator[ChannelDelta]:
        """Renders ``messages`` (a prompt or a history; options as ``harmony.build_conversation``) and streams
        the assistant's reply as parsed channel deltas, until ``<|return|>`` / ``<|call|>`` or a limit."""
        from . import harmony

        prompt = harmony.render_prompt(messages, **render_options)
        tokens = self.generate(prompt, sampling, max_tokens, harmony.stop_tokens())

        def deltas() -> Iterator[ChannelDelta]:
            stream = harmony.ChannelStream()
            try:
                for token in tokens:
                    if (delta := stream.feed(token)) is not None:
                        yield delta
                if (delta := stream.finish()) is not None:
                    yield delta
            finally:
                tokens.close()  # type: ignore[attr-defined]

        return deltas()

    # ---- lifecycle -------------------------------------------------------------------------------------

    @property
    def open_sequences(self) -> int:
        """How many generations hold a sequence now."""
        with self._lock:
            return len(self._open)

    @property
    def cached_sequences(self) -> int:
        """How many finished sequences the prefix cache holds now."""
        with self._lock:
            return len(self._pool)

    @property
    def stats(self) -> PrefixCacheStats:
        """A copy of the prefix cache's counters."""
        with self._lock:
            return dataclasses.replace(self._stats)

    def clear_prefix_cache(self) -> None:
        """Frees every cached sequence."""
        with self._lock:
            while self._pool:
                self._evict()

    def close(self) -> None:
        """Releases the model (weights, KV caches, device memory). Open generators fail afterwards."""
        with self._lock:
            model, self._model = self._model, None
            self._open.clear()
            self._pool.clear()
        del model

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"Engine({str(self.directory)!r}, backend={self.backend!r}, layers={self.config.num_layers}, "
            f"experts={self.config.num_experts}, max_context={self.max_context})"
        )

    # ---- internals -------------------------------------------------------------------------------------

    def _check_prompt(self, prompt_tokens: Sequence[int] | np.ndarray) -> np.ndarray:
        prompt = np.asarray(prompt_tokens)
        if prompt.ndim != 1 or (prompt.size and not np.issubdtype(prompt.dtype, np.integer)):
            raise ValueError(
                f"prompt_tokens must be a flat sequence of token ids, got {prompt.dtype} {prompt.shape}"
            )
        if prompt.size == 0:
            raise ValueError("prompt_tokens is empty: a generation needs at least one prompt token")
        if prompt.size > self.max_context:
            raise ValueError(
                f"the prompt has {prompt.size} tokens, more than max_context={self.max_context}: "
                "shorten it or load the Engine with a larger max_context"
            )
        vocab = self.config.vocab_size
        bad = (prompt < 0) | (prompt >= vocab)
        if bad.any():
            raise ValueError(
                f"prompt token {int(prompt[bad][0])} at position {int(np.argmax(bad))} is outside the "
                f"vocabulary [0, {vocab})"
            )
        return np.ascontiguousarray(prompt, dtype=np.int32)

    def _acquire(self, prompt: np.ndarray) -> tuple[int, int]:
        """A sequence for ``prompt`` and how many of its tokens the sequence already holds: the cached sequence
        with the longest token list that ``prompt`` strictly extends, else a new one (evicting the least
        recently used cached sequence when all slots are taken)."""
        with self._lock:
            if self._model is None:
                raise RuntimeError("this Engine is closed")
            if len(self._open) >= self.max_sequences:
                raise RuntimeError(
                    f"all {self.max_sequences} sequences are in use: finish or close() a running generation, "
                    "or load the Engine with a larger max_sequences"
                )
            best, cached = None, 0
            for seq, tokens in self._pool.items():
                if cached < len(tokens) < len(prompt) and np.array_equal(prompt[: len(tokens)], tokens):
                    best, cached = seq, len(tokens)
            if best is not None:
                del self._pool[best]
                seq = best
            else:
                if len(self._open) + len(self._pool) >= self.max_sequences:
                    self._evict()
                seq = self._new_sequence()
            self._open.add(seq)
            self._stats.generations += 1
            self._stats.hits += int(best is not None)
            self._stats.prompt_tokens += len(prompt)
            self._stats.reused_tokens += cached
            return seq, cached

    def _new_sequence(self) -> int:
        """A fresh native sequence. A backend that cannot hold another KV cache (CUDA out of memory) gets the
        pooled sequences back one by one: the CUDA backend reuses a freed slot's cache without allocating."""
        while True:
            try:
                return self._model.new_sequence()
            except (RuntimeError, MemoryError):
                if not self._pool:
                    raise
                self._evict()

    def _evict(self) -> None:
        seq, _ = self._pool.popitem(last=False)
        self._model.free_sequence(seq)

    def _release(self, seq: int, cache_tokens: np.ndarray | None) -> None:
        """Pools a finished sequence whose cache holds exactly ``cache_tokens`` (None: unknown), or frees it."""
        with self._lock:
            if self._model is None or seq not in self._open:
                return
            self._open.discard(seq)
            if (
                self.prefix_cache
                and cache_tokens is not None
                and len(cache_tokens) < self.max_context  # a full sequence can't be extended
                and self._model.sequence_length(seq) == len(cache_tokens)
            ):
                self._pool[seq] = cache_tokens
            else:
                self._model.free_sequence(seq)

    def _finish(self, seq: int, prompt: np.ndarray, drawn: list[int], submitted: int, failed: bool) -> None:
        """Releases a generation's sequence; ``drawn`` holds the tokens handed out. A pooled sequence has
        nothing in flight and holds the prompt and every token handed out but the last, as without run-ahead:
        a step still queued (run ahead past a stop or ``close()``) is collected, its draw ignored, and the
        token it was fed, the last one handed out, is dropped again. After a failure the sequence is freed."""
        handed = len(drawn)
        try:
            while not failed and len(drawn) < submitted:
                drawn.append(self._collect(seq))
            if not failed and submitted > max(handed, 1):
                self._drop_last_token(seq)
                submitted -= 1
        except Exception:  # noqa: BLE001 - the generation's own error, if any, is already on its way
            failed = True
        fed = np.asarray(drawn[: submitted - 1], dtype=np.int32)  # step s > 0 was fed drawn[s - 1]
        self._release(seq, None if failed else np.concatenate([prompt, fed]))

    def _submit(
        self, seq: int, tokens: np.ndarray | None, sampling: tuple[float, float, int, int], draw: int
    ) -> None:
        """Queues step ``draw``: ``tokens``, or (None) the sequence's previous draw, fed on the device."""
        with self._lock:
            if self._model is None:
                raise RuntimeError("this Engine was closed while a generation was running")
            self._model.submit_sample(seq, tokens, *sampling, draw)

    def _collect(self, seq: int) -> int:
        """Waits for the sequence's oldest queued step and returns its token."""
        with self._lock:
            if self._model is None:
                raise RuntimeError("this Engine was closed while a generation was running")
            return int(self._model.collect_sample(seq))

    def _drop_last_token(self, seq: int) -> None:
        """Forgets the newest token fed to the sequence."""
        with self._lock:
            if self._model is None:
                raise RuntimeError("this Engine was closed while a generation was running")
            self._model.drop_last_token(seq)


def _require_cuda(native, device: int) -> None:
    """Fails fast, before the weights load, when the CUDA backend cannot run here."""
    if not native.built_with_cuda:
        raise RuntimeError(
            "this build of gpt_oss_native has no CUDA backend (nvcc was not found when it was built): "
            "reinstall on a machine with the CUDA toolkit, or use --backend cpu"
        )
    devices = native.cuda_devices()
    if not devices:
        raise RuntimeError("no CUDA device is visible (no NVIDIA driver or GPU): use the cpu backend")
    if device >= len(devices):
        raise RuntimeError(f"CUDA device {device} does not exist: this machine has {len(devices)} device(s)")
