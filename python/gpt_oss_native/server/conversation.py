"""API requests → harmony messages: the pieces the Responses and Chat Completions endpoints share."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from openai_harmony import Author, Message, Role, ToolDescription

from ..harmony import Effort
from .errors import ApiError
from .schemas import ContentPart

JSON_CONTENT_TYPE = "<|constrain|>json"
FUNCTIONS_PREFIX = "functions."
_TEXT_PART_TYPES = {"text", "input_text", "output_text"}
# Effort names the APIs know beyond harmony's three, mapped to the nearest that gpt-oss was trained on.
_EFFORT_ALIASES = {"low": "low", "medium": "medium", "high": "high", "minimal": "low", "none": "low"}


def reasoning_effort(value: str | None, param: str) -> Effort:
    """The harmony effort for an API's effort value (medium when absent, as the OpenAI API defaults)."""
    if value is None:
        return "medium"
    try:
        return _EFFORT_ALIASES[value]  # type: ignore[return-value]
    except KeyError:
        raise ApiError(
            f"Invalid value for {param}: {value!r}. Supported values are 'low', 'medium' and 'high'.",
            param=param,
            code="invalid_value",
        ) from None


def text_of(content: str | Sequence[ContentPart] | None, param: str) -> str:
    """The text of a message's content; non-text parts (images, files) are refused, not dropped."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    texts = []
    for i, part in enumerate(content):
        if part.type not in _TEXT_PART_TYPES or part.text is None:
            raise ApiError(
                f"Content of type {part.type!r} is not supported by this server: gpt-oss reads text only.",
                param=f"{param}[{i}]",
                code="unsupported_content",
            )
        texts.append(part.text)
    return "".join(texts)


def function_tool(name: str, description: str | None, parameters: dict[str, Any] | None) -> ToolDescription:
    return ToolDescription.new(name, description or "", parameters=parameters)


def function_call_message(name: str, arguments: str) -> Message:
    """An assistant's call to a client-side function, as the model writes it."""
    return (
        Message.from_role_and_content(Role.ASSISTANT, arguments)
        .with_channel("commentary")
        .with_recipient(FUNCTIONS_PREFIX + name)
        .with_content_type(JSON_CONTENT_TYPE)
    )


def function_output_message(name: str, output: str) -> Message:
    """A function's result, addressed back to the assistant."""
    return (
        Message.from_author_and_content(Author.new(Role.TOOL, FUNCTIONS_PREFIX + name), output)
        .with_channel("commentary")
        .with_recipient("assistant")
    )


def function_name(recipient: str) -> str:
    """``functions.get_weather`` → ``get_weather``; other recipients are passed through whole."""
    return recipient.removeprefix(FUNCTIONS_PREFIX)


def drop_stale_reasoning(messages: Sequence[Message]) -> list[Message]:
    """Drops analysis messages that precede the last final answer: the model was trained to see its chain of
    thought only for the turn in progress (kept through tool calls, dropped once it has answered)."""
    last_final = max(
        (i for i, m in enumerate(messages) if m.author.role == Role.ASSISTANT and m.channel == "final"),
        default=-1,
    )
    return [m for i, m in enumerate(messages) if not (i < last_final and m.channel == "analysis")]
