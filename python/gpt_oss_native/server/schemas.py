"""Request bodies of the OpenAI Responses and Chat Completions APIs, as this server accepts them.

Unknown fields are ignored (clients such as Codex send options a local model has no use for, e.g.
``prompt_cache_key``); fields whose meaning we cannot honour are rejected with a 400 by the endpoints.
Responses are built as plain dicts by the endpoint modules and checked against the ``openai`` client's own
types by the tests.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")


# ---------------------------------------------------------------------------------------------------------
# Responses API


class ContentPart(_Lenient):
    """A part of a message's content: text parts are used, others (images, files) are refused."""

    type: str
    text: str | None = None


class MessageItem(_Lenient):
    type: Literal["message"] = "message"
    role: Literal["user", "assistant", "system", "developer"]
    content: str | list[ContentPart]
    id: str | None = None
    status: str | None = None
    phase: Literal["commentary", "final_answer"] | None = None  # assistant messages: commentary = preamble


class ReasoningText(_Lenient):
    type: str = "reasoning_text"
    text: str


class ReasoningItem(_Lenient):
    type: Literal["reasoning"]
    id: str | None = None
    summary: list[ReasoningText] = []
    content: list[ReasoningText] | None = None
    encrypted_content: str | None = None


class FunctionCallItem(_Lenient):
    type: Literal["function_call"]
    call_id: str
    name: str
    arguments: str
    id: str | None = None
    status: str | None = None


class FunctionCallOutputItem(_Lenient):
    type: Literal["function_call_output"]
    call_id: str
    output: str | list[ContentPart]
    id: str | None = None


class BuiltinCallItem(_Lenient):
    """A ``web_search_call`` / ``code_interpreter_call`` from an earlier response: the server ran it, the
    client replays it. Its details cannot be turned back into the tool's output, so it is informational."""

    type: Literal["web_search_call", "code_interpreter_call"]
    id: str | None = None


def _item_type(value: Any) -> str:
    if isinstance(value, dict):
        return value.get("type", "message")
    return getattr(value, "type", "message")


InputItem = Annotated[
    Annotated[MessageItem, Tag("message")]
    | Annotated[ReasoningItem, Tag("reasoning")]
    | Annotated[FunctionCallItem, Tag("function_call")]
    | Annotated[FunctionCallOutputItem, Tag("function_call_output")]
    | Annotated[BuiltinCallItem, Tag("web_search_call")]
    | Annotated[BuiltinCallItem, Tag("code_interpreter_call")],
    Discriminator(_item_type),
]


class FunctionTool(_Lenient):
    type: Literal["function"]
    name: str = Field(min_length=1)
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class WebSearchTool(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: Literal["web_search", "web_search_preview", "browser_search"]


class CodeInterpreterTool(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: Literal["code_interpreter"]


ResponsesTool = Annotated[FunctionTool | WebSearchTool | CodeInterpreterTool, Field(discriminator="type")]


class ReasoningOptions(_Lenient):
    effort: str | None = None
    summary: str | None = None


class ResponsesRequest(_Lenient):
    model: str | None = None
    input: str | list[InputItem]
    instructions: str | None = None
    tools: list[ResponsesTool] = []
    tool_choice: Any = "auto"
    parallel_tool_calls: bool | None = None
    reasoning: ReasoningOptions | None = None
    max_output_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    stream: bool = False
    store: bool = True
    previous_response_id: str | None = None
    metadata: dict[str, str] | None = None
    text: dict[str, Any] | None = None
    user: str | None = None
    truncation: Literal["auto", "disabled"] | None = None
    include: list[str] | None = None
    background: bool = False


# ---------------------------------------------------------------------------------------------------------
# Chat Completions API


class ChatFunction(_Lenient):
    name: str
    arguments: str = ""


class ChatToolCall(_Lenient):
    id: str
    type: Literal["function"] = "function"
    function: ChatFunction


class ChatMessage(_Lenient):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ChatToolCall] | None = None
    tool_call_id: str | None = None
    # The analysis channel of an earlier assistant turn, as this server (and vLLM) returns it.
    reasoning_content: str | None = None
    reasoning: str | None = None


class ChatFunctionDefinition(_Lenient):
    name: str = Field(min_length=1)
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ChatTool(_Lenient):
    type: Literal["function"]
    function: ChatFunctionDefinition


class StreamOptions(_Lenient):
    include_usage: bool = False


class ChatCompletionRequest(_Lenient):
    model: str | None = None
    messages: list[ChatMessage] = Field(min_length=1)
    tools: list[ChatTool] | None = None
    tool_choice: Any = None
    reasoning_effort: str | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    seed: int | None = Field(default=None, ge=0, lt=2**64)
    n: int | None = Field(default=None, ge=1)
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    logprobs: bool | None = None
    response_format: dict[str, Any] | None = None
    user: str | None = None
