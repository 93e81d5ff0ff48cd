"""gpt_oss_native: a native inference engine for OpenAI's gpt-oss models.

Light to import: the native module and the engine load on first use, so tools and the harmony helpers work
without touching a device.
"""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["Engine", "ModelConfig", "SamplingParams", "__version__"]


def __getattr__(name: str):
    if name == "Engine":
        from .engine import Engine

        return Engine
    if name == "SamplingParams":
        from .sampling import SamplingParams

        return SamplingParams
    if name == "ModelConfig":
        from .config import ModelConfig

        return ModelConfig
    raise AttributeError(f"module 'gpt_oss_native' has no attribute {name!r}")
