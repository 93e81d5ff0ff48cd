"""The ``gpt-oss-native`` command line (entry point: ``gpt_oss_native.cli.main:main``).

Each subcommand is a module here with ``add_arguments(parser)`` and ``run(args) -> int`` (see main.py). The
option groups below are shared, so every command spells the same setting the same way.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    from ..engine import Engine
    from ..sampling import SamplingParams

__all__ = [
    "add_browser_options",
    "add_engine_options",
    "add_model_argument",
    "add_sampling_options",
    "browser_backend",
    "engine_from_args",
    "positive_int",
    "sampling_from_args",
    "wants_color",
]


def positive_int(text: str) -> int:
    value = _number(text, int, "an integer")
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    value = _number(text, int, "an integer")
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _temperature(text: str) -> float:
    value = _number(text, float, "a number")
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0 (0 = greedy), got {text}")
    return value


def _probability(text: str) -> float:
    value = _number(text, float, "a number")
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
    return value


def _seed(text: str) -> int:
    value = _number(text, int, "an integer")
    if not 0 <= value < 2**64:
        raise argparse.ArgumentTypeError(f"must be in [0, 2**64), got {value}")
    return value


def _number(text: str, kind: type, what: str):
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None


def add_model_argument(parser: argparse.ArgumentParser) -> None:
    """The MODEL positional argument of the commands that load a checkpoint."""
    parser.add_argument(
        "model",
        help="checkpoint directory (official original/ or Hugging Face layout) or a Hugging Face repo id "
        "such as openai/gpt-oss-20b",
    )


def add_engine_options(parser: argparse.ArgumentParser, *, max_context: int = 8192) -> None:
    """--backend, --max-context, --threads, --device, --no-prefix-cache: how the model is loaded."""
    group = parser.add_argument_group("engine")
    group.add_argument(
        "--backend",
        choices=("cpu", "cuda"),
        default="cpu",
        help="where the model runs (default: %(default)s)",
    )
    group.add_argument(
        "--max-context",
        type=positive_int,
        default=max_context,
        metavar="N",
        help="most tokens per sequence, prompt included (default: %(default)s)",
    )
    group.add_argument(
        "--threads",
        type=_non_negative_int,
        default=0,
        metavar="N",
        help="CPU backend threads; 0 uses every core (default: %(default)s)",
    )
    group.add_argument(
        "--device",
        type=_non_negative_int,
        default=0,
        metavar="N",
        help="CUDA device ordinal (default: %(default)s)",
    )
    group.add_argument(
        "--no-prefix-cache",
        dest="prefix_cache",
        action="store_false",
        help="prefill every prompt in full, instead of continuing a finished sequence whose tokens it extends "
        "(a conversation's earlier turns)",
    )


def add_sampling_options(parser: argparse.ArgumentParser, *, max_tokens: int | None = None) -> None:
    """--temperature, --top-p, --top-k, --seed, --max-tokens. Defaults are gpt-oss's recommended sampling."""
    group = parser.add_argument_group("sampling")
    group.add_argument(
        "--temperature",
        type=_temperature,
        default=1.0,
        metavar="T",
        help="softmax temperature; 0 is greedy (default: %(default)s)",
    )
    group.add_argument(
        "--top-p",
        type=_probability,
        default=1.0,
        metavar="P",
        help="nucleus sampling mass in (0, 1] (default: %(default)s)",
    )
    group.add_argument(
        "--top-k",
        type=_non_negative_int,
        default=0,
        metavar="K",
        help="sample among the K most likely tokens; 0 keeps all (default: %(default)s)",
    )
    group.add_argument(
        "--seed",
        type=_seed,
        default=None,
        metavar="S",
        help="random seed, for a repeatable sample (default: a fresh one, printed at the end)",
    )
    group.add_argument(
        "--max-tokens",
        type=positive_int,
        default=max_tokens,
        metavar="N",
        help="most tokens to generate (default: %s)"
        % (max_tokens if max_tokens is not None else "until the reply ends or the context is full"),
    )


def sampling_from_args(args: argparse.Namespace) -> SamplingParams:
    from ..sampling import SamplingParams

    return SamplingParams(temperature=args.temperature, top_p=args.top_p, top_k=args.top_k, seed=args.seed)


def engine_from_args(model: str, args: argparse.Namespace, *, max_sequences: int = 1) -> Engine:
    """Loads the Engine; a progress bar on a terminal, else one summary line (both on stderr)."""
    from ..engine import Engine

    interactive = sys.stderr.isatty()
    engine = Engine(
        model,
        backend=args.backend,
        max_context=args.max_context,
        max_sequences=max_sequences,
        num_threads=args.threads,
        device=args.device,
        progress=interactive,
        prefix_cache=args.prefix_cache,
    )
    if not interactive:
        print(engine.summary, file=sys.stderr)
    return engine


def add_browser_options(group) -> None:
    """--browser-backend, --browser-index: where the browser tool's pages come from (serve and chat)."""
    group.add_argument(
        "--browser-backend",
        choices=("exa", "youcom", "local"),
        default="exa",
        help="the browser's search service: exa (EXA_API_KEY), youcom (YDC_API_KEY) or local (no internet: "
        "--browser-index for search, plain HTTP for pages) (default: %(default)s)",
    )
    group.add_argument(
        "--browser-index",
        metavar="PATH",
        default=None,
        help="for --browser-backend local: a JSON file or directory of HTML / text documents to search",
    )


def browser_backend(args: argparse.Namespace):
    """The browser tool's backend that the --browser-* options select."""
    from ..tools.browser import ExaBackend, LocalBackend, SearchIndex, YouComBackend

    if args.browser_backend == "local":
        index = None
        if args.browser_index:
            path = Path(args.browser_index)
            index = SearchIndex.from_directory(path) if path.is_dir() else SearchIndex.from_json(path)
        return LocalBackend(index)
    return ExaBackend() if args.browser_backend == "exa" else YouComBackend()


def wants_color(stream: TextIO) -> bool:
    # https://no-color.org: any non-empty NO_COLOR turns colour off.
    return stream.isatty() and not os.environ.get("NO_COLOR") and os.environ.get("TERM") != "dumb"
