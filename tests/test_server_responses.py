"""POST /v1/responses through the official ``openai`` client against a real uvicorn server.

Two engines: a scripted one that plays pre-tokenised harmony text (tool calls, reasoning, built-in tools:
the harmony → API conversion, deterministic) and the tiny random checkpoint on the CPU backend (the real
generation path: streaming, limits, disconnects, concurrency). Wire formats are checked against the openai
package's own types (strict validation of the raw JSON), prompts against openai-harmony's own rendering.
"""

from __future__ import annotations

import json
import threading

import httpx
import openai
import pytest
from gpt_oss_native import harmony
from gpt_oss_native.engine import Engine
from gpt_oss_native.server.app import create_app
from gpt_oss_native.server.store import ResponseStore, StoredResponse
from gpt_oss_native.tools import PythonTool
from gpt_oss_native.tools.browser import BrowserTool, Document, LocalBackend, SearchIndex
from openai.types.responses import Response, ResponseStreamEvent
from openai_harmony import (
    Author,
    DeveloperContent,
    Message,
    ReasoningEffort,
    Role,
    ToolDescription,
    ToolNamespaceConfig,
)
from pydantic import TypeAdapter
from server_harness import (
    CALL_WEATHER,
    MODEL,
    THINK_THEN_ANSWER,
    ServerThread,
    openai_client,
    reference_prompt,
    same_conversation,
    scripted_server,
    wait_until,
    weather_call,
)

EVENT = TypeAdapter(ResponseStreamEvent)
WEATHER_TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": "Current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


def raw_events(server: ServerThread, body: dict) -> list[dict]:
    """The SSE stream of a request as raw JSON events, each checked against the openai event types and its
    ``event:`` line."""
    events = []
    with httpx.stream("POST", server.base_url + "/responses", json=body | {"stream": True}, timeout=60) as r:
        assert r.status_code == 200, r.read()
        assert r.headers["content-type"].startswith("text/event-stream")
        name = None
        for line in r.iter_lines():
            if line.startswith("event: "):
                name = line.removeprefix("event: ")
            elif line.startswith("data: "):
                event = json.loads(line.removeprefix("data: "))
                assert event["type"] == name
                EVENT.validate_python(event)
                events.append(event)
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    return events


def _types(events: list[dict]) -> list[str]:
    return [e["type"] for e in events]


# ---------------------------------------------------------------------------------------------------------
# Scripted engine: the harmony → Responses conversion


def test_streaming_text_and_reasoning_event_sequence():
    with scripted_server(THINK_THEN_ANSWER) as (engine, server, _client):
        events = raw_events(server, {"model": MODEL, "input": "hi"})
    assert _types(events) == [
        "response.created", "response.in_progress",
        "response.output_item.added", "response.content_part.added",
        *["response.reasoning_text.delta"] * _count(events, "response.reasoning_text.delta"),
        "response.reasoning_text.done", "response.content_part.done", "response.output_item.done",
        "response.output_item.added", "response.content_part.added",
        *["response.output_text.delta"] * _count(events, "response.output_text.delta"),
        "response.output_text.done", "response.content_part.done", "response.output_item.done",
        "response.completed",
    ]
    assert _count(events, "response.output_text.delta") > 1  # it streams, token by token
    reasoning = "".join(e["delta"] for e in events if e["type"] == "response.reasoning_text.delta")
    text = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
    assert reasoning == "The user greets me." and text == "Hello there, friend!"
    done = [e for e in events if e["type"] == "response.output_item.done"]
    assert [d["output_index"] for d in done] == [0, 1]
    assert done[0]["item"]["content"] == [{"type": "reasoning_text", "text": reasoning}]
    assert done[1]["item"]["status"] == "completed" and done[1]["item"]["content"][0]["text"] == text
    final = Response.model_validate(events[-1]["response"])
    assert final.status == "completed" and final.output_text == text
    assert [item.id for item in final.output] == [d["item"]["id"] for d in done]
    # usage: the prompt as harmony renders it, every generated token counted
    prompt = reference_prompt([Message.from_role_and_content(Role.USER, "hi")])
    assert engine.prompts == [prompt]
    assert final.usage.input_tokens == len(harmony.get_encoding().encode(prompt, allowed_special="all"))
    assert final.usage.output_tokens == len(harmony.get_encoding().encode(THINK_THEN_ANSWER, allowed_special="all"))
    assert 0 < final.usage.output_tokens_details.reasoning_tokens < final.usage.output_tokens


def _count(events: list[dict], kind: str) -> int:
    return sum(e["type"] == kind for e in events)


def test_non_streaming_response_and_get_by_id():
    with scripted_server(THINK_THEN_ANSWER) as (_, server, client):
        posted = httpx.post(f"{server.base_url}/responses", timeout=30,
                            json={"model": MODEL, "input": "hi", "temperature": 0.5, "top_p": 0.9}).json()
        response = Response.model_validate(posted)
        fetched = client.responses.retrieve(response.id)
        assert httpx.get(f"{server.base_url}/responses/{response.id}").json() == posted
        missing = httpx.get(f"{server.base_url}/responses/resp_nope")
    assert fetched == response
    assert response.status == "completed" and response.output_text == "Hello there, friend!"
    assert [item.type for item in response.output] == ["reasoning", "message"]
    assert response.output[0].content[0].text == "The user greets me."
    assert (response.temperature, response.top_p, response.model) == (0.5, 0.9, MODEL)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"


def test_function_call_streaming_and_multi_turn_tool_use():
    with scripted_server(CALL_WEATHER, "<|channel|>final<|message|>Sunny in Paris.<|return|>") as (
        engine, server, client,
    ):
        events = raw_events(server, {"model": MODEL, "input": "Weather in Paris?", "tools": [WEATHER_TOOL],
                                     "instructions": "Be brief."})
        call_events = [e for e in events if e["type"].startswith("response.function_call_arguments")]
        assert _types(events)[-5:] == [
            "response.output_item.done",  # the reasoning
            "response.output_item.added",
            *["response.function_call_arguments.delta"] * (len(call_events) - 1),
            "response.function_call_arguments.done", "response.output_item.done", "response.completed",
        ][-5:]
        added = next(e for e in events if e["type"] == "response.output_item.added"
                     and e["item"]["type"] == "function_call")
        assert added["item"]["status"] == "in_progress" and added["item"]["arguments"] == ""
        arguments = "".join(e["delta"] for e in call_events if e["type"].endswith(".delta"))
        assert arguments == '{"city": "Paris"}' == call_events[-1]["arguments"]
        final = Response.model_validate(events[-1]["response"])
        call = final.output[-1]
        assert (call.type, call.name, call.arguments, call.status) == ("function_call", "get_weather",
                                                                       arguments, "completed")
        assert call.call_id.startswith("call_") and call.id == added["item"]["id"]
        # The client runs the function and sends everything back (stateless, as Codex does).
        history = [{"role": "user", "content": "Weather in Paris?"},
                   *[item.model_dump(exclude_none=True) for item in final.output],
                   {"type": "function_call_output", "call_id": call.call_id, "output": "sunny, 24 C"}]
        answer = client.responses.create(model=MODEL, input=history, tools=[WEATHER_TOOL], store=False,
                                         instructions="Be brief.")
    assert answer.output_text == "Sunny in Paris."
    developer = DeveloperContent.new().with_instructions("Be brief.").with_function_tools(
        [ToolDescription.new("get_weather", WEATHER_TOOL["description"], WEATHER_TOOL["parameters"])]
    )
    expected = reference_prompt(
        [
            Message.from_role_and_content(Role.USER, "Weather in Paris?"),
            Message.from_role_and_content(Role.ASSISTANT, "Need the weather.").with_channel("analysis"),
            *weather_call('{"city": "Paris"}', "sunny, 24 C"),
        ],
        developer=developer,
    )
    assert same_conversation(engine.prompts[1], expected)


@pytest.mark.parametrize("keep_phase", [True, False])
def test_preamble_before_a_call_round_trips_as_commentary(keep_phase):
    preamble_then_call = (
        "<|channel|>analysis<|message|>Think.<|end|>"
        "<|start|>assistant<|channel|>commentary<|message|>Let me check.<|end|>"
        '<|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{"city": "Rome"}'
        "<|call|>"
    )
    with scripted_server(preamble_then_call, "<|channel|>final<|message|>Warm.<|return|>") as (engine, _, client):
        first = client.responses.create(model=MODEL, input="Rome?", tools=[WEATHER_TOOL])
        _reasoning, preamble, call = first.output
        assert (preamble.type, preamble.phase, preamble.content[0].text) == ("message", "commentary",
                                                                              "Let me check.")
        items = [item.model_dump(exclude_none=True) for item in first.output]
        if not keep_phase:
            del items[1]["phase"]  # a client that drops it: the call that follows tells
        client.responses.create(model=MODEL, tools=[WEATHER_TOOL], store=False, input=[
            {"role": "user", "content": "Rome?"}, *items,
            {"type": "function_call_output", "call_id": call.call_id, "output": "28 C"}])
    expected = reference_prompt(
        [
            Message.from_role_and_content(Role.USER, "Rome?"),
            Message.from_role_and_content(Role.ASSISTANT, "Think.").with_channel("analysis"),
            Message.from_role_and_content(Role.ASSISTANT, "Let me check.").with_channel("commentary"),
            *weather_call('{"city": "Rome"}', "28 C"),
        ],
        developer=DeveloperContent.new().with_function_tools(
            [ToolDescription.new("get_weather", WEATHER_TOOL["description"], WEATHER_TOOL["parameters"])]),
    )
    assert same_conversation(engine.prompts[1], expected)


@pytest.mark.parametrize(
    ("tool_choice", "forced", "script"),
    [
        ({"type": "function", "name": "get_weather"},
         "<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>", '{"city": "Oslo"}<|call|>'),
        ("required", "<|channel|>commentary to=functions.",
         'get_weather <|constrain|>json<|message|>{"city": "Oslo"}<|call|>'),
    ],
)
def test_tool_choice_forces_a_function_call(tool_choice, forced, script):
    with scripted_server(script) as (engine, _, client):
        response = client.responses.create(model=MODEL, input="Oslo?", tools=[WEATHER_TOOL],
                                           tool_choice=tool_choice)
    (call,) = response.output
    assert (call.type, call.name, call.arguments) == ("function_call", "get_weather", '{"city": "Oslo"}')
    assert engine.prompts[0].endswith("<|start|>assistant" + forced)  # the model continues the forced start
    assert response.usage.output_tokens == len(harmony.get_encoding().encode(script, allowed_special="all"))


def test_reasoning_round_trips_through_encrypted_content_as_codex_sends_it():
    with scripted_server(CALL_WEATHER, "<|channel|>final<|message|>Sunny.<|return|>") as (engine, _, client):
        first = client.responses.create(model=MODEL, input="Weather?", tools=[WEATHER_TOOL], store=False,
                                        include=["reasoning.encrypted_content"])
        reasoning, call = first.output
        assert reasoning.encrypted_content and "Need the weather." not in reasoning.encrypted_content
        # Codex sends reasoning back without its text: only the summary and the encrypted content.
        returned = {"type": "reasoning", "summary": [], "encrypted_content": reasoning.encrypted_content}
        client.responses.create(model=MODEL, tools=[WEATHER_TOOL], store=False, input=[
            {"role": "user", "content": "Weather?"}, returned, call.model_dump(exclude_none=True),
            {"type": "function_call_output", "call_id": call.call_id, "output": "sunny"}])
        with pytest.raises(openai.BadRequestError):
            client.responses.create(model=MODEL, input=[
                {"type": "reasoning", "summary": [], "encrypted_content": "gpt-oss-native.reasoning.v1:%%%"}])
    assert "<|channel|>analysis<|message|>Need the weather.<|end|>" in engine.prompts[1]


def test_previous_response_id_continues_the_conversation():
    with scripted_server(THINK_THEN_ANSWER, CALL_WEATHER, "<|channel|>final<|message|>Sunny.<|return|>") as (
        engine, _server, client,
    ):
        first = client.responses.create(model=MODEL, input="hi")
        second = client.responses.create(model=MODEL, input="Weather?", previous_response_id=first.id,
                                         tools=[WEATHER_TOOL])
        call = second.output[-1]
        third = client.responses.create(
            model=MODEL, previous_response_id=second.id,
            input=[{"type": "function_call_output", "call_id": call.call_id, "output": "sunny"}],
        )
        with pytest.raises(openai.NotFoundError) as unknown:
            client.responses.create(model=MODEL, input="x", previous_response_id="resp_unknown")
    assert third.output_text == "Sunny." and third.previous_response_id == second.id
    assert unknown.value.body["code"] == "previous_response_not_found"
    # The finished first turn's reasoning is dropped, the final answer kept; the call and its output follow.
    expected = reference_prompt([
        Message.from_role_and_content(Role.USER, "hi"),
        Message.from_role_and_content(Role.ASSISTANT, "Hello there, friend!").with_channel("final"),
        Message.from_role_and_content(Role.USER, "Weather?"),
        Message.from_role_and_content(Role.ASSISTANT, "Need the weather.").with_channel("analysis"),
        *weather_call('{"city": "Paris"}', "sunny"),
    ])
    assert engine.prompts[2] == expected


def test_store_false_is_not_retrievable():
    with scripted_server(THINK_THEN_ANSWER, THINK_THEN_ANSWER) as (_, server, client):
        response = client.responses.create(model=MODEL, input="hi", store=False)
        assert httpx.get(f"{server.base_url}/responses/{response.id}").status_code == 404
        with pytest.raises(openai.NotFoundError):
            client.responses.create(model=MODEL, input="again", previous_response_id=response.id)


def test_reasoning_effort_input_messages_and_instructions_render_as_harmony():
    with scripted_server(THINK_THEN_ANSWER) as (engine, _, client):
        client.responses.create(
            model=MODEL,
            reasoning={"effort": "high"},
            instructions="Answer in French.",
            input=[
                {"role": "developer", "content": "Never use emoji."},
                {"role": "user", "content": [{"type": "input_text", "text": "Bonjour"}]},
                {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Salut"}]},
                {"type": "reasoning", "id": "rs_1", "summary": [],
                 "content": [{"type": "reasoning_text", "text": "old thoughts"}]},
                {"role": "user", "content": "Ça va ?"},
            ],
        )
    expected = reference_prompt(
        [
            Message.from_role_and_content(Role.USER, "Bonjour"),
            Message.from_role_and_content(Role.ASSISTANT, "Salut").with_channel("final"),
            Message.from_role_and_content(Role.ASSISTANT, "old thoughts").with_channel("analysis"),
            Message.from_role_and_content(Role.USER, "Ça va ?"),
        ],
        effort=ReasoningEffort.HIGH,
        developer=DeveloperContent.new().with_instructions("Answer in French.\n\nNever use emoji."),
    )
    assert engine.prompts == [expected]


def test_max_output_tokens_gives_an_incomplete_response():
    cut = THINK_THEN_ANSWER.index(" there")  # the limit falls inside the final answer
    limit = len(harmony.get_encoding().encode(THINK_THEN_ANSWER[:cut], allowed_special="all"))
    with scripted_server(THINK_THEN_ANSWER, THINK_THEN_ANSWER) as (_, server, client):
        response = client.responses.create(model=MODEL, input="hi", max_output_tokens=limit)
        events = raw_events(server, {"model": MODEL, "input": "hi", "max_output_tokens": limit})
    assert response.status == "incomplete"
    assert response.incomplete_details.reason == "max_output_tokens"
    assert response.usage.output_tokens == limit
    reasoning, message = response.output
    assert reasoning.content[0].text == "The user greets me."
    assert message.type == "message" and message.status == "incomplete" and response.output_text == "Hello"
    assert events[-1]["type"] == "response.incomplete"
    streamed = Response.model_validate(events[-1]["response"])
    assert [(i.type, i.status, _text(i)) for i in streamed.output] == [
        (i.type, i.status, _text(i)) for i in response.output]
    assert Response.model_validate(events[-1]["response"]).status == "incomplete"


def tool_message(author: str, text: str, call: Message) -> Message:
    return (Message.from_author_and_content(Author.new(Role.TOOL, author), text).with_recipient("assistant")
            .with_channel(call.channel))


class FakePython:
    name = "python"
    tool_config = ToolNamespaceConfig.python()

    def process(self, message: Message) -> list[Message]:
        code = message.content[0].text
        return [tool_message("python", "2\n" if code == "print(1+1)" else "?", message)]


def test_code_interpreter_runs_server_side():
    script_call = "<|channel|>analysis to=python code<|message|>print(1+1)<|call|>"
    answer = "<|channel|>final<|message|>It is 2.<|return|>"
    with scripted_server(script_call, answer, tool_factories={"python": FakePython}) as (engine, server, _):
        events = raw_events(server, {"model": MODEL, "input": "1+1?", "tools": [{"type": "code_interpreter",
                                                                              "container": {"type": "auto"}}]})
    kinds = _types(events)
    start = kinds.index("response.output_item.added")
    assert kinds[start:start + 2] == ["response.output_item.added", "response.code_interpreter_call.in_progress"]
    end = kinds.index("response.code_interpreter_call.completed")
    assert kinds[end - 2:end + 2] == [
        "response.code_interpreter_call_code.done", "response.code_interpreter_call.interpreting",
        "response.code_interpreter_call.completed", "response.output_item.done",
    ]
    code = "".join(e["delta"] for e in events if e["type"] == "response.code_interpreter_call_code.delta")
    assert code == "print(1+1)"
    final = Response.model_validate(events[-1]["response"])
    call, _message = final.output
    assert call.type == "code_interpreter_call" and call.code == "print(1+1)" and call.status == "completed"
    assert call.outputs[0].logs == "2\n"
    assert final.output_text == "It is 2."
    # the tool's output went back to the model, in the conversation, with python declared in the system message
    expected = reference_prompt(
        [
            Message.from_role_and_content(Role.USER, "1+1?"),
            Message.from_role_and_content(Role.ASSISTANT, "print(1+1)").with_channel("analysis")
            .with_recipient("python").with_content_type("code"),
            Message.from_author_and_content(Author.new(Role.TOOL, "python"), "2\n").with_channel("analysis")
            .with_recipient("assistant"),
        ],
        builtin=[ToolNamespaceConfig.python()],
    )
    assert same_conversation(engine.prompts[1], expected)


def test_web_search_runs_server_side_with_citations():
    """The real browser tool over a local index (no internet): search, open, then a cited answer."""
    browsers = []

    def browser():
        index = SearchIndex([Document(url="file:///docs/paris.txt", title="Paris weather",
                                      text="Paris today: sunny, 24 C.\nTomorrow: rain.")])
        browsers.append(BrowserTool(LocalBackend(index)))
        return browsers[-1]

    scripts = [
        '<|channel|>analysis to=browser.search <|constrain|>json<|message|>{"query": "paris weather"}<|call|>',
        '<|channel|>analysis to=browser.open <|constrain|>json<|message|>{"id": 0}<|call|>',
        "<|channel|>final<|message|>Sunny, 24 C 【1†L1-L2】 today.<|return|>",
    ]
    with scripted_server(*scripts, tool_factories={"browser": browser}) as (engine, server, _):
        events = raw_events(server, {"model": MODEL, "input": "Weather?", "tools": [{"type": "web_search"}]})
    kinds = _types(events)
    start = kinds.index("response.web_search_call.in_progress") - 1
    assert kinds[start:start + 5] == [
        "response.output_item.added", "response.web_search_call.in_progress",
        "response.web_search_call.searching", "response.web_search_call.completed", "response.output_item.done",
    ]
    final = Response.model_validate(events[-1]["response"])
    search, opened, message = final.output
    assert (search.type, search.status, search.action.type, search.action.query) == (
        "web_search_call", "completed", "search", "paris weather")
    assert (opened.action.type, opened.action.url) == ("open_page", "file:///docs/paris.txt")
    # the citation became a link with its annotation, streamed consistently
    text = message.content[0].text
    assert "【" not in text and "file:///docs/paris.txt" in text and text.startswith("Sunny, 24 C")
    assert "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta") == text
    (annotation,) = message.content[0].annotations
    assert annotation.url == "file:///docs/paris.txt" and text[annotation.start_index:annotation.end_index].strip()
    added = [e for e in events if e["type"] == "response.output_text.annotation.added"]
    assert [a["annotation"] for a in added] == [annotation.model_dump(exclude_none=True)]
    # the tool's pages went back to the model, with the browser declared in the system message
    assert "## browser" in engine.prompts[0]
    assert "<|start|>browser.search to=assistant" in engine.prompts[1] and "Paris today" in engine.prompts[2]


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"model": "gpt-4o", "input": "hi"}, 404, "model"),
        ({"model": MODEL}, 400, "input"),
        ({"model": MODEL, "input": "hi", "temperature": 3}, 400, "temperature"),
        ({"model": MODEL, "input": "hi", "max_output_tokens": 0}, 400, "max_output_tokens"),
        ({"model": MODEL, "input": "hi", "reasoning": {"effort": "extreme"}}, 400, "reasoning.effort"),
        ({"model": MODEL, "input": "hi", "tools": [{"type": "file_search"}]}, 400, "tools[0]"),
        ({"model": MODEL, "input": "hi", "tools": [{"type": "code_interpreter"}]}, 400, "tools[0].type"),
        ({"model": MODEL, "input": "hi", "tool_choice": "required"}, 400, "tool_choice"),
        ({"model": MODEL, "input": "hi", "background": True}, 400, "background"),
        ({"model": MODEL, "input": "hi", "tools": [WEATHER_TOOL], "tool_choice": {"type": "function", "name": "x"}},
         400, "tool_choice"),
        ({"model": MODEL, "input": [{"type": "function_call_output", "call_id": "nope", "output": "x"}]}, 400,
         "input[0].call_id"),
        ({"model": MODEL, "input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]},
         400, "input[0].content[0]"),
        ({"model": MODEL, "input": "word " * 5000}, 400, "input"),
    ],
)
def test_bad_requests_get_openai_errors(body, status, param):
    with scripted_server(max_context=2048) as (_, server, _client):
        for stream in (False, True):
            r = httpx.post(server.base_url + "/responses", json=body | {"stream": stream}, timeout=30)
            assert r.status_code == status, r.text
            error = r.json()["error"]
            assert set(error) == {"message", "type", "param", "code"}
            assert error["param"] == param and error["message"]
        if param == "input" and "word" in str(body):
            assert error["code"] == "context_length_exceeded"


def test_malformed_bodies_get_400():
    with scripted_server() as (_, server, _client):
        for content in (b"{not json", b"[]", b'{"input": 3}', b""):
            r = httpx.post(server.base_url + "/responses", content=content,
                           headers={"content-type": "application/json"})
            assert r.status_code == 400, (content, r.text)
            assert r.json()["error"]["type"] == "invalid_request_error"
        form = httpx.post(server.base_url + "/responses", data={"input": "hi"})
        assert form.status_code == 400 and "must be a JSON object" in form.json()["error"]["message"]
        assert httpx.get(server.base_url + "/nowhere").json()["error"]["code"] == "not_found"
        assert httpx.put(server.base_url + "/responses").status_code == 405


def test_engine_failure_is_reported_not_crashed():
    with scripted_server(THINK_THEN_ANSWER, THINK_THEN_ANSWER, THINK_THEN_ANSWER, fail_after=5) as (
        engine, server, client,
    ):
        events = raw_events(server, {"model": MODEL, "input": "hi"})
        with pytest.raises(openai.InternalServerError) as failed:
            client.responses.create(model=MODEL, input="hi")
        engine.fail_after = None
        assert client.responses.create(model=MODEL, input="hi").status == "completed"  # the server lives on
    assert events[-1]["type"] == "response.failed"
    response = Response.model_validate(events[-1]["response"])
    assert response.status == "failed" and "device fell off" in response.error.message
    assert failed.value.body["type"] == "server_error" and "device fell off" in failed.value.body["message"]


def test_non_streaming_client_that_leaves_frees_its_sequence():
    slow = "<|channel|>final<|message|>" + "word " * 400 + "<|return|>"
    with scripted_server(slow, THINK_THEN_ANSWER, delay=0.02, max_sequences=1) as (engine, server, client):
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(server.base_url + "/responses", json={"model": MODEL, "input": "hi"}, timeout=0.5)
        assert wait_until(lambda: engine.open_sequences == 0, timeout=3), "the abandoned request kept generating"
        assert client.responses.create(model=MODEL, input="hi").status == "completed"


def test_streaming_client_that_leaves_stops_generation_early():
    slow = "<|channel|>final<|message|>" + "word " * 400 + "<|return|>"  # 8 s at 20 ms a token
    with scripted_server(slow, THINK_THEN_ANSWER, delay=0.02, max_sequences=1) as (engine, server, client):
        with httpx.stream("POST", server.base_url + "/responses", timeout=30,
                          json={"model": MODEL, "input": "hi", "stream": True}) as r:
            deltas = 0
            for line in r.iter_lines():
                deltas += line.startswith("event: response.output_text.delta")
                if deltas == 3:
                    break
        assert wait_until(lambda: engine.open_sequences == 0, timeout=2), "the stream went on without its client"
        assert client.responses.create(model=MODEL, input="hi").status == "completed"


def test_delete_and_store_bound():
    with scripted_server(THINK_THEN_ANSWER) as (_, server, client):
        response = client.responses.create(model=MODEL, input="hi")
        client.responses.delete(response.id)
        assert httpx.get(f"{server.base_url}/responses/{response.id}").status_code == 404
        assert httpx.delete(f"{server.base_url}/responses/{response.id}").status_code == 404
    store = ResponseStore(capacity=2)
    for name in ("a", "b", "c"):
        store.put(name, StoredResponse({"id": name}, [], {}))
        store.get("a")  # recently used: kept
    assert (store.get("a"), store.get("b"), len(store)) == (StoredResponse({"id": "a"}, [], {}), None, 2)


def test_code_interpreter_with_the_real_sandbox():
    try:
        PythonTool()
    except Exception as e:  # noqa: BLE001 - whatever keeps the sandbox from running here
        pytest.skip(f"the python sandbox does not work here: {e}")
    call = "<|channel|>analysis to=python code<|message|>print(6 * 7)<|call|>"
    with scripted_server(call, "<|channel|>final<|message|>42<|return|>",
                         tool_factories={"python": PythonTool}) as (engine, _, client):
        response = client.responses.create(model=MODEL, input="6*7?", tools=[{"type": "code_interpreter"}])
    run, answer = response.output
    assert run.outputs[0].logs.strip() == "42" and answer.content[0].text == "42"
    assert "42" in engine.prompts[1].split("<|start|>python to=assistant")[1]


# ---------------------------------------------------------------------------------------------------------
# The tiny random model on the CPU backend: the real generation path


@pytest.fixture(scope="module")
def tiny_engine(tiny_checkpoint):
    with Engine(tiny_checkpoint, max_context=512, max_sequences=3, progress=False) as engine:
        yield engine


@pytest.fixture(scope="module")
def tiny_server(tiny_engine):
    app = create_app(tiny_engine, model_name="gpt-oss-tiny", model_aliases=["tiny"])
    with ServerThread(app) as server:
        yield server, openai_client(server.base_url)


def test_real_model_streaming_equals_non_streaming(tiny_server):
    server, client = tiny_server
    body = {"model": "tiny", "input": "Why is the sky blue?", "temperature": 0, "max_output_tokens": 24}
    response = client.responses.create(**body)
    events = raw_events(server, body)
    final = Response.model_validate(events[-1]["response"])
    assert response.model == "gpt-oss-tiny"
    assert response.usage.output_tokens == final.usage.output_tokens <= 24
    assert response.status in ("completed", "incomplete")
    streamed = "".join(e["delta"] for e in events if e["type"] in ("response.output_text.delta",
                                                                 "response.reasoning_text.delta"))
    texts = [c.text for item in final.output for c in (item.content or [])]
    assert streamed == "".join(texts)
    assert [_text(item) for item in response.output] == [_text(item) for item in final.output]  # greedy


def _text(item) -> str:
    return "".join(c.text for c in (item.content or []))


def test_real_model_client_disconnect_frees_the_sequence(tiny_server, tiny_engine):
    server, client = tiny_server
    body = {"model": "tiny", "input": "Tell me a long story.", "max_output_tokens": 400, "stream": True,
            "temperature": 0}  # greedy: the same long reply every run
    with httpx.stream("POST", server.base_url + "/responses", json=body, timeout=60) as r:
        lines = r.iter_lines()
        for line in lines:
            if line.startswith("data: ") and tiny_engine.open_sequences:
                break
        assert tiny_engine.open_sequences == 1
    assert wait_until(lambda: tiny_engine.open_sequences == 0), "the disconnected stream kept its sequence"
    # every sequence is usable again
    results = []
    threads = [threading.Thread(target=lambda: results.append(
        client.responses.create(model="tiny", input="hi", max_output_tokens=4))) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 3 and all(r.usage.output_tokens == 4 for r in results)


def test_real_model_concurrent_requests_match_sequential(tiny_server):
    _, client = tiny_server
    prompts = ["one", "two two", "three three three", "four", "five five"]

    def ask(prompt: str):
        r = client.responses.create(model="tiny", input=prompt, temperature=0, max_output_tokens=16)
        return [(item.type, _text(item)) for item in r.output], r.usage.input_tokens

    sequential = [ask(p) for p in prompts]
    concurrent: dict[int, object] = {}
    threads = [threading.Thread(target=lambda i=i: concurrent.__setitem__(i, ask(prompts[i])))
               for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [concurrent[i] for i in range(len(prompts))] == sequential
    assert len({s[1] for s in sequential}) > 1  # distinct prompts, distinct requests
