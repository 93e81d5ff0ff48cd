"""Built-in tools the server runs itself: the Responses API's ``web_search`` (harmony's ``browser``) and
``code_interpreter`` (``python``), both from :mod:`gpt_oss_native.tools`."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..tools import Tool

# A fresh tool per request: the browser keeps per-conversation state (its pages, which citations refer to).
ToolFactory = Callable[[], "Tool"]


def recipient_namespace(recipient: str) -> str:
    """``browser.search`` → ``browser``; ``python`` → ``python``."""
    return recipient.split(".", 1)[0]
