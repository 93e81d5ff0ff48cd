"""``gpt-oss-native demo [DIR]``: the whole pipeline with no weights to download.

Writes (once) a tiny gpt-oss-shaped checkpoint of RANDOM weights into DIR (harmony's full 201088-token
vocabulary so every token maps, hidden size 64, 2 layers; ~50 MB), then runs ``generate`` on it. The text is
noise: the demo shows that loading, harmony rendering, the native forward pass and sampling work here.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import add_engine_options, add_sampling_options, engine_from_args, sampling_from_args
from .generate import add_prompt_options, generate_and_print

DEFAULT_DIRECTORY = "demo-checkpoint"
BANNER = """\
================================================================================
 DEMO: {directory} holds a tiny model with RANDOM weights.
 Its output is noise; it only shows that the engine runs on this machine.
 For real text: gpt-oss-native generate openai/gpt-oss-20b -p "..."
================================================================================"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "directory",
        nargs="?",
        default=DEFAULT_DIRECTORY,
        metavar="DIR",
        help="where the demo checkpoint lives; written if absent (default: ./%(default)s)",
    )
    parser.add_argument("-p", "--prompt", default="Why is the sky blue?", help="the user message")
    add_prompt_options(parser)
    add_engine_options(parser, max_context=1024)
    add_sampling_options(parser, max_tokens=32)


def run(args: argparse.Namespace) -> int:
    sampling = sampling_from_args(args)
    directory = Path(args.directory)
    _ensure_demo_checkpoint(directory)
    print(BANNER.format(directory=directory), file=sys.stderr)
    with engine_from_args(str(directory), args) as engine:
        if not engine.random_weights:
            raise ValueError(
                f"{directory} holds a checkpoint that is not a random demo one: run "
                f"`gpt-oss-native generate {directory} -p ...` on it instead"
            )
        generate_and_print(engine, args.prompt, args, sampling)
    return 0


def _ensure_demo_checkpoint(directory: Path) -> None:
    if (directory / "config.json").is_file():
        return
    if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
        raise FileExistsError(
            f"{directory} exists and is not a demo checkpoint: pass an empty or new directory to write "
            "one into"
        )
    from ..random_checkpoint import tiny_config, write_random_checkpoint

    print(f"writing a tiny random demo checkpoint to {directory} (about 50 MB) ...", file=sys.stderr)
    write_random_checkpoint(directory, tiny_config(), layout="original", seed=0)
