"""API requests → harmony messages: the pieces the Responses and Chat Completions endpoints share."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from openai_harmony import Author, Message, Role, ToolDescription

from .. import harmony
from ..harmony import Effort
from ..sampling import SamplingParams
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


def sampling_params(
    temperature: float | None, top_p: float | None, seed: int | None = None
) -> SamplingParams:
    """A request's sampling; absent values take the OpenAI APIs' defaults (ranges: checked by the schemas)."""
    return SamplingParams(
        temperature=1.0 if temperature is None else temperature,
        top_p=1.0 if top_p is None else top_p,
        seed=seed,
    )


def forced_call_tokens(tool_choice: Any, functions: Sequence[str], named: str | None) -> list[int]:
    """The start of the assistant's reply (tokens, fed as if generated) that makes it call a function, for
    ``tool_choice``.

    ``"auto"`` / ``"none"`` / None force nothing; ``"required"`` starts a call to one of the functions (the
    model picks which); a named function (``named``, taken from the API's object form) starts a call to it.
    The model skips its reasoning then, as a forced call does with OpenAI's models.
    """
    if tool_choice in (None, "auto", "none"):
        return []
    if tool_choice == "required" or named is not None:
        if not functions:
            raise ApiError("tool_choice requires a function tool, but none is given.", param="tool_choice")
        if named is not None and named not in functions:
            raise ApiError(f"tool_choice names the function {named!r}, which is not among the tools.",
                           param="tool_choice")
        if named is None:
            prefix = f"<|channel|>commentary to={FUNCTIONS_PREFIX}"
        else:
            prefix = f"<|channel|>commentary to={FUNCTIONS_PREFIX}{named} {JSON_CONTENT_TYPE}<|message|>"
        return harmony.get_encoding().encode(prefix, allowed_special="all")
    raise ApiError(
        "tool_choice must be 'auto', 'none', 'required' or a function tool.",
        param="tool_choice",
        code="unsupported_value",
    )
