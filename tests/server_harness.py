"""Test harness for the server: a uvicorn server on a free port in a thread, and a scripted engine.

The scripted engine yields pre-tokenised harmony text through the very code paths the real engine takes, so
the harmony → API conversion of tool calls, reasoning and text can be tested deterministically (a tiny random
model never calls a tool by itself); the real tiny model covers the plain generation flows. Also here: the
scripts, the openai client and the reference prompts (openai-harmony's own rendering) both endpoints' tests use.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Self

import openai
import uvicorn
from gpt_oss_native import harmony
from gpt_oss_native.sampling import SamplingParams
from gpt_oss_native.server.app import create_app
from openai_harmony import (
    Author,
    Conversation,
    DeveloperContent,
    Message,
    ReasoningEffort,
    Role,
    SystemContent,
)

MODEL = "gpt-oss-test"  # the name the scripted servers serve
THINK_THEN_ANSWER = (
    "<|channel|>analysis<|message|>The user greets me.<|end|>"
    "<|start|>assistant<|channel|>final<|message|>Hello there, friend!<|return|>"
)
CALL_WEATHER = (
    "<|channel|>analysis<|message|>Need the weather.<|end|>"
    '<|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{"city": "Paris"}'
    "<|call|>"
)


def harmony_tokens(text: str) -> list[int]:
    """``text`` (a completion after ``<|start|>assistant``, special tokens written out) as token ids."""
    return harmony.get_encoding().encode(text, allowed_special="all")


def decode(tokens: Sequence[int]) -> str:
    return harmony.get_encoding().decode(list(tokens))


class ScriptedEngine:
    """Stands in for ``Engine``: each ``generate`` call plays the next script (harmony text), honouring
    ``max_tokens`` and the stop tokens as the real engine does, and records the prompts it was given.

    ``script`` may also be a function of the prompt text, for concurrent requests. ``delay`` slows each token
    down; ``fail_after`` makes generation fail after that many tokens, as a broken device would.
    """

    def __init__(
        self,
        scripts: Sequence[str] | Callable[[str], str] = (),
        *,
        max_context: int = 4096,
        max_sequences: int = 4,
        delay: float = 0.0,
        fail_after: int | None = None,
    ) -> None:
        self.max_context = max_context
        self.fail_after = fail_after
        self.max_sequences = max_sequences
        self.delay = delay
        self._scripts = scripts if callable(scripts) else list(scripts)
        self.prompts: list[str] = []
        self._lock = threading.Lock()
        self._open = 0

    @property
    def open_sequences(self) -> int:
        with self._lock:
            return self._open

    def generate(
        self,
        prompt_tokens: Sequence[int],
        sampling: SamplingParams,
        max_tokens: int,
        stop_tokens: Sequence[int] | None = None,
    ) -> Iterator[int]:
        assert isinstance(sampling, SamplingParams)
        prompt = decode(prompt_tokens)
        with self._lock:
            self.prompts.append(prompt)
            if callable(self._scripts):
                script = self._scripts(prompt)
            else:
                assert self._scripts, "the scripted engine ran out of scripts"
                script = self._scripts.pop(0)
        return self._play(harmony_tokens(script), max_tokens, set(stop_tokens or ()))

    def _play(self, tokens: list[int], max_tokens: int, stops: set[int]) -> Iterator[int]:
        with self._lock:
            if self._open >= self.max_sequences:
                raise RuntimeError("all sequences are in use")
            self._open += 1
        try:
            for count, token in enumerate(tokens[:max_tokens]):
                if count == self.fail_after:
                    raise RuntimeError("the device fell off the bus")
                if self.delay:
                    time.sleep(self.delay)
                yield token
                if token in stops:
                    return
        finally:
            with self._lock:
                self._open -= 1


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerThread:
    """Runs ``app`` with uvicorn on 127.0.0.1 in a daemon thread (a context manager)."""

    def __init__(self, app) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="off")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)


def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


def openai_client(base_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0)


@contextmanager
def scripted_server(*scripts: str, tool_factories=None, **engine_options):
    """A server of a ScriptedEngine playing ``scripts`` as MODEL: yields (engine, server, openai client)."""
    engine = ScriptedEngine(list(scripts), **engine_options)
    with ServerThread(create_app(engine, model_name=MODEL, tool_factories=tool_factories)) as server:
        yield engine, server, openai_client(server.base_url)


def reference_prompt(
    messages: list[Message],
    *,
    effort: ReasoningEffort = ReasoningEffort.MEDIUM,
    developer: DeveloperContent | None = None,
    builtin=(),
) -> str:
    """The prompt openai-harmony itself renders for a conversation (the independent reference)."""
    system = SystemContent.new().with_reasoning_effort(effort).with_conversation_start_date(
        time.strftime("%Y-%m-%d"))
    for namespace in builtin:
        system = system.with_tools(namespace)
    header = [Message.from_role_and_content(Role.SYSTEM, system)]
    if developer is not None:
        header.append(Message.from_role_and_content(Role.DEVELOPER, developer))
    tokens = harmony.get_encoding().render_conversation_for_completion(
        Conversation.from_messages(header + messages), Role.ASSISTANT)
    return decode(tokens)


def same_conversation(prompt: str, expected: str) -> bool:
    """Whether two prompts (ending in ``<|start|>assistant``) spell the same messages. The server continues from
    the tokens the model wrote for its tool calls, whose header order may differ from openai-harmony's rendering
    (``<|channel|>commentary to=functions.f`` vs ``to=functions.f<|channel|>commentary``)."""
    suffix = "<|start|>assistant"
    if not (prompt.endswith(suffix) and expected.endswith(suffix)):
        return False
    encoding = harmony.get_encoding()
    return encoding.parse_messages_from_completion_tokens(harmony_tokens(prompt.removesuffix(suffix)), None) == (
        encoding.parse_messages_from_completion_tokens(harmony_tokens(expected.removesuffix(suffix)), None))


def weather_call(arguments: str, output: str) -> list[Message]:
    """The assistant's call to ``functions.get_weather`` and the tool's reply, built with openai-harmony alone."""
    return [
        Message.from_role_and_content(Role.ASSISTANT, arguments).with_channel("commentary")
        .with_recipient("functions.get_weather").with_content_type("<|constrain|>json"),
        Message.from_author_and_content(Author.new(Role.TOOL, "functions.get_weather"), output)
        .with_channel("commentary").with_recipient("assistant"),
    ]
