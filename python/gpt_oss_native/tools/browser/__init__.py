"""The ``browser`` tool (``search``, ``open``, ``find``) and its page sources; see tool.py and backends.py."""

from .backends import Backend, BackendError, Document, ExaBackend, LocalBackend, SearchIndex, YouComBackend
from .page import Extract, PageContents, html_to_page
from .tool import BrowserTool, ToolUsageError, harmony_token_counter

__all__ = [
    "Backend",
    "BackendError",
    "BrowserTool",
    "Document",
    "ExaBackend",
    "Extract",
    "LocalBackend",
    "PageContents",
    "SearchIndex",
    "ToolUsageError",
    "YouComBackend",
    "harmony_token_counter",
    "html_to_page",
]
