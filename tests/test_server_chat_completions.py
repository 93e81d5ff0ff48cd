"""POST /v1/chat/completions and GET /v1/models through the official ``openai`` client, against a real uvicorn
server: scripted harmony for the reasoning / tool-call conversion, the tiny random model on the CPU backend
for real generation (seeds, concurrency). Wire formats are checked against the openai package's types."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading

import httpx
import openai
import pytest
from gpt_oss_native import harmony
from gpt_oss_native.engine import Engine
from gpt_oss_native.server.app import create_app
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from openai_harmony import (
    DeveloperContent,
    Message,
    Role,
    ToolDescription,
)
from server_harness import (
    CALL_WEATHER,
    MODEL,
    THINK_THEN_ANSWER,
    ScriptedEngine,
    ServerThread,
    free_port,
    openai_client,
    reference_prompt,
    same_conversation,
    scripted_server,
    wait_until,
    weather_call,
)

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


def raw_chunks(server: ServerThread, body: dict) -> list[dict]:
    """A streamed completion's chunks as raw JSON, each validated as a ChatCompletionChunk; ends at [DONE]."""
    chunks = []
    with httpx.stream("POST", server.base_url + "/chat/completions", json=body | {"stream": True},
                      timeout=60) as r:
        assert r.status_code == 200, r.read()
        data = [line.removeprefix("data: ") for line in r.iter_lines() if line.startswith("data: ")]
    assert data[-1] == "[DONE]"
    for item in data[:-1]:
        chunk = json.loads(item)
        ChatCompletionChunk.model_validate(chunk)
        chunks.append(chunk)
    return chunks


def test_streaming_reasoning_content_and_usage():
    with scripted_server(THINK_THEN_ANSWER) as (engine, server, _):
        chunks = raw_chunks(server, {"model": MODEL, "messages": [{"role": "user", "content": "hi"}],
                                     "stream_options": {"include_usage": True}})
    first, *middle, last, usage = chunks
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    deltas = [c["choices"][0]["delta"] for c in middle]
    assert all(c["choices"][0]["finish_reason"] is None for c in middle)
    assert "".join(d.get("reasoning_content", "") for d in deltas) == "The user greets me."
    assert "".join(d.get("content", "") for d in deltas) == "Hello there, friend!"
    assert sum("content" in d for d in deltas) > 1  # streams token by token
    assert last["choices"][0] == {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == len(
        harmony.get_encoding().encode(THINK_THEN_ANSWER, allowed_special="all"))
    expected = reference_prompt([Message.from_role_and_content(Role.USER, "hi")])
    assert engine.prompts == [expected]
    assert usage["usage"]["prompt_tokens"] == len(harmony.get_encoding().encode(expected, allowed_special="all"))
    assert len({c["id"] for c in chunks}) == 1


def test_non_streaming_message():
    with scripted_server(THINK_THEN_ANSWER) as (_, server, _client):
        raw = httpx.post(server.base_url + "/chat/completions", timeout=30,
                         json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}).json()
    completion = ChatCompletion.model_validate(raw)
    choice = completion.choices[0]
    assert choice.finish_reason == "stop" and choice.message.content == "Hello there, friend!"
    assert raw["choices"][0]["message"]["reasoning_content"] == "The user greets me."
    assert choice.message.tool_calls is None
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + completion.usage.completion_tokens


def test_tool_calls_streaming_non_streaming_and_follow_up():
    with scripted_server(CALL_WEATHER, CALL_WEATHER, "<|channel|>final<|message|>Sunny.<|return|>") as (
        engine, server, client,
    ):
        messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Weather in Paris?"}]
        chunks = raw_chunks(server, {"model": MODEL, "messages": messages, "tools": [WEATHER]})
        completion = client.chat.completions.create(model=MODEL, messages=messages, tools=[WEATHER])
        call = completion.choices[0].message.tool_calls[0]
        answer = client.chat.completions.create(
            model=MODEL, tools=[WEATHER],
            messages=[*messages,
                      {"role": "assistant", "content": None, "tool_calls": [call.model_dump()],
                       "reasoning_content": "Need the weather."},
                      {"role": "tool", "tool_call_id": call.id, "content": "sunny"}],
        )
    calls = [d for c in chunks for d in c["choices"][0]["delta"].get("tool_calls", [])]
    assert calls[0]["index"] == 0 and calls[0]["id"].startswith("call_") and calls[0]["type"] == "function"
    assert calls[0]["function"] == {"name": "get_weather", "arguments": ""}
    assert all(set(c) == {"index", "function"} for c in calls[1:])
    assert "".join(c["function"]["arguments"] for c in calls) == '{"city": "Paris"}'
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"

    assert completion.choices[0].finish_reason == "tool_calls"
    assert (call.function.name, call.function.arguments) == ("get_weather", '{"city": "Paris"}')
    assert answer.choices[0].message.content == "Sunny."
    developer = DeveloperContent.new().with_instructions("Be brief.").with_function_tools(
        [ToolDescription.new("get_weather", WEATHER["function"]["description"], WEATHER["function"]["parameters"])]
    )
    expected = reference_prompt(
        [
            Message.from_role_and_content(Role.USER, "Weather in Paris?"),
            Message.from_role_and_content(Role.ASSISTANT, "Need the weather.").with_channel("analysis"),
            *weather_call('{"city": "Paris"}', "sunny"),
        ],
        developer=developer,
    )
    assert same_conversation(engine.prompts[2], expected)


def test_named_tool_choice_forces_the_call():
    with scripted_server('{"city": "Oslo"}<|call|>') as (engine, _, client):
        completion = client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "Oslo?"}], tools=[WEATHER],
            tool_choice={"type": "function", "function": {"name": "get_weather"}})
    (call,) = completion.choices[0].message.tool_calls
    assert (call.function.name, call.function.arguments) == ("get_weather", '{"city": "Oslo"}')
    assert completion.choices[0].finish_reason == "tool_calls"
    assert engine.prompts[0].endswith(
        "<|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>")


def test_max_tokens_finishes_with_length_and_effort_is_rendered():
    with scripted_server(THINK_THEN_ANSWER) as (engine, _, client):
        completion = client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}], max_completion_tokens=5,
            reasoning_effort="low")
    assert completion.choices[0].finish_reason == "length" and completion.usage.completion_tokens == 5
    assert "Reasoning: low" in engine.prompts[0]


def test_max_tokens_inside_a_message_header_shows_no_header_text():
    cut = THINK_THEN_ANSWER.index("final<|message|>")  # the limit falls inside the answer's header
    limit = len(harmony.get_encoding().encode(THINK_THEN_ANSWER[:cut], allowed_special="all"))
    with scripted_server(THINK_THEN_ANSWER, THINK_THEN_ANSWER) as (_, server, client):
        messages = [{"role": "user", "content": "hi"}]
        completion = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=limit)
        chunks = raw_chunks(server, {"model": MODEL, "messages": messages, "max_tokens": limit})
    message = completion.choices[0].message
    assert (message.content, message.reasoning_content) == (None, "The user greets me.")
    assert completion.choices[0].finish_reason == "length"
    assert not any("content" in c["choices"][0]["delta"] for c in chunks[1:])


@pytest.mark.parametrize(
    ("stop", "content"),
    [
        ("there", "Hello "),  # a whole token
        (["o th", "zzz"], "Hell"),  # across two tokens: held back, then cut
        ("user greets", "Hello there, friend!"),  # only the answer is cut, not the reasoning
        (["!"], "Hello there, friend"),
    ],
)
def test_stop_strings_cut_the_content(stop, content):
    with scripted_server(THINK_THEN_ANSWER, THINK_THEN_ANSWER) as (_, server, client):
        messages = [{"role": "user", "content": "hi"}]
        completion = client.chat.completions.create(model=MODEL, messages=messages, stop=stop)
        chunks = raw_chunks(server, {"model": MODEL, "messages": messages, "stop": stop})
    assert completion.choices[0].message.content == content
    assert completion.choices[0].finish_reason == "stop"
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == content
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"model": "nope", "messages": [{"role": "user", "content": "hi"}]}, 404, "model"),
        ({"model": MODEL, "messages": []}, 400, "messages"),
        ({"model": MODEL, "messages": [{"role": "wizard", "content": "hi"}]}, 400, "messages[0].role"),
        ({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "n": 2}, 400, "n"),
        ({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stop": ["a", "b", "c", "d", "e"]}, 400,
         "stop"),
        ({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stop": [""]}, 400, "stop"),
        ({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "top_p": 0}, 400, "top_p"),
        ({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "reasoning_effort": "max"}, 400,
         "reasoning_effort"),
        ({"model": MODEL, "messages": [{"role": "tool", "tool_call_id": "x", "content": "y"}]}, 400,
         "messages[0].tool_call_id"),
        ({"model": MODEL, "messages": [{"role": "user", "content": "hi " * 3000}]}, 400, "messages"),
    ],
)
def test_bad_requests_get_openai_errors(body, status, param):
    with scripted_server(max_context=1024) as (_, server, _client):
        for stream in (False, True):
            r = httpx.post(server.base_url + "/chat/completions", json=body | {"stream": stream}, timeout=30)
            assert r.status_code == status, r.text
            error = r.json()["error"]
            assert set(error) == {"message", "type", "param", "code"} and error["param"] == param


def test_engine_failure_is_reported_not_crashed():
    with scripted_server(THINK_THEN_ANSWER, THINK_THEN_ANSWER, THINK_THEN_ANSWER, fail_after=5) as (
        engine, server, client,
    ):
        body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": True}
        with httpx.stream("POST", server.base_url + "/chat/completions", json=body, timeout=30) as r:
            data = [line.removeprefix("data: ") for line in r.iter_lines() if line.startswith("data: ")]
        with pytest.raises(openai.InternalServerError) as failed:
            client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
        engine.fail_after = None
        assert client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
    assert data[-1] == "[DONE]" and "device fell off" in json.loads(data[-2])["error"]["message"]
    assert failed.value.body["type"] == "server_error"


def test_models_endpoints():
    engine = ScriptedEngine()
    app = create_app(engine, model_name="gpt-oss-20b", model_aliases=["/models/gpt-oss-20b/original"])
    with ServerThread(app) as server:
        client = openai_client(server.base_url)
        assert [m.id for m in client.models.list()] == ["gpt-oss-20b"]
        assert client.models.retrieve("gpt-oss-20b").owned_by == "gpt-oss-native"
        with pytest.raises(openai.NotFoundError):
            client.models.retrieve("gpt-4o")
        assert httpx.get(f"http://127.0.0.1:{server.port}/health").json() == {"status": "ok"}


# ---------------------------------------------------------------------------------------------------------
# The tiny random model on the CPU backend


@pytest.fixture(scope="module")
def tiny(tiny_checkpoint):
    with Engine(tiny_checkpoint, max_context=512, max_sequences=2, progress=False) as engine:
        app = create_app(engine, model_name="gpt-oss-tiny")
        with ServerThread(app) as server:
            yield engine, openai_client(server.base_url)


def _ask(client, prompt: str, seed: int, stream: bool = False) -> tuple[str, int]:
    kwargs = {"model": "gpt-oss-tiny", "messages": [{"role": "user", "content": prompt}], "seed": seed,
              "max_tokens": 12, "temperature": 1.0}
    if not stream:
        c = client.chat.completions.create(**kwargs)
        return (c.choices[0].message.content or "") + "|" + (getattr(c.choices[0].message, "reasoning_content",
                                                                      None) or ""), c.usage.completion_tokens
    text = reasoning = ""
    usage = 0
    for chunk in client.chat.completions.create(**kwargs, stream=True, stream_options={"include_usage": True}):
        if chunk.usage:
            usage = chunk.usage.completion_tokens
        for choice in chunk.choices:
            text += choice.delta.content or ""
            reasoning += getattr(choice.delta, "reasoning_content", None) or ""
    return text + "|" + reasoning, usage


def test_real_model_seeds_repeat_and_stream_matches(tiny):
    _, client = tiny
    first = _ask(client, "Hello", seed=7)
    assert first[1] <= 12 and first[0] != "|"
    assert _ask(client, "Hello", seed=7) == first
    assert _ask(client, "Hello", seed=7, stream=True) == first
    assert _ask(client, "Hello", seed=8) != first


def test_real_model_concurrent_requests_with_distinct_seeds(tiny):
    engine, client = tiny
    jobs = [("alpha", 1), ("beta", 2), ("gamma", 3), ("delta", 4)]  # more requests than engine sequences
    sequential = [_ask(client, p, s) for p, s in jobs]
    results: dict[int, tuple[str, int]] = {}
    threads = [threading.Thread(target=lambda i=i: results.__setitem__(i, _ask(client, *jobs[i], stream=i % 2)))
               for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [results[i] for i in range(len(jobs))] == sequential
    assert engine.open_sequences == 0


def test_serve_command(tiny_checkpoint):
    """``gpt-oss-native serve`` as a user runs it: a process answering the openai client until stopped."""
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "gpt_oss_native.cli.main", "serve", str(tiny_checkpoint), "--port", str(port),
         "--max-context", "512", "--max-sequences", "2", "--no-browser", "--no-python", "--log-level", "warning"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, "NO_COLOR": "1"},
    )
    try:
        client = openai_client(f"http://127.0.0.1:{port}/v1")

        def up() -> bool:
            try:
                return httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=1).status_code == 200
            except httpx.HTTPError:
                return server.poll() is not None  # died: stop waiting, the asserts below say why

        assert wait_until(up, timeout=60)
        assert server.poll() is None, server.stdout.read()
        (model,) = client.models.list().data
        assert model.id == tiny_checkpoint.name
        completion = client.chat.completions.create(model=model.id, max_tokens=4,
                                                    messages=[{"role": "user", "content": "hi"}])
        assert completion.usage.completion_tokens == 4
        with pytest.raises(openai.BadRequestError) as refused:
            client.responses.create(model=model.id, input="hi", tools=[{"type": "code_interpreter"}])
        assert refused.value.body["code"] == "unsupported_tool"
    finally:
        server.terminate()
        output, _ = server.communicate(timeout=30)
    assert f"serving {tiny_checkpoint.name} on http://127.0.0.1:{port}/v1" in output
