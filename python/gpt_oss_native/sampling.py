"""Sampling parameters. The sampling itself is native (``_C.Model.forward_sample`` / ``_C.sample_logits``)."""

from __future__ import annotations

import math
import numbers
import secrets
from dataclasses import dataclass

__all__ = ["SamplingParams"]

_SEED_LIMIT = 2**64  # the native samplers take a uint64 seed


@dataclass(frozen=True)
class SamplingParams:
    """How the next token is drawn from the logits.

    The defaults (temperature 1, no top-p / top-k cut) are gpt-oss's recommended settings.

    - ``temperature``: >= 0; 0 means greedy (argmax, lowest id on ties).
    - ``top_p``: nucleus mass kept, in (0, 1].
    - ``top_k``: keep the k most likely tokens; 0 keeps all.
    - ``seed``: the random stream, an int in [0, 2**64). None draws a fresh one at construction, so every
      instance has a concrete ``seed`` and its draws can be replayed: draw ``i`` of a generation is a pure
      function of ``(seed, i)`` on every backend.
    """

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.temperature, bool) or not isinstance(self.temperature, numbers.Real):
            raise TypeError(f"temperature must be a number, got {type(self.temperature).__name__}")
        if not (math.isfinite(self.temperature) and self.temperature >= 0):
            raise ValueError(f"temperature must be a finite number >= 0 (0 = greedy), got {self.temperature}")
        if isinstance(self.top_p, bool) or not isinstance(self.top_p, numbers.Real):
            raise TypeError(f"top_p must be a number, got {type(self.top_p).__name__}")
        if not (0 < self.top_p <= 1):
            raise ValueError(f"top_p must be in (0, 1] (1 = no nucleus cut), got {self.top_p}")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, numbers.Integral):
            raise TypeError(f"top_k must be an int, got {type(self.top_k).__name__}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 = no top-k cut), got {self.top_k}")
        if self.seed is None:
            object.__setattr__(self, "seed", secrets.randbelow(_SEED_LIMIT))
        elif isinstance(self.seed, bool) or not isinstance(self.seed, numbers.Integral):
            raise TypeError(f"seed must be an int or None, got {type(self.seed).__name__}")
        elif not (0 <= self.seed < _SEED_LIMIT):
            raise ValueError(f"seed must be in [0, 2**64), got {self.seed}")

    @property
    def greedy(self) -> bool:
        """True when the next token is the argmax (temperature 0): the seed plays no part."""
        return self.temperature == 0

    def native_args(self) -> tuple[float, float, int, int]:
        """``(temperature, top_p, top_k, seed)`` in the order ``_C.Model.forward_sample`` takes them."""
        return float(self.temperature), float(self.top_p), int(self.top_k), int(self.seed or 0)
