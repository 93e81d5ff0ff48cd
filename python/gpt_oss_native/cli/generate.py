"""``gpt-oss-native generate MODEL -p PROMPT``: render the prompt as a harmony conversation, stream the reply.

The analysis channel (the model's reasoning) and the final answer print distinctly: on a terminal the
reasoning is dimmed after a "thinking:" label; otherwise each message gets a ``--- channel ---`` heading.
``--raw`` prints the decoded token stream as is, special tokens included. Speeds go to stderr at the end.
"""

from __future__ import annotations

import argparse
import datetime
import sys
import time
from typing import TYPE_CHECKING, TextIO

from . import (
    add_engine_options,
    add_model_argument,
    add_sampling_options,
    engine_from_args,
    sampling_from_args,
    wants_color,
)

if TYPE_CHECKING:
    from ..engine import Engine
    from ..harmony import ChannelDelta
    from ..sampling import SamplingParams


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_argument(parser)
    parser.add_argument("-p", "--prompt", required=True, help="the user message")
    add_prompt_options(parser)
    add_engine_options(parser)
    add_sampling_options(parser)


def add_prompt_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("prompt and output")
    group.add_argument(
        "--reasoning-effort",
        choices=("low", "medium", "high"),
        default="medium",
        help="how long the model thinks before answering (default: %(default)s)",
    )
    group.add_argument(
        "--developer",
        metavar="TEXT",
        default=None,
        help="developer instructions (harmony's developer message)",
    )
    group.add_argument(
        "--raw",
        action="store_true",
        help="print the raw decoded tokens, special tokens included, instead of the parsed channels",
    )


def run(args: argparse.Namespace) -> int:
    sampling = sampling_from_args(args)  # before loading: bad values fail fast
    with engine_from_args(args.model, args) as engine:
        generate_and_print(engine, args.prompt, args, sampling)
    return 0


def generate_and_print(
    engine: Engine, prompt: str, args: argparse.Namespace, sampling: SamplingParams
) -> None:
    """Renders ``prompt`` (with the prompt options of ``args``), streams the reply to stdout and the speeds to
    stderr."""
    from .. import harmony

    out, err = sys.stdout, sys.stderr
    prompt_tokens = harmony.render_prompt(
        prompt,
        reasoning_effort=args.reasoning_effort,
        developer_instructions=args.developer,
        conversation_start_date=datetime.date.today().isoformat(),
    )
    if len(prompt_tokens) >= engine.max_context:
        raise ValueError(
            f"the rendered prompt has {len(prompt_tokens)} tokens, which leaves no room to generate within "
            f"--max-context {engine.max_context}: raise --max-context or shorten the prompt"
        )
    max_tokens = args.max_tokens or engine.max_context
    stops = set(harmony.stop_tokens())
    show = _RawPrinter(out) if args.raw else _ChannelPrinter(out, color=wants_color(out))

    start = time.perf_counter()
    first = last = start
    count = 0
    token = None
    try:
        for token in engine.generate(prompt_tokens, sampling, max_tokens, stops):
            last = time.perf_counter()
            if count == 0:
                first = last
            count += 1
            show.token(token)
    finally:  # also on Ctrl-C: flush held-back text and reset the terminal's colours
        show.finish()

    if token in stops:
        ended = f"stopped at {harmony.get_encoding().decode([token])}"
    elif count >= max_tokens:
        ended = f"reached --max-tokens {max_tokens}"
    else:
        ended = f"filled the context (--max-context {engine.max_context})"
    prefill = _rate(len(prompt_tokens), first - start)
    decode = _rate(count - 1, last - first) if count > 1 else "0 tokens"
    print(f"prefill: {prefill} | decode: {decode} | {ended} | seed {sampling.seed}", file=err)


def _rate(tokens: int, seconds: float) -> str:
    per_second = tokens / seconds if seconds > 0 else float("inf")
    return f"{tokens} tokens in {seconds:.2f} s ({per_second:.1f} tok/s)"


_DIM, _CYAN, _YELLOW, _RESET = "\x1b[2m", "\x1b[36m", "\x1b[33m", "\x1b[0m"


class _RawPrinter:
    def __init__(self, out: TextIO) -> None:
        from ..harmony import TextStream

        self._out = out
        self._text = TextStream()

    def token(self, token: int) -> None:
        self._write(self._text.decode([token]))

    def finish(self) -> None:
        self._write(self._text.decode([], final=True) + "\n")

    def _write(self, text: str) -> None:
        self._out.write(text)
        self._out.flush()


class _ChannelPrinter:
    """Prints parsed channel deltas, with a heading whenever a new message starts."""

    def __init__(self, out: TextIO, color: bool) -> None:
        from ..harmony import ChannelStream

        self._out = out
        self._color = color
        self._stream = ChannelStream()
        self._section: tuple | None = None

    def token(self, token: int) -> None:
        if (delta := self._stream.feed(token)) is not None:
            self._show(delta)

    def finish(self) -> None:
        if (delta := self._stream.finish()) is not None:
            self._show(delta)
        if self._section is not None:
            self._write((_RESET if self._color else "") + "\n")

    def _show(self, delta: ChannelDelta) -> None:
        section = (delta.message, delta.channel, delta.recipient, delta.content_type)
        if section != self._section:
            self._heading(delta, first=self._section is None)
            self._section = section
        self._write(delta.text)

    def _heading(self, delta: ChannelDelta, first: bool) -> None:
        separator = "" if first else "\n\n"
        if delta.channel is None:
            label, style = f"unparsed output ({self._stream.malformed})", _YELLOW
        elif delta.recipient:
            kind = f" {delta.content_type}" if delta.content_type else ""
            label, style = f"{delta.channel} to={delta.recipient}{kind}", _CYAN
        elif delta.channel == "analysis":
            label, style = ("thinking" if self._color else "analysis"), _DIM
        else:
            label, style = delta.channel, ""
        if not self._color:
            self._write(f"{separator}--- {label} ---\n")
        elif delta.channel == "final":  # the answer itself: plain text after a blank line
            self._write(f"{_RESET}{separator}")
        else:
            self._write(f"{_RESET}{separator}{style}{label}: ")

    def _write(self, text: str) -> None:
        self._out.write(text)
        self._out.flush()
