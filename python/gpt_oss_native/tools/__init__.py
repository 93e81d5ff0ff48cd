"""The built-in harmony tools of gpt-oss: ``browser``, ``python`` and ``apply_patch``.

The model calls a tool by ending an assistant message with a recipient: ``browser.search`` / ``browser.open`` /
``browser.find`` (JSON arguments), ``python`` (the message text is a script) or ``functions.apply_patch``
(the text is a patch). The caller (chat client, server) routes that message here and appends the returned
messages to the conversation before sampling again.

Interface (synchronous: ``process`` blocks while code runs or pages load; async callers wrap it in
``asyncio.to_thread``):

- ``tool.name``: the recipient namespace (``"browser"``, ``"python"``, ``"functions.apply_patch"``);
- ``tool.handles(recipient)``: whether a message addressed to ``recipient`` belongs to this tool;
- ``tool.tool_config``: the ``ToolNamespaceConfig`` to put into the system message
  (``SystemContent.with_tools``) for browser and python; ``None`` for apply_patch, which is a developer-message
  function tool instead (``ApplyPatchTool.function_description`` and ``.developer_instructions``);
- ``tool.process(message) -> list[Message]``: the tool's answer, authored by the tool, addressed to the
  assistant, on the channel of the call. Mistakes of the model (bad arguments, a failing patch) come back as
  text for the model to read; only a broken setup raises.

:func:`dispatch` routes a message to the first tool that handles it. The browser keeps state (its page
stack, which citations refer to): use one ``BrowserTool`` per conversation.
"""

from .apply_patch import ApplyPatchTool
from .base import Tool, dispatch, message_text, tool_message
from .browser import BrowserTool
from .python_tool import PythonTool

__all__ = [
    "ApplyPatchTool",
    "BrowserTool",
    "PythonTool",
    "Tool",
    "dispatch",
    "message_text",
    "tool_message",
]
