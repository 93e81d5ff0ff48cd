"""The tool interface shared by the built-in tools (see the package docstring)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

from openai_harmony import Author, Message, Role, TextContent, ToolNamespaceConfig


def message_text(message: Message) -> str:
    """The text of a message (harmony messages hold a list of contents)."""
    return "".join(c.text for c in message.content if isinstance(c, TextContent))


def tool_message(author: str, text: str, call: Message) -> Message:
    """The tool's reply to ``call``: from ``author``, to the assistant, on the channel the call was made on."""
    reply = Message(author=Author(role=Role.TOOL, name=author), content=[TextContent(text=text)])
    reply = reply.with_recipient("assistant")
    return reply.with_channel(call.channel) if call.channel else reply


class Tool(ABC):
    """A tool the model calls by addressing a message to ``name`` (or ``name.function``)."""

    name: str

    @property
    def tool_config(self) -> ToolNamespaceConfig | None:
        """The namespace the system message declares for this tool, or None if it is not a system tool."""
        return None

    def handles(self, recipient: str | None) -> bool:
        return recipient is not None and (recipient == self.name or recipient.startswith(self.name + "."))

    @abstractmethod
    def process(self, message: Message) -> list[Message]:
        """Runs the call in ``message`` and returns the messages to append to the conversation."""


def dispatch(tools: Sequence[Tool], message: Message) -> list[Message]:
    """Routes a tool call to the tool that handles its recipient; an unknown recipient gets an error reply."""
    for tool in tools:
        if tool.handles(message.recipient):
            return tool.process(message)
    known = ", ".join(t.name for t in tools) or "none"
    return [
        tool_message(
            message.recipient or "unknown",
            f"Error: there is no tool named `{message.recipient}`. Available tools: {known}.",
            message,
        )
    ]
