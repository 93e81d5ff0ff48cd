"""``POST /v1/chat/completions``: the Chat Completions API over harmony.

The analysis channel is returned as ``reasoning_content`` (as vLLM does), final and commentary text as
``content``, calls to ``functions.X`` as ``tool_calls``. Tools are the client's functions only: the built-in
browser and python tools belong to the Responses API.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from openai_harmony import Conversation, Message, Role

from .. import harmony
from ..sampling import SamplingParams
from .conversation import (
    Transcript,
    Transcripts,
    drop_stale_reasoning,
    forced_call_tokens,
    function_call_message,
    function_name,
    function_output_message,
    function_tool,
    reasoning_effort,
    sampling_params,
    text_of,
)
from .errors import ApiError
from .schemas import ChatCompletionRequest
from .streaming import CompletionParser, TokenEngine, TokenStream

log = logging.getLogger(__name__)


@dataclass
class _Prepared:
    id: str
    model: str
    conversation: Conversation
    prompt: list[int]
    forced: list[int]  # the reply's forced start (tool_choice), fed to the parser as if generated
    sampling: SamplingParams
    max_tokens: int | None
    include_usage: bool
    stop: list[str]  # strings that end the content (the harmony stop tokens end the turn regardless)
    created: int = field(default_factory=lambda: int(time.time()))


@dataclass
class _Result:
    content: str = ""
    reasoning: str = ""
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    finish_reason: str = "stop"
    completion_tokens: int = 0
    reasoning_tokens: int = 0
    cached_tokens: int = 0  # prompt tokens the engine's prefix cache held


class ChatCompletionsEndpoint:
    def __init__(
        self, engine: TokenEngine, model_names: Callable[[str | None], str], slots: threading.Semaphore
    ) -> None:
        self._engine = engine
        self._model_name = model_names
        self._slots = slots
        self._transcripts = Transcripts()

    def prepare(self, body: ChatCompletionRequest) -> _Prepared:
        model = self._model_name(body.model)
        if body.n not in (None, 1):
            raise ApiError("Only n=1 is supported.", param="n", code="unsupported_value")
        stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
        if len(stop) > 4 or not all(stop):
            raise ApiError("stop takes up to 4 non-empty strings.", param="stop", code="invalid_value")
        if body.logprobs:
            raise ApiError("logprobs are not supported.", param="logprobs", code="unsupported_parameter")
        if body.response_format and body.response_format.get("type", "text") != "text":
            raise ApiError("Only text responses are supported.", param="response_format")
        tools = [] if body.tool_choice == "none" else (body.tools or [])
        choice = body.tool_choice
        named = choice.get("function", {}).get("name") if isinstance(choice, dict) else None
        forced = forced_call_tokens(choice, [t.function.name for t in tools], named)

        developer_texts: list[str] = []
        history: list[Message] = []
        call_names: dict[str, str] = {}
        for i, m in enumerate(body.messages):
            param = f"messages[{i}]"
            if m.role in ("system", "developer"):
                developer_texts.append(text_of(m.content, f"{param}.content"))
            elif m.role == "user":
                history.append(Message.from_role_and_content(Role.USER, text_of(m.content, f"{param}.content")))
            elif m.role == "assistant":
                reasoning = m.reasoning_content or m.reasoning
                if reasoning:
                    history.append(Message.from_role_and_content(Role.ASSISTANT, reasoning).with_channel("analysis"))
                text = text_of(m.content, f"{param}.content")
                if text:
                    # Text beside tool calls is a preamble, which gpt-oss writes on the commentary channel.
                    channel = "commentary" if m.tool_calls else "final"
                    history.append(Message.from_role_and_content(Role.ASSISTANT, text).with_channel(channel))
                for call in m.tool_calls or []:
                    call_names[call.id] = call.function.name
                    history.append(function_call_message(call.function.name, call.function.arguments))
            else:
                name = call_names.get(m.tool_call_id or "")
                if name is None:
                    raise ApiError(
                        f"No assistant tool call with id {m.tool_call_id!r} precedes this tool message.",
                        param=f"{param}.tool_call_id",
                    )
                history.append(function_output_message(name, text_of(m.content, f"{param}.content")))

        conversation = harmony.build_conversation(
            drop_stale_reasoning(history),
            reasoning_effort=reasoning_effort(body.reasoning_effort, "reasoning_effort"),
            developer_instructions="\n\n".join(developer_texts) if developer_texts else None,
            function_tools=[
                function_tool(t.function.name, t.function.description, t.function.parameters) for t in tools
            ],
            conversation_start_date=time.strftime("%Y-%m-%d"),
        )
        prompt = self._transcripts.apply(harmony.render_conversation(conversation))
        max_context = self._engine.max_context
        if len(prompt) + len(forced) >= max_context:
            raise ApiError(
                f"This model's maximum context length is {max_context} tokens, but the messages are "
                f"{len(prompt)} tokens. Shorten the conversation.",
                param="messages",
                code="context_length_exceeded",
            )
        return _Prepared(
            id=f"chatcmpl-{uuid.uuid4().hex}",
            model=model,
            conversation=conversation,
            prompt=prompt,
            forced=forced,
            sampling=sampling_params(body.temperature, body.top_p, body.seed),
            max_tokens=body.max_completion_tokens or body.max_tokens,
            include_usage=bool(body.stream_options and body.stream_options.include_usage),
            stop=stop,
        )

    async def _deltas(
        self, p: _Prepared, result: _Result, is_disconnected: Callable[[], Awaitable[bool]]
    ) -> AsyncIterator[dict[str, Any]]:
        """The message's deltas as they are generated; fills ``result`` as it goes."""
        budget = self._engine.max_context - len(p.prompt) - len(p.forced)
        if p.max_tokens is not None:
            budget = min(budget, p.max_tokens)
        stop = harmony.stop_tokens()
        parser = CompletionParser(stop)
        stream = TokenStream(self._engine, p.prompt + p.forced, p.sampling, budget, stop, self._slots)
        call_index: dict[int, int] = {}  # id(segment) → tool_calls index
        stops = _StopStrings(p.stop)
        completion: list[int] = []
        try:
            for token in p.forced:
                for delta in _message_deltas(parser.feed(token), result, call_index):
                    yield delta
            async for token in stream:
                result.completion_tokens += 1
                completion.append(token)
                events = parser.feed(token)
                if any(kind == "delta" and seg.is_reasoning for kind, seg, _ in events):
                    result.reasoning_tokens += 1
                for delta in stops.filter(_message_deltas(events, result, call_index)):
                    yield delta
                if stops.hit:
                    break
                if await is_disconnected():
                    log.info("client went away: stopping completion %s", p.id)
                    return
            else:
                for delta in stops.filter(_message_deltas(parser.finish(), result, call_index), final=True):
                    yield delta
        finally:
            stream.close()
            result.cached_tokens = min(stream.cached_tokens, len(p.prompt))
        if parser.malformed:
            log.warning("completion %s: model output is not harmony (%s); passed through as text",
                        p.id, parser.malformed)
        result.content = stops.text
        if stops.hit:
            result.finish_reason = "stop"
        elif parser.stop_token is None:
            result.finish_reason = "length"
        elif result.tool_calls:
            result.finish_reason = "tool_calls"
            rendered = harmony.render_conversation(
                Conversation.from_messages([*p.conversation.messages, *parser.messages])
            )
            self._transcripts.remember(Transcript.after_call(p.prompt + p.forced, completion, rendered))

    def _usage(self, p: _Prepared, result: _Result) -> dict[str, Any]:
        return {
            "prompt_tokens": len(p.prompt),
            "completion_tokens": result.completion_tokens,
            "total_tokens": len(p.prompt) + result.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": result.cached_tokens},
            "completion_tokens_details": {"reasoning_tokens": result.reasoning_tokens},
        }

    async def complete(self, p: _Prepared, is_disconnected: Callable[[], Awaitable[bool]]) -> dict[str, Any]:
        result = _Result()
        try:
            async for _ in self._deltas(p, result, is_disconnected):
                pass
        except Exception as e:
            log.exception("generation failed for completion %s", p.id)
            raise ApiError(f"generation failed: {e}", status=500, type="server_error") from e
        message: dict[str, Any] = {
            "role": "assistant",
            "content": result.content or None,
            "reasoning_content": result.reasoning or None,
        }
        if result.tool_calls:
            message["tool_calls"] = result.tool_calls
        return {
            "id": p.id,
            "object": "chat.completion",
            "created": p.created,
            "model": p.model,
            "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": result.finish_reason}],
            "usage": self._usage(p, result),
        }

    async def chunks(
        self, p: _Prepared, is_disconnected: Callable[[], Awaitable[bool]]
    ) -> AsyncIterator[dict[str, Any]]:
        """The ``chat.completion.chunk`` objects of a streamed completion (then the caller sends [DONE])."""
        usage_field = {"usage": None} if p.include_usage else {}

        def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
            return {
                "id": p.id,
                "object": "chat.completion.chunk",
                "created": p.created,
                "model": p.model,
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
                **usage_field,
            }

        result = _Result()
        yield chunk({"role": "assistant", "content": ""})
        try:
            async for delta in self._deltas(p, result, is_disconnected):
                yield chunk(delta)
        except Exception as e:
            log.exception("generation failed for completion %s", p.id)
            yield {"error": {"message": f"generation failed: {e}", "type": "server_error", "param": None,
                             "code": None}}
            return
        yield chunk({}, result.finish_reason)
        if p.include_usage:
            yield {"id": p.id, "object": "chat.completion.chunk", "created": p.created, "model": p.model,
                   "choices": [], "usage": self._usage(p, result)}


def _message_deltas(events, result: _Result, call_index: dict[int, int]) -> list[dict[str, Any]]:
    """Segment events → chat message deltas, accumulated into ``result``."""
    deltas: list[dict[str, Any]] = []
    for kind, segment, text in events:
        if segment.is_tool_call:
            if kind == "open":
                call_index[id(segment)] = index = len(result.tool_calls)
                call = {"id": f"call_{uuid.uuid4().hex}", "type": "function",
                        "function": {"name": function_name(segment.recipient or ""), "arguments": ""}}
                result.tool_calls.append(call)
                deltas.append({"tool_calls": [{"index": index, **call, "function": dict(call["function"])}]})
            elif kind == "delta":
                index = call_index[id(segment)]
                result.tool_calls[index]["function"]["arguments"] += text
                deltas.append({"tool_calls": [{"index": index, "function": {"arguments": text}}]})
        elif kind == "delta" and segment.is_reasoning:
            result.reasoning += text
            deltas.append({"reasoning_content": text})
        elif kind == "delta":
            deltas.append({"content": text})
    return deltas


class _StopStrings:
    """Cuts the content at the first of the request's ``stop`` strings (not included, as the OpenAI API does).

    Text that might begin a stop string is held back until it is known not to; ``text`` is the content so
    far and ``hit`` says whether a stop string ended it. Reasoning and tool calls pass through unchanged.
    """

    def __init__(self, stops: Sequence[str]) -> None:
        self._stops = list(stops)
        self._held = ""
        self.text = ""
        self.hit = False

    def filter(self, deltas: list[dict[str, Any]], final: bool = False) -> list[dict[str, Any]]:
        out = []
        for delta in deltas:
            if "content" not in delta:
                out.append(delta)
            elif not self.hit:
                out += self._content(delta["content"])
        if final and self._held and not self.hit:
            out += self._emit(self._held)
            self._held = ""
        return out

    def _content(self, text: str) -> list[dict[str, Any]]:
        pending = self._held + text
        cuts = [i for i in (pending.find(s) for s in self._stops) if i >= 0]
        if cuts:
            self.hit = True
            self._held = ""
            return self._emit(pending[: min(cuts)])
        keep = max((n for s in self._stops for n in range(1, len(s)) if pending.endswith(s[:n])), default=0)
        self._held = pending[len(pending) - keep :]
        return self._emit(pending[: len(pending) - keep])

    def _emit(self, text: str) -> list[dict[str, Any]]:
        self.text += text
        return [{"content": text}] if text else []
