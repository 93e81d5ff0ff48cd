"""The prefix cache on the paths that should hit it: the server's tool loops and multi-turn requests, and the
chat command; plus ``cached_tokens`` in the APIs' usage, through the openai client.

The hit measurements play scripted harmony (a tiny random model never calls a tool) and apply the Engine's rule
to what the server actually sends: a generation leaves in its sequence the prompt and every generated token but
the last; a later prompt reuses the longest such token list it strictly extends. That the Engine follows this
rule, with results equal to fresh generations, is tests/test_prefix_cache.py's business.
"""

from __future__ import annotations

import argparse
import io
from collections.abc import Iterator, Sequence

import pytest
from gpt_oss_native.cli import chat, engine_from_args, generate, serve
from gpt_oss_native.cli.chat import ChatSession
from gpt_oss_native.engine import Engine, Generation
from gpt_oss_native.sampling import SamplingParams
from gpt_oss_native.server.app import create_app
from gpt_oss_native.tools import ApplyPatchTool
from openai_harmony import Author, Message, Role, ToolNamespaceConfig
from server_harness import (
    CALL_WEATHER,
    THINK_THEN_ANSWER,
    ScriptedEngine,
    ServerThread,
    harmony_tokens,
    openai_client,
)

WEATHER_TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
CHAT_WEATHER_TOOL = {"type": "function", "function": {k: v for k, v in WEATHER_TOOL.items() if k != "type"}}
ANSWER = "<|channel|>final<|message|>Sunny in Paris.<|return|>"


class CachingScriptedEngine(ScriptedEngine):
    """A ScriptedEngine that records, per generation, how many prompt tokens the Engine's prefix cache would
    hold (every finished generation stays cached: the pool is not the bound here), and reports it as the
    Engine does (``Generation.cached_tokens``)."""

    def __init__(self, scripts: Sequence[str]) -> None:
        super().__init__(scripts)
        self.cached: list[list[int]] = []
        self.hits: list[tuple[int, int]] = []  # (cached tokens, prompt tokens) per generation

    def generate(self, prompt_tokens, sampling, max_tokens, stop_tokens=None) -> Iterator[int]:
        prompt = list(prompt_tokens)
        reused = max((len(c) for c in self.cached if len(c) < len(prompt) and prompt[: len(c)] == c), default=0)
        self.hits.append((reused, len(prompt)))
        tokens = super().generate(prompt, sampling, max_tokens, stop_tokens)
        return Generation(lambda cached: self._record(prompt, tokens, reused, cached))

    def _record(self, prompt: list[int], tokens: Iterator[int], reused: int, cached: list[int]) -> Iterator[int]:
        cached[0] = reused
        played: list[int] = []
        try:
            for token in tokens:
                played.append(token)
                yield token
        finally:
            self.cached.append(prompt + played[:-1])

    def reuse_after_first(self) -> list[float]:
        """For each generation after the first: the share of its prompt found in the cache."""
        return [reused / total for reused, total in self.hits[1:]]


def serve_scripted(engine: ScriptedEngine, tool_factories=None) -> ServerThread:
    return ServerThread(create_app(engine, model_name="m", tool_factories=tool_factories))


def test_responses_function_call_loop_hits_and_the_next_user_turn_misses_after_reasoning():
    engine = CachingScriptedEngine([CALL_WEATHER, ANSWER, THINK_THEN_ANSWER])
    with serve_scripted(engine) as server:
        client = openai_client(server.base_url)
        first = client.responses.create(model="m", input="Weather in Paris?", tools=[WEATHER_TOOL])
        call = first.output[-1]
        second = client.responses.create(
            model="m", previous_response_id=first.id, tools=[WEATHER_TOOL],
            input=[{"type": "function_call_output", "call_id": call.call_id, "output": "sunny, 24 C"}],
        )
        client.responses.create(model="m", previous_response_id=second.id, input="Thanks!", tools=[WEATHER_TOOL])
    (first_cached, first_prompt), (call_cached, _), (next_cached, _) = engine.hits
    # The tool output's turn extends the call's sequence: everything but the <|call|> token is reused.
    assert first_cached == 0
    assert call_cached == len(engine.cached[0]) == first_prompt + len(harmony_tokens(CALL_WEATHER)) - 1
    # The next user turn drops the earlier turn's analysis (harmony's rule): it diverges where that began.
    assert next_cached == 0
    assert first.usage.input_tokens_details.cached_tokens == 0
    assert second.usage.input_tokens_details.cached_tokens == call_cached
    assert second.usage.input_tokens == engine.hits[1][1]  # the prompt, however much of it was cached


def test_responses_multi_turn_without_reasoning_hits():
    engine = CachingScriptedEngine(["<|channel|>final<|message|>Hi!<|return|>", ANSWER])
    with serve_scripted(engine) as server:
        client = openai_client(server.base_url)
        first = client.responses.create(model="m", input="Hello")
        client.responses.create(model="m", previous_response_id=first.id, input="Weather?")
    # <|return|> was never fed; history renders it as <|end|>, after which the new turn follows.
    assert engine.hits[1][0] == len(engine.cached[0])


class FakePython:
    name = "python"
    tool_config = ToolNamespaceConfig.python()

    def process(self, message: Message) -> list[Message]:
        return [Message.from_author_and_content(Author.new(Role.TOOL, "python"), "2\n")
                .with_recipient("assistant").with_channel(message.channel)]


def test_responses_builtin_tool_loop_hits():
    engine = CachingScriptedEngine([
        ("<|channel|>analysis<|message|>Compute it.<|end|>"
         "<|start|>assistant<|channel|>analysis to=python code<|message|>print(1+1)<|call|>"),
        "<|channel|>final<|message|>It is 2.<|return|>",
    ])
    with serve_scripted(engine, tool_factories={"python": FakePython}) as server:
        client = openai_client(server.base_url)
        response = client.responses.create(model="m", input="1+1?", tools=[{"type": "code_interpreter",
                                                                           "container": {"type": "auto"}}])
    assert response.output_text == "It is 2."
    assert engine.hits[1][0] == len(engine.cached[0])


def test_chat_completions_tool_loop_hits_only_when_the_reasoning_comes_back():
    engine = CachingScriptedEngine([CALL_WEATHER, ANSWER, ANSWER])
    with serve_scripted(engine) as server:
        client = openai_client(server.base_url)
        messages = [{"role": "user", "content": "Weather in Paris?"}]
        first = client.chat.completions.create(model="m", messages=messages, tools=[CHAT_WEATHER_TOOL])
        message = first.choices[0].message
        call = message.tool_calls[0]
        output = {"role": "tool", "tool_call_id": call.id, "content": "sunny, 24 C"}
        # As most clients do: the reasoning is not sent back, so the prompt diverges where it was.
        assistant = {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]}
        client.chat.completions.create(model="m", messages=[*messages, assistant, output], tools=[CHAT_WEATHER_TOOL])
        # With reasoning_content sent back, the prompt extends the call's sequence.
        assistant["reasoning_content"] = message.model_extra["reasoning_content"]
        third = client.chat.completions.create(model="m", messages=[*messages, assistant, output],
                                               tools=[CHAT_WEATHER_TOOL])
    assert [reused for reused, _ in engine.hits] == [0, 0, len(engine.cached[0])]
    assert third.usage.prompt_tokens_details.cached_tokens == len(engine.cached[0])
    assert third.usage.prompt_tokens == engine.hits[2][1]


def test_chat_command_tool_loop_hits_and_a_turn_after_reasoning_misses(tmp_path):
    patch = "*** Begin Patch\n*** Add File: hello.txt\n+hi\n*** End Patch"
    engine = CachingScriptedEngine([
        ("<|channel|>analysis<|message|>I will create the file.<|end|>"
         f"<|start|>assistant<|channel|>commentary to=functions.apply_patch code<|message|>{patch}<|call|>"),
        "<|channel|>final<|message|>Created hello.txt.<|return|>",
        "<|channel|>final<|message|>You are welcome.<|return|>",
        "<|channel|>final<|message|>Bye.<|return|>",
    ])
    session = ChatSession(engine, SamplingParams(temperature=0), tools=[ApplyPatchTool(tmp_path)],
                          out=io.StringIO(), color=False)
    session.turn("Create hello.txt")
    session.turn("Thanks")
    session.turn("Bye")
    reused = [r for r, _ in engine.hits]
    assert reused[1] == len(engine.cached[0])  # the tool output extends the call
    assert reused[2] == 0  # the analysis before the call is dropped once the turn has its final answer
    assert reused[3] == len(engine.cached[2])  # a turn after a reply without analysis


@pytest.mark.parametrize("command", [serve, chat, generate])
def test_no_prefix_cache_option(command, tiny_checkpoint):
    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    required = ["-p", "hi"] if command is generate else []
    assert parser.parse_args([str(tiny_checkpoint), *required]).prefix_cache is True
    args = parser.parse_args([str(tiny_checkpoint), *required, "--no-prefix-cache", "--max-context", "64"])
    with engine_from_args(args.model, args) as engine:
        assert engine.prefix_cache is False


def test_real_model_usage_reports_cached_tokens(tiny_checkpoint):
    """The tiny model over both endpoints: a reply of one token leaves exactly the prompt in the cache, which
    the next request's history extends."""
    with Engine(tiny_checkpoint, max_context=512, max_sequences=2, progress=False) as engine, \
            ServerThread(create_app(engine, model_name="tiny")) as server:
        client = openai_client(server.base_url)
        first = client.responses.create(model="tiny", input="Hello", max_output_tokens=1, temperature=0)
        history = [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": "Hi."},
                   {"role": "user", "content": "More?"}]
        second = client.responses.create(model="tiny", input=history, max_output_tokens=2, temperature=0)
        assert first.usage.input_tokens_details.cached_tokens == 0
        assert second.usage.input_tokens_details.cached_tokens == first.usage.input_tokens
        assert second.usage.input_tokens > first.usage.input_tokens

        messages = [{"role": "user", "content": "Hello"}]
        chat_first = client.chat.completions.create(model="tiny", messages=messages, max_tokens=1)
        chat_second = client.chat.completions.create(model="tiny", messages=history, max_tokens=1)
        assert chat_first.usage.prompt_tokens_details.cached_tokens == 0
        assert chat_second.usage.prompt_tokens_details.cached_tokens == chat_first.usage.prompt_tokens
        assert engine.stats.reused_tokens == first.usage.input_tokens + chat_first.usage.prompt_tokens
