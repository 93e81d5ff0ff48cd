"""Shared fixtures: one tiny random model (harmony's full vocabulary) in both checkpoint layouts."""

from __future__ import annotations

from pathlib import Path

import pytest
from gpt_oss_native.config import ModelConfig
from gpt_oss_native.random_checkpoint import tiny_config as make_tiny_config
from gpt_oss_native.random_checkpoint import write_random_checkpoint


@pytest.fixture(scope="session")
def tiny_config() -> ModelConfig:
    return make_tiny_config()


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory, tiny_config: ModelConfig) -> Path:
    """The official `original/` layout: config.json + model.safetensors."""
    return write_random_checkpoint(
        tmp_path_factory.mktemp("tiny-original"), tiny_config, layout="original", seed=0
    )


@pytest.fixture(scope="session")
def tiny_checkpoint_hf(tmp_path_factory: pytest.TempPathFactory, tiny_config: ModelConfig) -> Path:
    """The same weights as tiny_checkpoint in the Hugging Face layout, sharded with an index."""
    return write_random_checkpoint(
        tmp_path_factory.mktemp("tiny-hf"), tiny_config, layout="hf", seed=0, shards=2
    )
