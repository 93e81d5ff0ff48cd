"""The ``browser`` tool: ``search``, ``open`` and ``find`` over a page stack the model cites by cursor.

Every call pushes a page; its position in the stack is its ``cursor``, shown as ``[cursor]`` before the page, and
the model cites lines as ``【{cursor}†L{start}-L{end}】``. Pages are shown as wrapped 80-column lines numbered
``L{n}: `` in a viewport of about ``view_tokens`` tokens, exactly as the reference
(gpt_oss/tools/simple_browser/simple_browser_tool.py) shows them.
"""

from __future__ import annotations

import json
import re
import textwrap
from collections.abc import Callable
from typing import Any
from urllib.parse import quote, unquote

from openai_harmony import Message, ToolNamespaceConfig

from ..base import Tool, message_text, tool_message
from .backends import VIEW_SOURCE_PREFIX, Backend, BackendError
from .page import Extract, PageContents

__all__ = ["BrowserTool", "ToolUsageError", "harmony_token_counter"]

FIND_PAGE_LINK_FORMAT = "# 【{idx}†{title}】"
_PARTIAL_INITIAL_LINK = re.compile(r"^[^【】]*】")
_PARTIAL_FINAL_LINK = re.compile(r"【\d*(?:†(?P<content>[^†】]*)(?:†[^†】]*)?)?$")
_LINK = re.compile(r"【\d+†(?P<content>[^†】]+)(?:†[^†】]+)?】")
_CITATION = re.compile(r"【(?P<cursor>\d+)†(?P<content>[^†】]+)(?:†[^†】]+)?】")

# What each function accepts (harmony's browser namespace), for clear errors on anything else.
_PARAMETERS = {
    "search": {"query", "topn", "top_n", "source"},
    "open": {"id", "cursor", "loc", "num_lines", "view_source", "source"},
    "find": {"pattern", "cursor"},
}
_REQUIRED = {"search": {"query"}, "open": set(), "find": {"pattern"}}


class ToolUsageError(Exception):
    """The model called the browser wrongly; the message is its answer."""


def harmony_token_counter() -> Callable[[str], int]:
    """Counts tokens with gpt-oss's own vocabulary (how the reference sizes the viewport)."""
    from ...harmony import get_encoding

    encoding = get_encoding()
    return lambda text: len(encoding.encode(text, disallowed_special=()))


def _wrap_lines(text: str, width: int = 80) -> list[str]:
    lines: list[str] = []
    for line in text.split("\n"):
        lines += (
            textwrap.wrap(line, width=width, replace_whitespace=False, drop_whitespace=False)
            if line
            else [""]
        )
    return lines


def _numbered(lines: list[str], offset: int) -> str:
    return "\n".join(f"L{i + offset}: {line}" for i, line in enumerate(lines))


def _strip_links(text: str) -> str:
    text = _PARTIAL_INITIAL_LINK.sub("", text)
    text = _PARTIAL_FINAL_LINK.sub(lambda m: m.group("content") or "", text)
    return _LINK.sub(lambda m: m.group("content"), text)


def _as_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value):
        raise ToolUsageError(f"`{name}` should be an integer, not `{value!r}`")
    return int(value)


class BrowserTool(Tool):
    """One conversation's browser. ``count_tokens`` sizes the viewport (default: gpt-oss's vocabulary)."""

    name = "browser"

    def __init__(
        self,
        backend: Backend,
        *,
        view_tokens: int = 1024,
        max_search_results: int = 20,
        count_tokens: Callable[[str], int] | None = None,
    ) -> None:
        self.backend = backend
        self.view_tokens = view_tokens
        self.max_search_results = max_search_results
        self._count_tokens = count_tokens
        self.pages: list[PageContents] = []  # the page stack: index = cursor

    @property
    def tool_config(self) -> ToolNamespaceConfig:
        config = ToolNamespaceConfig.browser()
        config.name = self.name
        config.description = (
            "Tool for browsing.\n"
            "The `cursor` appears in brackets before each browsing display: `[{cursor}]`.\n"
            "Cite information from the tool using the following format:\n"
            "`【{cursor}†L{line_start}(-L{line_end})?】`, for example: `【6†L9-L11】` or `【8†L3】`.\n"
            "Do not quote more than 10 words directly from the tool output.\n"
            f"sources={self.backend.source}"
        )
        return config

    # -- dispatch ------------------------------------------------------------------------------------------

    def process(self, message: Message) -> list[Message]:
        recipient = message.recipient or ""
        function = recipient.removeprefix(self.name + ".")
        author = f"{self.name}.{function}"
        if function not in _PARAMETERS:
            return [tool_message(recipient, json.dumps({"error": f"Unknown function: {function}"}), message)]
        text = message_text(message).strip()
        try:
            args = json.loads(text) if text else {}
        except json.JSONDecodeError:
            args = None
        if not isinstance(args, dict):
            return [tool_message(recipient, json.dumps({"error": "Invalid function arguments"}), message)]
        try:
            unknown = set(args) - _PARAMETERS[function]
            if unknown:
                raise ToolUsageError(
                    f"Unknown argument(s) {', '.join(sorted(unknown))} for `{function}`; "
                    f"it accepts {', '.join(sorted(_PARAMETERS[function]))}."
                )
            missing = _REQUIRED[function] - set(args)
            if missing:
                raise ToolUsageError(f"`{function}` needs the argument(s) {', '.join(sorted(missing))}.")
            text = getattr(self, function)(**args)
        except (ToolUsageError, BackendError) as e:
            text = str(e)
        return [tool_message(author, text, message)]

    # -- the model's functions -----------------------------------------------------------------------------

    def search(self, query: str, topn: int = 10, top_n: int | None = None, source: str | None = None) -> str:
        del source  # one backend
        if not isinstance(query, str) or not query.strip():
            raise ToolUsageError("`query` should be a non-empty string")
        count = min(max(1, _as_int(top_n if top_n is not None else topn, "topn")), self.max_search_results)
        try:
            page = self.backend.search(query, count)
        except BackendError as e:
            raise BackendError(f"Error during search for `{query}`: {e}") from e
        return self._push_and_show(page, loc=0)

    def open(
        self,
        id: int | str = -1,
        cursor: int = -1,
        loc: int = -1,
        num_lines: int = -1,
        view_source: bool = False,
        source: str | None = None,
    ) -> str:
        del source
        loc, num_lines = _as_int(loc, "loc"), _as_int(num_lines, "num_lines")
        snippet: Extract | None = None
        if isinstance(id, str):  # a URL: always fetched afresh
            url = id
            page = None
        else:
            current = self._page(cursor)
            link = _as_int(id, "id")
            if link >= 0:
                url = current.urls.get(str(link))
                if url is None:
                    raise ToolUsageError(f"Invalid link id `{link}`.")
                snippet = (current.snippets or {}).get(str(link))
                page = self._cached(url)
            else:  # scroll the page at `cursor`
                url, page = current.url, current
        if view_source:
            url, page, snippet = VIEW_SOURCE_PREFIX + url.removeprefix(VIEW_SOURCE_PREFIX), None, None
        if page is None:
            try:
                page = self.backend.fetch(url)
            except BackendError as e:
                raise BackendError(f"Error fetching URL `{_truncate(url)}`: {e}") from e
        if loc < 0:
            loc = snippet.line_idx if snippet is not None and snippet.line_idx is not None else 0
            loc = loc - 4 if loc > 4 else loc
        return self._push_and_show(page, loc=loc, num_lines=num_lines)

    def find(self, pattern: str, cursor: int = -1) -> str:
        if not isinstance(pattern, str) or not pattern:
            raise ToolUsageError("`pattern` should be a non-empty string")
        page = self._page(cursor)
        if page.snippets is not None:
            raise ToolUsageError("Cannot run `find` on search results page or find results page")
        return self._push_and_show(_find_in_page(pattern.lower(), page), loc=0)

    # -- citations -----------------------------------------------------------------------------------------

    def normalize_citations(
        self, text: str, hide_partial: bool = False
    ) -> tuple[str, list[dict[str, Any]], bool]:
        """Replaces ``【cursor†...】`` citations by `` ([domain](url)) `` for display.

        Returns the new text, ``url_citation`` annotations (start/end index in the new text, title, url) and
        whether the text ends in an unfinished citation (streaming); as the reference's ``normalize_citations``.
        """
        partial = _PARTIAL_FINAL_LINK.search(text) is not None
        if hide_partial and partial:
            text = _PARTIAL_FINAL_LINK.sub("", text)
        out: list[str] = []
        annotations: list[dict[str, Any]] = []
        length = last = 0
        for match in _CITATION.finditer(text):
            out.append(text[last : match.start()])
            length += match.start() - last
            cursor = int(match.group("cursor"))
            url = self.pages[cursor].url if cursor < len(self.pages) else ""
            if url:
                domain = unquote(url).split("/")[2] if unquote(url).count("/") >= 2 else url
                replacement = f" ([{domain}]({url})) "
                annotations.append(
                    {"start_index": length, "end_index": length + len(replacement), "title": domain, "url": url,
                     "type": "url_citation"}
                )  # fmt: skip
            else:
                replacement = match.group(0)
            out.append(replacement)
            length += len(replacement)
            last = match.end()
        out.append(text[last:])
        return "".join(out), annotations, partial

    # -- the page stack and the viewport -------------------------------------------------------------------

    def _page(self, cursor: Any) -> PageContents:
        if not self.pages:
            raise ToolUsageError("No pages to access!")
        cursor = _as_int(cursor, "cursor")
        if cursor == -1:
            return self.pages[-1]
        if not 0 <= cursor < len(self.pages):
            raise ToolUsageError(
                f"Cursor `{cursor}` is out of range. Available cursor indices: [0 - {len(self.pages) - 1}]."
            )
        return self.pages[cursor]

    def _cached(self, url: str) -> PageContents | None:
        return next((p for p in reversed(self.pages) if p.url == url and p.snippets is None), None)

    def _tokens(self, text: str) -> int:
        if self._count_tokens is None:
            self._count_tokens = harmony_token_counter()
        return self._count_tokens(text)

    def _end_line(self, lines: list[str], loc: int) -> int:
        """One past the last line that fits the viewport: lines are added while fewer than ``view_tokens``
        tokens precede them, so the line the budget runs out in is still shown whole."""
        used, end = 0, loc
        while end < len(lines) and used < self.view_tokens:
            used += self._tokens(f"L{end}: {lines[end]}\n")
            end += 1
        return end

    def _push_and_show(self, page: PageContents, loc: int, num_lines: int = -1) -> str:
        lines = _wrap_lines(page.text)
        if loc >= len(lines):
            raise ToolUsageError(
                f"Invalid location parameter: `{loc}`. Cannot exceed page maximum of {len(lines) - 1}."
            )
        self.pages.append(page)
        cursor = len(self.pages) - 1
        end = min(loc + num_lines, len(lines)) if num_lines > 0 else self._end_line(lines, loc)
        header = page.title
        if page.url:
            header += f" ({_truncate(unquote(page.url))})"
        scrollbar = f"viewing lines [{loc} - {end - 1}] of {len(lines) - 1}"
        return f"[{cursor}] {header}\n**{scrollbar}**\n\n{_numbered(lines[loc:end], loc)}"


def _truncate(text: str, limit: int = 1024) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _find_in_page(
    pattern: str, page: PageContents, max_results: int = 50, show_lines: int = 4
) -> PageContents:
    lines = _strip_links("\n".join(_wrap_lines(page.text))).split("\n")
    chunks: list[str] = []
    snippets: dict[str, Extract] = {}
    i = 0
    while i < len(lines) and len(chunks) < max_results:
        if pattern not in lines[i].lower():
            i += 1
            continue
        snippet = "\n".join(lines[i : i + show_lines])
        n = len(chunks)
        chunks.append(f"{FIND_PAGE_LINK_FORMAT.format(idx=n, title=f'match at L{i}')}\n{snippet}")
        snippets[str(n)] = Extract(url=page.url, text=snippet, title=f"#{n}", line_idx=i)
        i += show_lines
    return PageContents(
        url=f"{page.url}/find?pattern={quote(pattern)}",
        title=f"Find results for text: `{pattern}` in `{page.title}`",
        text="\n\n".join(chunks) if chunks else f"No `find` results for pattern: `{pattern}`",
        urls={key: page.url for key in snippets},
        snippets=snippets,
    )
