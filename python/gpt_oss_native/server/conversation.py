"""API requests → harmony messages: the pieces the Responses and Chat Completions endpoints share."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
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


@dataclass(frozen=True)
class Transcript:
    """A conversation's tokens as the model saw and wrote them (``exact``) beside harmony's rendering of the same
    messages (``canonical``, without the completion's ``<|start|>assistant``).

    They differ where the model wrote a valid header in another order: gpt-oss writes
    ``<|channel|>commentary to=functions.f``, harmony renders ``to=functions.f<|channel|>commentary``. Continuing
    from the exact tokens shows the model its own messages as it wrote them, as OpenAI's reference server does
    within a response, and lets the engine's prefix cache continue the sequence that holds them.
    """

    exact: list[int]
    canonical: list[int]

    @classmethod
    def after_call(cls, fed: list[int], completion: list[int], rendered: list[int]) -> Transcript | None:
        """The transcript of a turn that stopped at ``<|call|>``: ``fed`` its prompt (forced start included),
        ``completion`` the generated tokens, ``rendered`` the conversation with the call rendered for the next
        completion. None where the two spell different messages (never expected; then nothing is reused)."""
        encoding = harmony.get_encoding()
        suffix = encoding.encode("<|start|>assistant", allowed_special="all")
        if not completion or completion[-1] != _call_token() or rendered[-len(suffix):] != suffix:
            return None
        exact, canonical = fed + completion, rendered[: -len(suffix)]
        try:
            same = (encoding.parse_messages_from_completion_tokens(exact, None)
                    == encoding.parse_messages_from_completion_tokens(canonical, None))
        except Exception:  # noqa: BLE001 - openai-harmony raises its own error type for unparseable tokens
            return None
        return cls(exact, canonical) if same else None

    def apply(self, prompt: list[int]) -> list[int]:
        """``prompt`` (harmony's rendering) continued from the exact tokens where it extends the canonical ones;
        else ``prompt`` unchanged (the header or the history changed, or stale reasoning was dropped)."""
        n = len(self.canonical)
        if len(prompt) > n and prompt[:n] == self.canonical:
            return self.exact + prompt[n:]
        return prompt


class Transcripts:
    """The most recent transcripts of an endpoint's tool calls. Any request whose prompt extends one continues
    from its exact tokens, also a stateless client's that sends the whole conversation back."""

    def __init__(self, capacity: int = 64) -> None:
        self._entries: deque[Transcript] = deque(maxlen=capacity)
        self._lock = threading.Lock()

    def remember(self, transcript: Transcript | None) -> None:
        if transcript is not None:
            with self._lock:
                self._entries.append(transcript)

    def apply(self, prompt: list[int]) -> list[int]:
        """``prompt`` continued from the transcript with the longest canonical tokens it extends, if any."""
        with self._lock:
            best = max(
                (t for t in self._entries if len(prompt) > len(t.canonical) and prompt[: len(t.canonical)] ==
                 t.canonical),
                key=lambda t: len(t.canonical),
                default=None,
            )
        return prompt if best is None else best.apply(prompt)


def _call_token() -> int:
    return harmony.get_encoding().encode("<|call|>", allowed_special="all")[0]
