"""``gpt-oss-native chat MODEL``: a multi-turn harmony conversation in the terminal, with tools.

The reply streams as it is generated; the reasoning (analysis channel) shows dimmed with ``--show-reasoning``.
Tool calls (``-b`` browser, ``-p`` python, ``--apply-patch``) run here and their results go back to the model,
which goes on until it answers on the final channel. Ctrl-C stops the reply in progress (the session goes on);
Ctrl-D or ``/exit`` quits.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from . import (
    add_browser_options,
    add_engine_options,
    add_model_argument,
    add_sampling_options,
    browser_backend,
    engine_from_args,
    sampling_from_args,
    wants_color,
)

if TYPE_CHECKING:
    from openai_harmony import Message

    from ..engine import Engine
    from ..sampling import SamplingParams
    from ..server.conversation import Transcript
    from ..server.streaming import Segment
    from ..tools import Tool

PROMPT = "user> "
EXIT_COMMANDS = {"/exit", "/quit"}
_DIM, _CYAN, _GREEN, _MAGENTA, _YELLOW, _RESET = "\x1b[2m", "\x1b[36m", "\x1b[32m", "\x1b[35m", "\x1b[33m", "\x1b[0m"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_argument(parser)
    group = parser.add_argument_group("conversation")
    group.add_argument("-r", "--reasoning-effort", choices=("low", "medium", "high"), default="low",
                       help="how long the model thinks before answering (default: %(default)s)")
    group.add_argument("--show-reasoning", action="store_true", help="print the model's reasoning, dimmed")
    group.add_argument("--developer-message", default="", metavar="TEXT",
                       help="developer instructions (harmony's developer message)")
    tools = parser.add_argument_group("tools")
    tools.add_argument("-b", "--browser", action="store_true", help="let the model browse (search, open, find)")
    tools.add_argument("--show-browser-results", action="store_true",
                       help="print the pages the browser returns (default: a one-line note)")
    add_browser_options(tools)
    tools.add_argument("-p", "--python", action="store_true",
                       help="let the model run Python scripts in the bubblewrap sandbox")
    tools.add_argument("-a", "--apply-patch", action="store_true",
                       help="let the model edit files under --workspace with apply_patch")
    tools.add_argument("--workspace", default=".", metavar="DIR",
                       help="the directory apply_patch edits (default: the current directory)")
    add_engine_options(parser)
    add_sampling_options(parser, max_tokens=None)


def run(args: argparse.Namespace) -> int:
    sampling = sampling_from_args(args)
    tools = _tools(args)
    _enable_line_editing()
    with engine_from_args(args.model, args) as engine:
        session = ChatSession(
            engine,
            sampling,
            tools=tools,
            reasoning_effort=args.reasoning_effort,
            developer_message=args.developer_message,
            max_tokens=args.max_tokens,
            show_reasoning=args.show_reasoning,
            show_browser_results=args.show_browser_results,
            out=sys.stdout,
        )
        session.print_banner()
        session.loop()
    return 0


def _tools(args: argparse.Namespace) -> list[Tool]:
    from ..tools import ApplyPatchTool, BrowserTool, PythonTool

    tools: list[Tool] = []
    if args.browser:
        tools.append(BrowserTool(browser_backend(args)))
    if args.python:
        tools.append(PythonTool())
    if args.apply_patch:
        tools.append(ApplyPatchTool(Path(args.workspace)))
    return tools


def _enable_line_editing() -> None:
    """Line editing and a history file for input(), where the readline module exists."""
    try:
        import readline
    except ImportError:
        return
    history = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state") / "gpt_oss_native"
    path = history / "chat_history"
    try:
        readline.read_history_file(path)
    except OSError:
        pass
    readline.set_history_length(10000)

    import atexit

    def save() -> None:
        try:
            history.mkdir(parents=True, exist_ok=True)
            readline.write_history_file(path)
        except OSError:
            pass

    atexit.register(save)


class ChatSession:
    """The conversation and its tools; :meth:`loop` reads user turns until Ctrl-D or /exit."""

    def __init__(
        self,
        engine: Engine,
        sampling: SamplingParams,
        *,
        tools: Sequence[Tool] = (),
        reasoning_effort: str = "low",
        developer_message: str = "",
        max_tokens: int | None = None,
        show_reasoning: bool = False,
        show_browser_results: bool = False,
        out: TextIO = sys.stdout,
        color: bool | None = None,
    ) -> None:
        self.engine = engine
        self.sampling = sampling
        self._draws = 0  # each generation continues the seed's stream: replies differ, the session repeats
        self.tools = list(tools)
        self.max_tokens = max_tokens
        self.show_reasoning = show_reasoning
        self.show_browser_results = show_browser_results
        self.out = out
        self.color = wants_color(out) if color is None else color
        self.history: list[Message] = []
        self._transcript: Transcript | None = None  # the tokens up to the last tool call, as the model wrote them
        developer = [developer_message] if developer_message else []
        functions = []
        for tool in self.tools:
            if tool.tool_config is None:  # apply_patch: a function tool with its instructions
                developer.append(tool.developer_instructions)  # type: ignore[attr-defined]
                functions.append(tool.function_description)  # type: ignore[attr-defined]
        self.header: dict[str, Any] = {
            "reasoning_effort": reasoning_effort,
            "developer_instructions": "\n".join(developer) if developer else None,
            "function_tools": functions,
            "builtin_tools": [t.tool_config for t in self.tools if t.tool_config is not None],
            "conversation_start_date": datetime.date.today().isoformat(),
        }

    # -- the loop ------------------------------------------------------------------------------------------

    def print_banner(self) -> None:
        names = ", ".join(t.name.removeprefix("functions.") for t in self.tools) or "none"
        self._write(self._style(_CYAN, f"gpt-oss-native chat: {self.engine!r}") + "\n")
        if getattr(self.engine, "random_weights", False):
            self._write(self._style(_YELLOW, "note: RANDOM weights, the replies are noise") + "\n")
        self._write(f"reasoning effort: {self.header['reasoning_effort']}; tools: {names}. "
                    "Ctrl-C stops a reply, Ctrl-D or /exit quits.\n")

    def loop(self) -> None:
        while True:
            try:
                text = input(PROMPT)
            except EOFError:
                self._write("\n")
                return
            except KeyboardInterrupt:  # like a shell: drop the line, ask again
                self._write("\n")
                continue
            if text.strip() in EXIT_COMMANDS:
                return
            if text.strip():
                self.turn(text)

    def turn(self, user_text: str) -> None:
        """One user message, then the assistant's messages and tool calls until it answers (or is stopped)."""
        from openai_harmony import Message, Role

        self.history.append(Message.from_role_and_content(Role.USER, user_text))
        while self._generate():
            try:
                self.history += self._run_tool(self.history[-1])
            except KeyboardInterrupt:  # the call stays unanswered; the model sees the next user turn
                self._write("\n" + self._style(_YELLOW, "[tool interrupted]") + "\n")
                return

    # -- one generation ------------------------------------------------------------------------------------

    def _generate(self) -> bool:
        """Samples the assistant's next messages; True when they end in a tool call to run."""
        from .. import harmony
        from ..server.conversation import Transcript, drop_stale_reasoning
        from ..server.streaming import CompletionParser

        prompt = harmony.render_prompt(drop_stale_reasoning(self.history), **self.header)
        if self._transcript is not None:
            prompt = self._transcript.apply(prompt)
        room = self.engine.max_context - len(prompt)
        if room <= 0:
            self._write(self._style(_YELLOW, f"[the conversation fills the context ({len(prompt)} tokens of "
                                             f"--max-context {self.engine.max_context}): start a new chat]") + "\n")
            return False
        stop = harmony.stop_tokens()
        parser = CompletionParser(stop)
        sampling = dataclasses.replace(self.sampling, seed=(self.sampling.seed + self._draws) % 2**64)
        self._draws += 1
        tokens = self.engine.generate(prompt, sampling, min(room, self.max_tokens or room), stop)
        completion: list[int] = []
        try:
            for token in tokens:
                completion.append(token)
                for kind, segment, delta in parser.feed(token):
                    self._show(kind, segment, delta)
            events = parser.finish()
        except KeyboardInterrupt:
            tokens.close()  # frees the engine's sequence
            self._write(self._style(_RESET, "") + "\n" + self._style(_YELLOW, "[interrupted]") + "\n")
            self.history += parser.messages
            return False
        for kind, segment, delta in events:
            self._show(kind, segment, delta)
        self.history += parser.messages
        if parser.stop_token is None:
            self._write(self._style(_YELLOW, "[stopped: token limit]") + "\n")
            return False
        last = parser.segments[-1] if parser.segments else None
        if last is None or not last.is_tool_call or parser.stop_token != _call_token():
            return False
        rendered = harmony.render_prompt(drop_stale_reasoning(self.history), **self.header)
        self._transcript = Transcript.after_call(prompt, completion, rendered) or self._transcript
        return True

    def _show(self, kind: str, segment: Segment, delta: str) -> None:
        hidden = segment.is_reasoning and not self.show_reasoning
        if kind == "open" and not hidden:
            if segment.is_tool_call:
                label = self._style(_CYAN, f"[tool call to {segment.recipient}]")
            elif segment.is_reasoning:
                label = self._style(_DIM, "[thinking]")
            else:
                label = self._style(_GREEN, "assistant:")
            self._write(label + "\n" + (_DIM if segment.is_reasoning and self.color else ""))
        elif kind == "delta" and not hidden:
            self._write(delta)
        elif kind == "close" and not hidden:
            self._write(self._style(_RESET, "") + "\n")

    def _run_tool(self, call: Message) -> list[Message]:
        from ..tools import dispatch, message_text

        results = dispatch(self.tools, call)
        browser = (call.recipient or "").startswith("browser.")
        for message in results:
            text = message_text(message)
            self._write(self._style(_MAGENTA, f"[{message.author.name} output]") + "\n")
            if browser and not self.show_browser_results:
                self._write(f"[{len(text)} characters of results fed to the model]\n")
            else:
                self._write(text.rstrip("\n") + "\n")
        return results

    # -- output --------------------------------------------------------------------------------------------

    def _style(self, code: str, text: str) -> str:
        return f"{code}{text}{_RESET}" if self.color else text

    def _write(self, text: str) -> None:
        self.out.write(text)
        self.out.flush()


def _call_token() -> int:
    from .. import harmony

    (token,) = harmony.get_encoding().encode("<|call|>", allowed_special={"<|call|>"})
    return token
