"""``POST /v1/responses``: the OpenAI Responses API over harmony, streaming (SSE) or not.

One request is one or more engine turns: the model's messages become output items (analysis → ``reasoning``,
final / commentary text → ``message``, a call to ``functions.X`` → ``function_call``); a call to a built-in
tool (``browser.*`` for ``web_search``, ``python`` for ``code_interpreter``) is run here, its result fed back,
and generation goes on until the model answers or calls a client function. Streaming emits the event
sequence the OpenAI API emits, every event with its ``sequence_number``.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from openai_harmony import Author, Message, Role

from .. import harmony
from ..sampling import SamplingParams
from .builtin_tools import ToolFactory, recipient_namespace
from .conversation import (
    FUNCTIONS_PREFIX,
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
from .schemas import (
    BuiltinCallItem,
    CodeInterpreterTool,
    FunctionCallItem,
    FunctionCallOutputItem,
    FunctionTool,
    MessageItem,
    ReasoningItem,
    ResponsesRequest,
    WebSearchTool,
)
from .store import ResponseStore, StoredResponse
from .streaming import CompletionParser, Segment, TokenEngine, TokenStream

if TYPE_CHECKING:
    from ..tools import Tool

log = logging.getLogger(__name__)

CONTAINER_ID = "local"  # code_interpreter runs in this server's sandbox, not in an OpenAI container


def _new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


@dataclass
class _Prepared:
    """A validated request, ready to run."""

    id: str
    body: ResponsesRequest
    model: str
    header: dict[str, Any]  # harmony.build_conversation options (system + developer message)
    history: list[Message]  # user / assistant / tool messages
    call_names: dict[str, str]
    builtins: dict[str, Tool]  # namespace → tool
    functions: set[str]
    prompt: list[int]
    forced: list[int]  # the reply's forced start (tool_choice), fed to the parser as if generated
    sampling: SamplingParams
    effort: str
    created_at: int = field(default_factory=lambda: int(time.time()))


@dataclass
class _Output:
    """The items of a response as they are produced; index = output_index."""

    items: list[dict[str, Any]] = field(default_factory=list)
    by_segment: dict[int, int] = field(default_factory=dict)  # id(segment) → output_index
    sent: dict[int, str] = field(default_factory=dict)  # id(segment) → text sent so far (citations rewritten)


class ResponsesEndpoint:
    def __init__(
        self,
        engine: TokenEngine,
        store: ResponseStore,
        model_names: Callable[[str | None], str],
        slots: threading.Semaphore,
        tool_factories: dict[str, ToolFactory],
    ) -> None:
        self._engine = engine
        self._store = store
        self._model_name = model_names
        self._slots = slots
        self._tool_factories = tool_factories  # "browser" / "python" → factory
        self._transcripts = Transcripts()

    # -----------------------------------------------------------------------------------------------------
    # Request → harmony

    def prepare(self, body: ResponsesRequest) -> _Prepared:
        model = self._model_name(body.model)
        if body.background:
            raise ApiError("Background responses are not supported: stream the response instead.",
                           param="background", code="unsupported_parameter")
        if body.text and (body.text.get("format") or {}).get("type", "text") != "text":
            raise ApiError("Only text output is supported (text.format.type 'text').", param="text.format")
        functions, builtins = self._tools(body)

        history: list[Message] = []
        call_names: dict[str, str] = {}
        if body.previous_response_id is not None:
            previous = self._store.get(body.previous_response_id)
            if previous is None:
                raise ApiError(
                    f"Previous response with id '{body.previous_response_id}' not found.",
                    status=404,
                    param="previous_response_id",
                    code="previous_response_not_found",
                )
            history = list(previous.history)
            call_names = dict(previous.call_names)
        developer_texts = [body.instructions] if body.instructions else []
        history += self._input_messages(body, developer_texts, call_names)
        history = drop_stale_reasoning(history)

        effort = reasoning_effort(body.reasoning.effort if body.reasoning else None, "reasoning.effort")
        header = {
            "reasoning_effort": effort,
            "developer_instructions": "\n\n".join(developer_texts) if developer_texts else None,
            "function_tools": [function_tool(f.name, f.description, f.parameters) for f in functions],
            "builtin_tools": [tool.tool_config for tool in builtins.values()],
            "conversation_start_date": time.strftime("%Y-%m-%d"),
        }
        prompt = self._transcripts.apply(
            harmony.render_conversation(harmony.build_conversation(history, **header))
        )
        choice = body.tool_choice
        forced = forced_call_tokens(
            choice, [f.name for f in functions], choice.get("name") if isinstance(choice, dict) else None
        )
        max_context = self._engine.max_context
        if len(prompt) >= max_context:
            raise ApiError(
                f"This model's maximum context length is {max_context} tokens, but the input is "
                f"{len(prompt)} tokens. Shorten the input or start a new conversation.",
                param="input",
                code="context_length_exceeded",
            )
        return _Prepared(
            id=_new_id("resp"),
            body=body,
            model=model,
            header=header,
            history=history,
            call_names=call_names,
            builtins=builtins,
            functions={f.name for f in functions},
            prompt=prompt,
            forced=forced,
            sampling=sampling_params(body.temperature, body.top_p),
            effort=effort,
        )

    def _tools(self, body: ResponsesRequest) -> tuple[list[FunctionTool], dict[str, Tool]]:
        functions: list[FunctionTool] = []
        builtins: dict[str, Tool] = {}
        for i, tool in enumerate(body.tools):
            if isinstance(tool, FunctionTool):
                if any(f.name == tool.name for f in functions):
                    raise ApiError(f"Duplicate function name {tool.name!r}.", param=f"tools[{i}].name")
                functions.append(tool)
                continue
            namespace = "browser" if isinstance(tool, WebSearchTool) else "python"
            assert isinstance(tool, WebSearchTool | CodeInterpreterTool)
            factory = self._tool_factories.get(namespace)
            if factory is None:
                raise ApiError(
                    f"The built-in tool {tool.type!r} is not available on this server "
                    f"(start it with the {namespace} tool enabled).",
                    param=f"tools[{i}].type",
                    code="unsupported_tool",
                )
            if namespace not in builtins:
                builtins[namespace] = factory()
        if body.tool_choice == "none":
            return [], {}
        return functions, builtins

    def _input_messages(
        self, body: ResponsesRequest, developer_texts: list[str], call_names: dict[str, str]
    ) -> list[Message]:
        if isinstance(body.input, str):
            return [Message.from_role_and_content(Role.USER, body.input)]
        messages: list[Message] = []
        for i, item in enumerate(body.input):
            param = f"input[{i}]"
            if isinstance(item, MessageItem):
                text = text_of(item.content, f"{param}.content")
                if item.role in ("system", "developer"):
                    developer_texts.append(text)
                elif item.role == "user":
                    messages.append(Message.from_role_and_content(Role.USER, text))
                else:
                    channel = "commentary" if self._is_preamble(body.input, i) else "final"
                    messages.append(Message.from_role_and_content(Role.ASSISTANT, text).with_channel(channel))
            elif isinstance(item, ReasoningItem):
                parts = item.content or item.summary
                text = "".join(p.text for p in parts) or _reasoning_from_opaque(item.encrypted_content)
                if text:
                    messages.append(Message.from_role_and_content(Role.ASSISTANT, text).with_channel("analysis"))
            elif isinstance(item, FunctionCallItem):
                call_names[item.call_id] = item.name
                messages.append(function_call_message(item.name, item.arguments))
            elif isinstance(item, FunctionCallOutputItem):
                name = call_names.get(item.call_id)
                if name is None:
                    raise ApiError(
                        f"No function call with call_id {item.call_id!r} precedes this function_call_output.",
                        param=f"{param}.call_id",
                    )
                messages.append(function_output_message(name, text_of(item.output, f"{param}.output")))
            else:
                assert isinstance(item, BuiltinCallItem)  # ran server-side earlier; its result is not replayable
        return messages

    @staticmethod
    def _is_preamble(items: list, index: int) -> bool:
        """Whether the assistant message ``items[index]`` was commentary: marked so (``phase``), or followed by
        a function call within the same turn, as gpt-oss writes a preamble before its calls."""
        phase = items[index].phase
        if phase is not None:
            return phase == "commentary"
        for item in items[index + 1 :]:
            if isinstance(item, FunctionCallItem):
                return True
            if isinstance(item, MessageItem):
                return False
        return False

    # -----------------------------------------------------------------------------------------------------
    # Generation → events

    async def events(
        self, p: _Prepared, is_disconnected: Callable[[], Awaitable[bool]]
    ) -> AsyncIterator[dict[str, Any]]:
        """The response's events; the last one is response.completed / .incomplete / .failed."""
        sequence = 0

        def event(kind: str, **fields: Any) -> dict[str, Any]:
            nonlocal sequence
            sequence += 1
            return {"type": kind, "sequence_number": sequence - 1, **fields}

        out = _Output()
        conversation = list(p.history)
        generated = reasoning_tokens = turns = cached_tokens = 0
        status, incomplete, error = "completed", None, None
        snapshot = self._response(p, out, "in_progress", None, None, None)
        yield event("response.created", response=snapshot)
        yield event("response.in_progress", response=snapshot)

        stop = harmony.stop_tokens()
        prompt = p.prompt
        max_output = p.body.max_output_tokens
        while True:
            budget = self._engine.max_context - len(prompt) - (len(p.forced) if turns == 0 else 0)
            if max_output is not None:
                budget = min(budget, max_output - generated)
            if budget <= 0:
                status, incomplete = "incomplete", {"reason": "max_output_tokens"}
                break
            parser = CompletionParser(stop)
            # Each turn after a tool call draws from its own random stream.
            sampling = dataclasses.replace(p.sampling, seed=(p.sampling.seed + turns) % 2**64)
            forced = p.forced if turns == 0 else []
            turns += 1
            stream = TokenStream(self._engine, prompt + forced, sampling, budget, stop, self._slots)
            completion: list[int] = []
            try:
                for token in forced:
                    for kind, segment, delta in parser.feed(token):
                        for e in self._segment_events(p, out, kind, segment, delta, partial=False):
                            yield event(**e)
                async for token in stream:
                    generated += 1
                    completion.append(token)
                    segment_events = parser.feed(token)
                    if any(kind == "delta" and seg.is_reasoning for kind, seg, _ in segment_events):
                        reasoning_tokens += 1
                    for kind, segment, delta in segment_events:
                        for e in self._segment_events(p, out, kind, segment, delta, partial=False):
                            yield event(**e)
                    if await is_disconnected():
                        log.info("client went away: stopping response %s", p.id)
                        return
                for kind, segment, delta in parser.finish():
                    for e in self._segment_events(p, out, kind, segment, delta, partial=True):
                        yield event(**e)
            except Exception as e:  # the engine failed: report it in the response, as the OpenAI API does
                log.exception("generation failed for response %s", p.id)
                status, error = "failed", {"code": "server_error", "message": f"generation failed: {e}"}
                break
            finally:
                stream.close()
            if turns == 1:  # input_tokens counts the first turn's prompt: so does its cached part
                cached_tokens = min(stream.cached_tokens, len(p.prompt))
            if parser.malformed:
                log.warning("response %s: model output is not harmony (%s); passed through as text",
                            p.id, parser.malformed)
            conversation += parser.messages
            last = parser.segments[-1] if parser.segments else None
            if parser.stop_token is None:
                status, incomplete = "incomplete", {"reason": "max_output_tokens"}
                break
            if last is not None and last.is_tool_call:
                rendered = harmony.render_conversation(harmony.build_conversation(conversation, **p.header))
                self._transcripts.remember(Transcript.after_call(prompt + forced, completion, rendered))
            if last is None or not self._is_builtin_call(p, last):
                break
            tool = p.builtins[recipient_namespace(self._builtin_recipient(p, last))]
            results: list[Message] = []
            async for e in self._run_builtin(p, out, last, tool, results):
                yield event(**e)
            conversation += results
            prompt = self._transcripts.apply(
                harmony.render_conversation(harmony.build_conversation(conversation, **p.header))
            )

        usage = {
            "input_tokens": len(p.prompt),
            "input_tokens_details": {"cached_tokens": cached_tokens, "cache_write_tokens": 0},
            "output_tokens": generated,
            "output_tokens_details": {"reasoning_tokens": reasoning_tokens},
            "total_tokens": len(p.prompt) + generated,
        }
        response = self._response(p, out, status, incomplete, error, usage)
        if p.body.store and status != "failed":
            call_names = dict(p.call_names)
            for item in out.items:
                if item["type"] == "function_call":
                    call_names[item["call_id"]] = item["name"]
            self._store.put(p.id, StoredResponse(response, conversation, call_names))
        final_event = {"completed": "response.completed", "incomplete": "response.incomplete"}.get(
            status, "response.failed"
        )
        yield event(final_event, response=response)

    def _response(
        self,
        p: _Prepared,
        out: _Output,
        status: str,
        incomplete: dict[str, str] | None,
        error: dict[str, str] | None,
        usage: dict[str, Any] | None,
    ) -> dict[str, Any]:
        body = p.body
        return {
            "id": p.id,
            "object": "response",
            "created_at": p.created_at,
            "status": status,
            "background": False,
            "error": error,
            "incomplete_details": incomplete,
            "instructions": body.instructions,
            "max_output_tokens": body.max_output_tokens,
            "max_tool_calls": None,
            "model": p.model,
            "output": [dict(item) for item in out.items],
            "parallel_tool_calls": False,
            "previous_response_id": body.previous_response_id,
            "reasoning": {"effort": p.effort, "summary": None},
            "store": body.store,
            "temperature": p.sampling.temperature,
            "text": {"format": {"type": "text"}},
            "tool_choice": body.tool_choice,
            "tools": [tool.model_dump(exclude_none=True) for tool in body.tools],
            "top_p": p.sampling.top_p,
            "truncation": "disabled",
            "usage": usage,
            "user": body.user,
            "metadata": body.metadata or {},
        }

    # A recipient is a built-in call when its namespace is a tool this request enabled; the model sometimes
    # writes it as a function (``functions.browser.search``), which counts too unless such a function exists.
    def _builtin_recipient(self, p: _Prepared, segment: Segment) -> str:
        recipient = segment.recipient or ""
        if recipient.startswith(FUNCTIONS_PREFIX) and function_name(recipient) not in p.functions:
            return function_name(recipient)
        return recipient

    def _is_builtin_call(self, p: _Prepared, segment: Segment) -> bool:
        return segment.is_tool_call and recipient_namespace(self._builtin_recipient(p, segment)) in p.builtins

    def _segment_events(
        self, p: _Prepared, out: _Output, kind: str, segment: Segment, delta: str, partial: bool
    ) -> list[dict[str, Any]]:
        """The API events for one segment event (see CompletionParser)."""
        if self._is_builtin_call(p, segment):
            return self._builtin_segment_events(p, out, kind, segment, delta, partial)
        if kind == "open":
            index = len(out.items)
            out.by_segment[id(segment)] = index
            if segment.is_tool_call:
                item = {
                    "id": _new_id("fc"),
                    "type": "function_call",
                    "status": "in_progress",
                    "call_id": _new_id("call"),
                    "name": function_name(segment.recipient or ""),
                    "arguments": "",
                }
                out.items.append(item)
                return [{"kind": "response.output_item.added", "output_index": index, "item": dict(item)}]
            if segment.is_reasoning:
                item = {"id": _new_id("rs"), "type": "reasoning", "summary": [], "content": []}
                part = {"type": "reasoning_text", "text": ""}
            else:
                # gpt-oss's commentary text (a preamble to tool calls) is a message, marked as the API marks it.
                phase = "commentary" if segment.channel == "commentary" else "final_answer"
                item = {"id": _new_id("msg"), "type": "message", "role": "assistant", "status": "in_progress",
                        "content": [], "phase": phase}
                part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
            out.items.append(item)
            return [
                {"kind": "response.output_item.added", "output_index": index, "item": dict(item, content=[])},
                {"kind": "response.content_part.added", "output_index": index, "item_id": item["id"],
                 "content_index": 0, "part": part},
            ]

        index = out.by_segment[id(segment)]
        item = out.items[index]
        where = {"output_index": index, "item_id": item["id"]}
        if kind == "delta":
            if segment.is_tool_call:
                return [{"kind": "response.function_call_arguments.delta", **where, "delta": delta}]
            if segment.is_reasoning:
                return [{"kind": "response.reasoning_text.delta", **where, "content_index": 0, "delta": delta}]
            return self._text_events(p, out, segment, where, final=False)

        # close
        status = "incomplete" if partial else "completed"
        text = segment.text
        if segment.is_tool_call:
            item.update(arguments=text, status=status)
            return [
                {"kind": "response.function_call_arguments.done", **where, "name": item["name"], "arguments": text},
                {"kind": "response.output_item.done", "output_index": index, "item": dict(item)},
            ]
        if segment.is_reasoning:
            part = {"type": "reasoning_text", "text": text}
            item["content"] = [part]
            if "reasoning.encrypted_content" in (p.body.include or []):
                item["encrypted_content"] = _reasoning_to_opaque(text)
            return [
                {"kind": "response.reasoning_text.done", **where, "content_index": 0, "text": text},
                {"kind": "response.content_part.done", **where, "content_index": 0, "part": part},
                {"kind": "response.output_item.done", "output_index": index, "item": dict(item)},
            ]
        events = self._text_events(p, out, segment, where, final=True)
        text, annotations = self._cited(p, segment.text, final=True)
        part = {"type": "output_text", "text": text, "annotations": annotations, "logprobs": []}
        item.update(content=[part], status=status)
        return events + [
            {"kind": "response.output_text.done", **where, "content_index": 0, "text": text, "logprobs": []},
            {"kind": "response.content_part.done", **where, "content_index": 0, "part": part},
            {"kind": "response.output_item.done", "output_index": index, "item": dict(item)},
        ]

    def _cited(self, p: _Prepared, text: str, final: bool) -> tuple[str, list[dict[str, Any]]]:
        """With the browser on, ``【cursor†Lx-Ly】`` citations become links plus ``url_citation`` annotations;
        while streaming, an unfinished citation at the end is held back."""
        browser = p.builtins.get("browser")
        if browser is None:
            return text, []
        cited, annotations, _ = browser.normalize_citations(text, hide_partial=not final)
        return cited, annotations

    def _text_events(
        self, p: _Prepared, out: _Output, segment: Segment, where: dict[str, Any], final: bool
    ) -> list[dict[str, Any]]:
        """The output_text deltas (and annotations) that bring what the client has up to the segment's text."""
        text, annotations = self._cited(p, segment.text, final)
        sent = out.sent.get(id(segment), "")
        events: list[dict[str, Any]] = []
        if len(text) > len(sent):
            events.append({"kind": "response.output_text.delta", **where, "content_index": 0,
                           "delta": text[len(sent):], "logprobs": []})
            out.sent[id(segment)] = text
        for number, annotation in enumerate(annotations):
            if len(sent) < annotation["end_index"] <= len(text):  # completed by this delta
                events.append({"kind": "response.output_text.annotation.added", **where, "content_index": 0,
                               "annotation_index": number, "annotation": annotation})
        return events

    def _builtin_segment_events(
        self, p: _Prepared, out: _Output, kind: str, segment: Segment, delta: str, partial: bool
    ) -> list[dict[str, Any]]:
        """A built-in call streams its code (python); the browser's action is known only once it is whole.
        The call itself runs in :meth:`_run_builtin`, once generation stopped at ``<|call|>``."""
        python = recipient_namespace(self._builtin_recipient(p, segment)) == "python"
        if kind == "open":
            index = len(out.items)
            out.by_segment[id(segment)] = index
            if not python:
                out.items.append({"id": _new_id("ws"), "type": "web_search_call", "status": "in_progress",
                                  "action": {"type": "search", "query": None}})
                return []
            item = {"id": _new_id("ci"), "type": "code_interpreter_call", "status": "in_progress", "code": "",
                    "container_id": CONTAINER_ID, "outputs": None}
            out.items.append(item)
            where = {"output_index": index, "item_id": item["id"]}
            return [
                {"kind": "response.output_item.added", "output_index": index, "item": dict(item)},
                {"kind": "response.code_interpreter_call.in_progress", **where},
            ]
        index = out.by_segment[id(segment)]
        item = out.items[index]
        where = {"output_index": index, "item_id": item["id"]}
        if not python:
            if kind == "close":
                item["action"] = _browser_action(self._builtin_recipient(p, segment), segment.text)
                if partial:  # cut short by the token limit: never run
                    item["status"] = "incomplete"
                    return [
                        {"kind": "response.output_item.added", "output_index": index, "item": dict(item)},
                        {"kind": "response.output_item.done", "output_index": index, "item": dict(item)},
                    ]
            return []
        if kind == "delta":
            item["code"] += delta
            return [{"kind": "response.code_interpreter_call_code.delta", **where, "delta": delta}]
        events = [{"kind": "response.code_interpreter_call_code.done", **where, "code": item["code"]}]
        if partial:
            item["status"] = "incomplete"
            events.append({"kind": "response.output_item.done", "output_index": index, "item": dict(item)})
        return events

    async def _run_builtin(
        self, p: _Prepared, out: _Output, segment: Segment, tool: Tool, results: list[Message]
    ) -> AsyncIterator[dict[str, Any]]:
        index = out.by_segment[id(segment)]
        item = out.items[index]
        where = {"output_index": index, "item_id": item["id"]}
        call = segment.message
        assert call is not None
        recipient = self._builtin_recipient(p, segment)
        if recipient != call.recipient:
            call = call.with_recipient(recipient)
        python = tool.name == "python"
        if python:
            item["status"] = "interpreting"
            yield {"kind": "response.code_interpreter_call.interpreting", **where}
        else:
            yield {"kind": "response.output_item.added", "output_index": index, "item": dict(item)}
            yield {"kind": "response.web_search_call.in_progress", **where}
            yield {"kind": "response.web_search_call.searching", **where}
        try:
            results += await asyncio.to_thread(tool.process, call)
            status = "completed"
        except Exception as e:  # noqa: BLE001 - the model sees the failure and can react to it
            log.warning("built-in tool %s failed: %s", recipient, e)
            results.append(
                Message.from_author_and_content(Author.new(Role.TOOL, recipient), f"Error: {e}")
                .with_recipient("assistant")
                .with_channel(call.channel or "analysis")
            )
            status = "failed"
        item["status"] = status
        if item.get("action", {}).get("type") == "open_page" and item["action"]["url"] is None:
            pages = getattr(tool, "pages", None)  # the browser's page stack: the page it just opened
            if status == "completed" and pages:
                item["action"]["url"] = pages[-1].url
        if python:
            from ..tools import message_text  # loaded already: the tool came from there

            logs = "".join(message_text(m) for m in results)
            item["outputs"] = [{"type": "logs", "logs": logs}]
            yield {"kind": "response.code_interpreter_call.completed", **where}
        else:
            yield {"kind": "response.web_search_call.completed", **where}
        yield {"kind": "response.output_item.done", "output_index": index, "item": dict(item)}


# ``encrypted_content`` carries the chain of thought through clients that send reasoning items back without
# their text (Codex, with store=false); gpt-oss needs it through a tool-calling turn. It is encoded, not secret.
_OPAQUE_PREFIX = "gpt-oss-native.reasoning.v1:"


def _reasoning_to_opaque(text: str) -> str:
    return _OPAQUE_PREFIX + base64.b64encode(text.encode()).decode()


def _reasoning_from_opaque(blob: str | None) -> str:
    if not blob or not blob.startswith(_OPAQUE_PREFIX):
        return ""  # another server's encryption: nothing we can read
    try:
        return base64.b64decode(blob.removeprefix(_OPAQUE_PREFIX), validate=True).decode()
    except (ValueError, UnicodeDecodeError):
        raise ApiError("A reasoning item's encrypted_content is corrupt.", param="input") from None


def _browser_action(recipient: str, arguments: str) -> dict[str, Any]:
    """The ``web_search_call.action`` for a browser call (its JSON arguments, as far as they parse)."""
    try:
        args = json.loads(arguments)
    except json.JSONDecodeError:
        args = {}
    if not isinstance(args, dict):
        args = {}
    function = recipient.split(".", 1)[-1]
    if function == "open":
        target = args.get("id")
        return {"type": "open_page", "url": target if isinstance(target, str) else None}
    if function == "find":
        return {"type": "find_in_page", "pattern": str(args.get("pattern", "")), "url": str(args.get("url", ""))}
    return {"type": "search", "query": args.get("query")}
