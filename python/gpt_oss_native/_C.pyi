# ruff: noqa: N999  (the module is _C)
"""Type stub of the native module (csrc/bindings.cpp; keep the two in step).

Errors: std::invalid_argument and std::length_error arrive as ValueError, std::runtime_error as
RuntimeError. forward, forward_sample, submit_sample, collect_sample, drop_last_token and the constructor
release the GIL.
"""

from types import ModuleType
from typing import TypedDict

import numpy as np
import numpy.typing as npt

class _CudaDevice(TypedDict):  # the dicts cuda_devices() returns (a stub-only type)
    index: int
    name: str
    compute_capability: tuple[int, int]
    multiprocessors: int
    total_memory: int

class Model:
    """One model's weights on one backend, and its sequences (each with its own KV cache)."""

    def __init__(
        self,
        config: dict[str, int | float],
        weights: dict[str, npt.NDArray[np.uint16] | npt.NDArray[np.float32] | npt.NDArray[np.uint8]],
        backend: str = "cpu",
        max_context: int = 8192,
        max_sequences: int = 8,
        num_threads: int = 0,
        device: int = 0,
    ) -> None:
        """``config``: ModelConfig.to_native(); ``weights``: internal names (csrc/core/model.h), bf16 as
        uint16,
        C-contiguous; the Model keeps them alive and may read them in place."""

    @property
    def backend(self) -> str: ...
    def new_sequence(self) -> int:
        """A fresh, empty sequence; RuntimeError when max_sequences are alive."""

    def free_sequence(self, seq: int) -> None: ...
    def sequence_length(self, seq: int) -> int:
        """Tokens in the sequence's cache."""

    def forward(
        self, seq: int, tokens: npt.NDArray[np.int32], all_logits: bool = False
    ) -> npt.NDArray[np.float32]:
        """Appends ``tokens`` (int32, n >= 1) and returns fp32 logits: ``[vocab]`` of the last position, or
        ``[n, vocab]`` with ``all_logits``. ValueError past max_context."""

    def forward_sample(
        self,
        seq: int,
        tokens: npt.NDArray[np.int32],
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int = 0,
        seed: int = 0,
        draw: int = 0,
    ) -> int:
        """``forward``, then samples the next token on the backend; ``draw`` indexes ``seed``'s random
        stream. RuntimeError while the sequence has submitted samples not collected."""

    def submit_sample(
        self,
        seq: int,
        tokens: npt.NDArray[np.int32] | None,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int = 0,
        seed: int = 0,
        draw: int = 0,
    ) -> None:
        """Queues ``forward_sample``'s work and returns without waiting for the token (run-ahead decode).
        ``tokens=None`` feeds the token the sequence's previous submission drew, on the device, before the
        host has seen it. At most 2 submissions of a sequence wait to be collected. RuntimeError (nothing
        queued) when the queue is full or ``None`` has no draw to feed (none yet, or a ``forward`` since);
        ``forward`` and ``forward_sample`` raise while submissions wait; ``free_sequence`` waits for them and
        drops their tokens."""

    def collect_sample(self, seq: int) -> int:
        """Waits for the sequence's oldest submission and returns its token. RuntimeError when none waits,
        when its sampling failed (as ``forward_sample``), or when it was fed a failed draw."""

    def outstanding_samples(self, seq: int) -> int:
        """The sequence's submissions not collected yet (0 to 2)."""

    @property
    def runs_ahead(self) -> bool:
        """Whether ``submit_sample`` returns before its step is computed (CUDA), so submitting step k + 1
        before collecting step k keeps the device busy. False on the CPU, which computes at submit: there,
        running ahead only hands each token out a step late."""

    def drop_last_token(self, seq: int) -> None:
        """Forgets the sequence's newest token (the next token fed takes its position): what a run-ahead
        step queued past a stop fed. Only the newest one: RuntimeError when the sequence is empty, has
        submissions waiting, or was fed nothing since its last drop (sliding-window rings hold no more).
        Afterwards ``submit_sample(seq, None, ...)`` raises, as after ``forward``."""

def sample_logits(
    logits: npt.NDArray[np.float32],
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 0,
    seed: int = 0,
    draw: int = 0,
) -> int:
    """The sampler's host definition: temperature 0 is argmax (lowest id on ties); above, the Gumbel-max draw of
    ``(seed, draw)`` over the top_k / top_p kept set (csrc/cpu/sampling.cpp states the law)."""

built_with_cuda: bool

def cuda_devices() -> list[_CudaDevice]:
    """The visible NVIDIA GPUs; empty without a CUDA build, a driver or a GPU."""

cuda_kernels: ModuleType  # only in CUDA builds: per-kernel test entry points (csrc/bindings_cuda_kernels.cpp)
