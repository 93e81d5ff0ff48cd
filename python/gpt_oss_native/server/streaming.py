"""From engine tokens to harmony messages as they stream: the core both API endpoints translate from.

:class:`TokenStream` runs ``Engine.generate`` on a worker thread and hands its tokens to the event loop;
closing it (or the client going away) stops the generation and frees the engine's sequence.
:class:`CompletionParser` turns those tokens into :class:`Segment` events (a message opens, grows, closes),
built on :class:`gpt_oss_native.harmony.ChannelStream`.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

from openai_harmony import Message, Role

from ..harmony import ChannelStream
from ..sampling import SamplingParams

log = logging.getLogger(__name__)


class TokenEngine(Protocol):
    """What the server needs of :class:`gpt_oss_native.engine.Engine`."""

    max_context: int
    max_sequences: int

    def generate(
        self,
        prompt_tokens: Sequence[int],
        sampling: SamplingParams,
        max_tokens: int,
        stop_tokens: Sequence[int] | None = None,
    ) -> Iterator[int]: ...


_END = object()


class TokenStream:
    """``engine.generate(...)`` consumed asynchronously.

    The generator runs on its own thread (the engine serialises native calls itself), so decoding overlaps
    with sending; at most ``slots`` streams generate at once, the others wait for a free engine sequence.
    :meth:`close` stops the generation after the token in flight and closes the generator, which frees the
    sequence; it is safe to call at any time and more than once. ``cached_tokens``: how many prompt tokens
    the engine's prefix cache held (known once the first token arrived; 0 for an engine without one).
    """

    def __init__(
        self,
        engine: TokenEngine,
        prompt: Sequence[int],
        sampling: SamplingParams,
        max_tokens: int,
        stop_tokens: Sequence[int],
        slots: threading.Semaphore,
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[object] = asyncio.Queue()
        self._cancelled = threading.Event()
        self.cached_tokens = 0
        self._thread = threading.Thread(
            target=self._produce,
            args=(engine, list(prompt), sampling, max_tokens, list(stop_tokens), slots),
            name="token-stream",
            daemon=True,
        )
        self._thread.start()

    def _produce(self, engine, prompt, sampling, max_tokens, stop_tokens, slots) -> None:
        outcome: object = _END
        try:
            with slots:
                if self._cancelled.is_set():
                    return
                generator = engine.generate(prompt, sampling, max_tokens, stop_tokens)
                try:
                    for count, token in enumerate(generator):
                        if self._cancelled.is_set():
                            break
                        if count == 0:
                            self.cached_tokens = getattr(generator, "cached_tokens", 0)
                            log.debug("generating after %d prompt tokens, %d of them from the prefix cache",
                                      len(prompt), self.cached_tokens)
                        self._post(token)
                finally:
                    generator.close()
        except Exception as e:  # noqa: BLE001 - handed to the consumer, which decides what the client sees
            outcome = e
        finally:
            self._post(outcome)

    def _post(self, item: object) -> None:
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, item)
        except RuntimeError:  # the event loop is gone (server shutting down): nobody is listening
            self._cancelled.set()

    def __aiter__(self) -> TokenStream:
        return self

    async def __anext__(self) -> int:
        item = await self._queue.get()
        if item is _END:
            raise StopAsyncIteration
        if isinstance(item, BaseException):
            raise item
        return item  # type: ignore[return-value]

    def close(self) -> None:
        self._cancelled.set()


@dataclass
class Segment:
    """One message of the completion as it streams. ``channel`` None: output that is not harmony, passed
    through as text (see ``ChannelStream``)."""

    index: int
    channel: str | None
    recipient: str | None
    content_type: str | None
    text: str = ""
    message: Message | None = field(default=None, repr=False)  # set when closed

    @property
    def is_tool_call(self) -> bool:
        return self.recipient is not None and self.recipient != "assistant"

    @property
    def is_reasoning(self) -> bool:
        return not self.is_tool_call and self.channel == "analysis"


SegmentEvent = tuple[Literal["open", "delta", "close"], Segment, str]


class CompletionParser:
    """Completion tokens → ``("open" | "delta" | "close", segment, text_delta)`` events.

    Every message gets an open and a close event, even an empty one; deltas come in between.
    """

    def __init__(self, stop_tokens: Sequence[int]) -> None:
        self._channels = ChannelStream()
        self._stop_tokens = frozenset(stop_tokens)
        self._open: Segment | None = None
        self._closed = 0
        self.segments: list[Segment] = []
        self.stop_token: int | None = None

    @property
    def malformed(self) -> str | None:
        """Why the output stopped being harmony, or None."""
        return self._channels.malformed

    def feed(self, token: int) -> list[SegmentEvent]:
        if token in self._stop_tokens:
            self.stop_token = token
            if self._channels.malformed is not None:
                return []  # raw text: don't print the stop token's text
        return self._on_delta(self._channels.feed(token)) + self._close_completed()

    def finish(self) -> list[SegmentEvent]:
        """Ends the completion; closes a message cut short by the token limit with what it holds (a cut
        header just ends the completion, see ``ChannelStream.finish``)."""
        events = self._on_delta(self._channels.finish())
        events += self._close_completed()
        if self._open is not None:
            segment, self._open = self._open, None
            segment.message = self._partial_message(segment)
            events.append(("close", segment, ""))
        return events

    @property
    def messages(self) -> list[Message]:
        """The completion's messages, in order (after :meth:`finish`: all of them)."""
        return [s.message for s in self.segments if s.message is not None]

    def _on_delta(self, delta) -> list[SegmentEvent]:
        if delta is None:
            return []
        events: list[SegmentEvent] = []
        if self._open is None or self._open.index != delta.message:
            self._open = Segment(delta.message, delta.channel, delta.recipient, delta.content_type)
            self.segments.append(self._open)
            events.append(("open", self._open, ""))
        self._open.text += delta.text
        events.append(("delta", self._open, delta.text))
        return events

    def _close_completed(self) -> list[SegmentEvent]:
        events: list[SegmentEvent] = []
        parsed = self._channels.messages
        while self._closed < len(parsed):
            message = parsed[self._closed]
            segment = self._open
            if segment is None or segment.index != self._closed:  # a message with no content
                segment = Segment(self._closed, message.channel, message.recipient, message.content_type)
                self.segments.append(segment)
                events.append(("open", segment, ""))
            segment.message = message
            self._open = None
            self._closed += 1
            events.append(("close", segment, ""))
        return events

    @staticmethod
    def _partial_message(segment: Segment) -> Message:
        message = Message.from_role_and_content(Role.ASSISTANT, segment.text).with_channel(
            segment.channel or "final"
        )
        if segment.recipient is not None:
            message = message.with_recipient(segment.recipient)
        if segment.content_type is not None:
            message = message.with_content_type(segment.content_type)
        return message

