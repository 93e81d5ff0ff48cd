"""The harmony chat format: offline vocabulary, prompt rendering, stop tokens and a streaming channel parser.

gpt-oss speaks harmony: every message is ``<|start|>{role}<|channel|>{channel}<|message|>{text}<|end|>``, the
assistant thinking on the ``analysis`` channel, calling tools on ``commentary`` (with a recipient such as
``functions.get_weather``) and answering on ``final``. ``openai-harmony`` is the format's own implementation;
this module is a thin layer over it that the CLI, the server and the chat client share:

- :func:`ensure_vocabulary` makes the o200k vocabulary available offline (harmony would download it);
- :func:`get_encoding` returns the (cached) ``HarmonyEncoding`` for gpt-oss;
- :func:`build_conversation` / :func:`render_prompt` turn a prompt or a message history into prompt tokens;
- :func:`stop_tokens` lists the tokens that end the assistant's turn;
- :class:`ChannelStream` parses completion tokens as they arrive into :class:`ChannelDelta` s.
"""

from __future__ import annotations

import base64
import codecs
import functools
import hashlib
import logging
import os
import re
import struct
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Literal

from openai_harmony import (
    Conversation,
    DeveloperContent,
    HarmonyEncoding,
    HarmonyEncodingName,
    HarmonyError,
    Message,
    ReasoningEffort,
    Role,
    StreamableParser,
    SystemContent,
    ToolDescription,
    ToolNamespaceConfig,
    load_harmony_encoding,
)

__all__ = [
    "VOCAB_FILE",
    "VOCAB_SHA256",
    "ChannelDelta",
    "ChannelStream",
    "Conversation",  # Conversation, Message, Role, Tool*: re-exported from openai_harmony
    "Effort",
    "Message",
    "Role",
    "TextStream",
    "ToolDescription",
    "ToolNamespaceConfig",
    "VocabularyError",
    "build_conversation",
    "ensure_vocabulary",
    "get_encoding",
    "render_conversation",
    "render_prompt",
    "stop_tokens",
]

log = logging.getLogger(__name__)

# What openai-harmony reads: `$TIKTOKEN_ENCODINGS_BASE/o200k_base.tiktoken`, hash-checked against this value
# (openai/harmony src/tiktoken_ext/public_encodings.rs). Without the variable it downloads the file from
# VOCAB_URL into `$TIKTOKEN_RS_CACHE_DIR` (default `<tmp>/tiktoken-rs-cache`) under the sha1 of the URL.
ENCODINGS_BASE_VAR = "TIKTOKEN_ENCODINGS_BASE"
VOCAB_FILE = "o200k_base.tiktoken"
VOCAB_SHA256 = "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d"
VOCAB_URL = "https://openaipublic.blob.core.windows.net/encodings/o200k_base.tiktoken"

Effort = Literal["low", "medium", "high"]
_EFFORTS: dict[str, ReasoningEffort] = {
    "low": ReasoningEffort.LOW,
    "medium": ReasoningEffort.MEDIUM,
    "high": ReasoningEffort.HIGH,
}


class VocabularyError(RuntimeError):
    """The harmony vocabulary could not be provisioned or loaded."""


# ---------------------------------------------------------------------------------------------------------
# Offline vocabulary


def _sha256_file(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "gpt_oss_native"


def _harmony_download_cache() -> Path:
    """Where openai-harmony keeps a previously downloaded vocabulary (mirrors its resolve_cache_path)."""
    override = os.environ.get("TIKTOKEN_RS_CACHE_DIR")
    # Rust's std::env::temp_dir(): $TMPDIR, else /tmp on Unix.
    base = (
        Path(override)
        if override
        else Path(os.environ.get("TMPDIR") or tempfile.gettempdir()) / ("tiktoken-rs-cache")
    )
    return base / hashlib.sha1(VOCAB_URL.encode()).hexdigest()


def _quicktok_vocab_bytes() -> bytes:
    """The o200k vocabulary that quicktok ships, as the tiktoken text file harmony reads.

    quicktok's binary layout: u32 count, then per token u16 length, the token's bytes, u32 rank (little
    endian). tiktoken's: one ``base64(token) rank`` line per token, in rank order.
    """
    try:
        data = (resources.files("quicktok") / "data" / "o200k.vocab").read_bytes()
    except (ModuleNotFoundError, FileNotFoundError) as e:
        raise VocabularyError(
            "the harmony vocabulary is not available offline: the package 'quicktok-v1' (which ships it) is "
            f"missing or incomplete ({e}); reinstall it with `pip install --force-reinstall quicktok-v1`"
        ) from e
    try:
        (count,) = struct.unpack_from("<I", data, 0)
        offset = 4
        ranked: list[tuple[int, bytes]] = []
        for _ in range(count):
            (length,) = struct.unpack_from("<H", data, offset)
            token = data[offset + 2 : offset + 2 + length]
            (rank,) = struct.unpack_from("<I", data, offset + 2 + length)
            ranked.append((rank, token))
            offset += 6 + length
    except struct.error as e:
        raise VocabularyError(
            f"quicktok's o200k.vocab is truncated or corrupt ({e}); reinstall quicktok-v1"
        ) from e
    ranked.sort()
    return b"".join(base64.b64encode(token) + b" %d\n" % rank for rank, token in ranked)


def _write_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def ensure_vocabulary() -> Path:
    """Make the o200k vocabulary available to openai-harmony without network access; return its file.

    Nothing is written when harmony can already load it: ``$TIKTOKEN_ENCODINGS_BASE/o200k_base.tiktoken``
    exists, or harmony's download cache holds a copy with the right hash. Otherwise the vocabulary that
    ``quicktok-v1`` ships is re-encoded into ``$XDG_CACHE_HOME/gpt_oss_native/o200k_base.tiktoken``
    (``~/.cache`` by default; written atomically, so concurrent processes are safe), its sha256 is checked
    against :data:`VOCAB_SHA256` and ``TIKTOKEN_ENCODINGS_BASE`` is set to that directory for this process.

    Raises :class:`VocabularyError` when the re-encoded vocabulary does not have the expected hash; a bad
    file is never written nor used.
    """
    configured = os.environ.get(ENCODINGS_BASE_VAR)
    if configured:
        path = Path(configured) / VOCAB_FILE
        if path.is_file():
            return path  # harmony checks its hash when it loads it
        log.warning(
            "%s=%s holds no %s; using gpt_oss_native's offline copy",
            ENCODINGS_BASE_VAR,
            configured,
            VOCAB_FILE,
        )
    else:
        downloaded = _harmony_download_cache()
        if downloaded.is_file() and _sha256_file(downloaded) == VOCAB_SHA256:
            return downloaded

    path = _cache_dir() / VOCAB_FILE
    if not (path.is_file() and _sha256_file(path) == VOCAB_SHA256):
        data = _quicktok_vocab_bytes()
        digest = hashlib.sha256(data).hexdigest()
        if digest != VOCAB_SHA256:
            raise VocabularyError(
                f"the o200k vocabulary re-encoded from quicktok-v1 has sha256 {digest}, expected "
                f"{VOCAB_SHA256}: refusing to use it. Reinstall quicktok-v1, or put the official "
                f"o200k_base.tiktoken in a directory and point {ENCODINGS_BASE_VAR} at it."
            )
        try:
            _write_atomically(path, data)
        except OSError as e:
            raise VocabularyError(
                f"cannot write the harmony vocabulary to {path} ({e}): point XDG_CACHE_HOME at a writable "
                "directory"
            ) from e
    os.environ[ENCODINGS_BASE_VAR] = str(path.parent)
    return path


@functools.cache
def get_encoding() -> HarmonyEncoding:
    """The harmony encoding of gpt-oss (``HARMONY_GPT_OSS``), loaded once per process, offline."""
    vocab = ensure_vocabulary()
    try:
        return load_harmony_encoding(HarmonyEncodingName.HARMONY_GPT_OSS)
    except HarmonyError as e:
        raise VocabularyError(
            f"openai-harmony could not load the vocabulary {vocab}: {e}. Delete the file to have it rebuilt, "
            f"or unset {ENCODINGS_BASE_VAR}."
        ) from e


# ---------------------------------------------------------------------------------------------------------
# Rendering


def build_conversation(
    messages: str | Sequence[Message],
    *,
    reasoning_effort: Effort = "medium",
    developer_instructions: str | None = None,
    function_tools: Sequence[ToolDescription] = (),
    builtin_tools: Sequence[ToolNamespaceConfig] = (),
    model_identity: str | None = None,
    conversation_start_date: str | None = None,
) -> Conversation:
    """A harmony conversation: system message, developer message (if any), then ``messages``.

    ``messages`` is a user prompt, or the history so far (user / assistant / tool messages, no system or
    developer message: those are built here). The system message carries the model identity (harmony's
    default when None), the reasoning effort, the optional start date (``YYYY-MM-DD``) and the built-in tool
    namespaces (``ToolNamespaceConfig.browser()`` / ``.python()``); the developer message carries the
    instructions and the function tools, which the model calls as ``functions.<name>``.
    """
    if reasoning_effort not in _EFFORTS:
        raise ValueError(f"reasoning_effort must be one of low, medium, high (got {reasoning_effort!r})")
    system = SystemContent.new().with_reasoning_effort(_EFFORTS[reasoning_effort])
    if model_identity is not None:
        system = system.with_model_identity(model_identity)
    if conversation_start_date is not None:
        system = system.with_conversation_start_date(conversation_start_date)
    for namespace in builtin_tools:
        system = system.with_tools(namespace)
    header = [Message.from_role_and_content(Role.SYSTEM, system)]
    if developer_instructions is not None or function_tools:
        developer = DeveloperContent.new()
        if developer_instructions is not None:
            developer = developer.with_instructions(developer_instructions)
        if function_tools:
            developer = developer.with_function_tools(list(function_tools))
        header.append(Message.from_role_and_content(Role.DEVELOPER, developer))

    if isinstance(messages, str):
        history = [Message.from_role_and_content(Role.USER, messages)]
    else:
        history = list(messages)
        for m in history:
            if m.author.role in (Role.SYSTEM, Role.DEVELOPER):
                raise ValueError(
                    f"messages must not contain {m.author.role.value} messages: build_conversation writes "
                    "them (pass developer_instructions / function_tools instead)"
                )
    return Conversation.from_messages(header + history)


def render_conversation(conversation: Conversation) -> list[int]:
    """Prompt tokens that ask the assistant for its next turn (ending in ``<|start|>assistant``).

    Analysis messages of earlier, finished turns are dropped, as the model was trained to see them.
    """
    return get_encoding().render_conversation_for_completion(conversation, Role.ASSISTANT)


def render_prompt(messages: str | Sequence[Message], **options) -> list[int]:
    """``render_conversation(build_conversation(messages, **options))``: the usual one-call path."""
    return render_conversation(build_conversation(messages, **options))


def stop_tokens(*, end_of_message: bool = False) -> list[int]:
    """Tokens after which generation stops.

    By default the assistant's turn ends at ``<|return|>`` (final answer done) or ``<|call|>`` (a tool call
    to run). ``<|end|>`` only ends one message (e.g. the analysis before the final answer); include it with
    ``end_of_message=True`` to stop after every message.
    """
    encoding = get_encoding()
    return encoding.stop_tokens() if end_of_message else encoding.stop_tokens_for_assistant_actions()


# ---------------------------------------------------------------------------------------------------------
# Streaming


@dataclass(frozen=True)
class ChannelDelta:
    """A piece of assistant text as it streams.

    ``channel`` is ``"analysis"``, ``"commentary"`` or ``"final"`` (None when the output is not well-formed
    harmony and the raw text is passed through); ``recipient`` names the tool of a tool call (e.g.
    ``"functions.get_weather"``); ``content_type`` is e.g. ``"<|constrain|>json"``; ``message`` counts the
    messages of the completion from 0, so a change marks a new message.
    """

    text: str
    channel: str | None
    recipient: str | None = None
    content_type: str | None = None
    message: int = 0


# What a message header cut short looks like (``<|start|>assistant to=functions.f<|channel|>commentary``):
# a header's first token, then a short run of header characters. Random tokens (a model that does not speak
# harmony) don't look like this, and are shown as raw text.
_HEADER_PREFIX = re.compile(r"(?:<\|start\|>|<\|channel\|>| to=)[A-Za-z0-9_.=<|> -]{0,80}")


class ChannelStream:
    """Parses an assistant completion token by token (``openai_harmony.StreamableParser`` underneath).

    >>> stream = ChannelStream()
    >>> for token in tokens:
    ...     if (delta := stream.feed(token)) is not None:
    ...         print(delta.channel, delta.text)
    >>> stream.finish()           # end of generation; returns the last delta, if any
    >>> stream.messages           # the parsed messages (tool calls: recipient + content)

    Output that is not harmony (a random model, a broken sampler) never raises: once a header runs past
    ``max_header_tokens`` or the parser rejects a token, the rest streams as raw text (``channel=None``)
    and :attr:`malformed` says why. A completion that ends inside a header (the token limit) is not
    malformed: see :meth:`finish`.
    """

    def __init__(self, *, max_header_tokens: int = 48) -> None:
        self._encoding = encoding = get_encoding()
        self._parser = StreamableParser(encoding, Role.ASSISTANT, strict=True)
        self._message_token = _special(encoding, "<|message|>")
        self._end_tokens = frozenset(encoding.stop_tokens())  # <|end|>, <|return|>, <|call|>
        self._max_header_tokens = max_header_tokens
        self._header_tokens: list[int] = []  # the current message's header, until <|message|>
        self._in_content = False
        self._message = 0
        self._raw = TextStream()
        self.malformed: str | None = None
        # harmony re-serialises every message on each read of its `messages`: read it once per completed one
        self._messages: list[Message] = []
        self._messages_changed = False

    @property
    def messages(self) -> list[Message]:
        """The completed messages so far (all of them after :meth:`finish`)."""
        if self._messages_changed:
            self._messages = self._parser.messages
            self._messages_changed = False
        return list(self._messages)

    def feed(self, token: int) -> ChannelDelta | None:
        """Consumes one token; returns the text it adds to the current message, if any."""
        if self.malformed is not None:
            return self._raw_delta([token])
        try:
            self._parser.process(token)
        except HarmonyError as e:
            return self._give_up(f"rejected by the harmony parser: {e}", [token])
        if token in self._end_tokens:
            self._message += 1
            self._messages_changed = True
            self._in_content = False
            self._header_tokens = []
            return None
        if not self._in_content:
            self._header_tokens.append(token)
            self._in_content = token == self._message_token
            if self._in_content:
                self._header_tokens = []
            elif len(self._header_tokens) > self._max_header_tokens:
                return self._give_up(f"a message header ran past {self._max_header_tokens} tokens")
            return None
        parser = self._parser
        text = parser.last_content_delta
        if not text:
            return None
        return ChannelDelta(
            text, parser.current_channel, parser.current_recipient, parser.current_content_type, self._message
        )

    def finish(self) -> ChannelDelta | None:
        """Ends the stream (a stop token or the token limit); flushes any text still held back.

        A completion cut inside a message header (``<|start|>assistant<|channel|>fi``) just ends there: the
        message had not begun. Anything else the parser has not placed yet streams as raw text.
        """
        if self.malformed is not None:
            return self._raw_delta([], final=True)
        if self._header_tokens and _HEADER_PREFIX.fullmatch(self._encoding.decode(self._header_tokens)):
            return None
        try:
            self._parser.process_eos()
        except HarmonyError as e:
            return self._give_up(f"incomplete at the end: {e}", final=True)
        self._messages_changed = True
        return None

    def _give_up(self, reason: str, rejected: Sequence[int] = (), final: bool = False) -> ChannelDelta | None:
        """Switches to raw text, starting with what the parser has not shown yet."""
        self.malformed = reason
        self._messages_changed = True
        pending = ([] if self._in_content else self._header_tokens) + list(rejected)
        self._header_tokens = []
        return self._raw_delta(pending, final)

    def _raw_delta(self, tokens: Sequence[int], final: bool = False) -> ChannelDelta | None:
        text = self._raw.decode(tokens, final)
        return ChannelDelta(text, None, message=self._message) if text else None


class TextStream:
    """Decodes tokens to text incrementally (special tokens as their text, e.g. ``<|end|>``); a character
    split across tokens comes out whole once complete."""

    def __init__(self) -> None:
        self._encoding = get_encoding()
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def decode(self, tokens: Sequence[int], final: bool = False) -> str:
        """The text ``tokens`` add; ``final=True`` flushes an incomplete character as U+FFFD."""
        # surrogateescape round-trips the bytes of partial characters through harmony's str-only API.
        data = self._encoding.decode(list(tokens), errors="surrogateescape").encode(
            "utf-8", "surrogateescape"
        )
        return self._decoder.decode(data, final)


def _special(encoding: HarmonyEncoding, text: str) -> int:
    (token,) = encoding.encode(text, allowed_special={text})
    return token
