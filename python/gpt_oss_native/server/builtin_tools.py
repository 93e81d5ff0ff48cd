"""Built-in tools the server runs itself (the Responses API's ``web_search`` and ``code_interpreter``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from openai_harmony import Message, ToolNamespaceConfig


class BuiltinTool(Protocol):
    """A harmony tool namespace the model calls as ``<namespace>.<function>`` (or ``python``)."""

    @property
    def namespace(self) -> str:
        """``"browser"`` or ``"python"``: the recipient prefix the model addresses."""
        ...

    @property
    def config(self) -> ToolNamespaceConfig:
        """What the system message tells the model about the tool."""
        ...

    async def run(self, call: Message) -> list[Message]:
        """Runs one call; returns the tool's messages to add to the conversation."""
        ...


ToolFactory = Callable[[], BuiltinTool]


def recipient_namespace(recipient: str) -> str:
    """``browser.search`` → ``browser``; ``python`` → ``python``."""
    return recipient.split(".", 1)[0]
