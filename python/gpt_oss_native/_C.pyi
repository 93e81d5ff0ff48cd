# ruff: noqa: N999  (the module is _C)
"""Type stub of the native module (csrc/bindings.cpp; keep the two in step).

Errors: std::invalid_argument and std::length_error arrive as ValueError, std::runtime_error as
RuntimeError. forward, forward_sample and the constructor release the GIL.
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
        stream."""

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
