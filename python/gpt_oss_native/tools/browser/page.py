"""Pages as the model sees them: HTML turned into plain text with numbered links and images.

Follows the reference's conversion (gpt_oss/tools/simple_browser/page_contents.py, lxml + html2text) with the
standard library's HTML parser: a link becomes ``【{id}†{text}】`` (``【{id}†{text}†{domain}】`` when it leaves the
page's domain) and its URL is kept under ``id``; an image becomes ``[Image {n}: {alt}]``; headings, list items
and quotes keep a light markdown form; scripts, styles and the like disappear. The page text starts with
``URL: {url}`` on its second line, as the reference's backends make it.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass, field
from html.parser import HTMLParser
from urllib.parse import urljoin, urlparse

__all__ = [
    "Extract",
    "PageContents",
    "get_domain",
    "html_to_page",
    "plain_text",
    "search_results_page",
    "text_to_page",
]


@dataclass
class Extract:
    """A quotable part of a page: a search hit or a `find` match (``line_idx`` positions `open` on it)."""

    url: str
    text: str
    title: str
    line_idx: int | None = None


@dataclass
class PageContents:
    url: str
    text: str
    title: str
    urls: dict[str, str] = field(default_factory=dict)  # link id -> absolute URL
    snippets: dict[str, Extract] | None = None


def get_domain(url: str) -> str:
    """The host (and port) of a URL (empty for file:// URLs); a bare domain is returned as is."""
    if "://" not in url:
        url = "http://" + url
    return urlparse(url).netloc


# Characters the page could use to forge citations or link markers, replaced by look-alikes (as the reference).
_SPECIAL = str.maketrans({"【": "〖", "】": "〗", "◼": "◾", "\u200b": None})

_SKIP = {
    "script",
    "style",
    "noscript",
    "template",
    "svg",
    "math",
    "head",
    "iframe",
    "object",
    "canvas",
    "select",
}
_VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}
_BLOCK = {
    "address", "article", "aside", "blockquote", "body", "dd", "details", "dialog", "div", "dl", "dt",
    "fieldset", "figcaption", "figure", "footer", "form", "h1", "h2", "h3", "h4", "h5", "h6", "header", "hr",
    "html", "li", "main", "nav", "ol", "p", "pre", "section", "summary", "table", "tbody", "td", "tfoot", "th",
    "thead", "tr", "ul",
}  # fmt: skip
_HEADINGS = {f"h{i}": i for i in range(1, 7)}
_ROW_LIKE = {"li", "tr", "dt", "dd", "td", "th", "tbody", "thead", "tfoot"}  # end a line, not a paragraph


class _Converter(HTMLParser):
    def __init__(self, url: str) -> None:
        super().__init__(convert_charrefs=True)
        self.url = url
        self.domain = get_domain(url) if url else ""
        self.urls: dict[str, str] = {}
        self._ids: dict[str, str] = {}
        self.title: str | None = None
        self.lines: list[str] = []  # finished output lines ("" = paragraph break)
        self._inline: list[str] = []  # text of the line being built
        self._skip = 0  # depth inside elements whose content is dropped
        self._in_title = False
        self._pre = 0
        self._lists: list[list[int | None]] = []  # per open list: [next number] or [None] for bullets
        self._quote = 0
        self._bullet = ""  # list marker for the next line
        self._link: tuple[str, list[str]] | None = None  # (absolute url, text parts) of the open <a>
        self._images = 0
        self._script_text = {"sub": "_", "sup": "^"}
        self._marks: list[str] = []  # open <sub>/<sup>

    # -- output --------------------------------------------------------------------------------------------
    def _emit(self, text: str) -> None:
        if self._link is not None:
            self._link[1].append(text)
        else:
            self._inline.append(text)

    def _flush(self, paragraph: bool = False) -> None:
        text = "".join(self._inline)
        self._inline = []
        if self._pre:
            self.lines.extend("    " + line for line in text.split("\n"))
        else:
            text = re.sub(r"[ \t\r\n\f]+", " ", text).strip()
            if text:
                self.lines.append("> " * self._quote + self._bullet + text)
                self._bullet = ""
        if paragraph and self.lines and self.lines[-1] != "":
            self.lines.append("")

    # -- parser callbacks ----------------------------------------------------------------------------------
    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "title" and self.title is None:
            self._in_title = True
            self.title = ""
            return
        if tag in _SKIP:
            if tag not in _VOID:
                self._skip += 1
            return
        if self._skip:
            return
        attr = {k: v or "" for k, v in attrs}
        if tag == "br":
            if self._pre:
                self._emit("\n")
            else:
                self._flush()
        elif tag == "img":
            alt = (attr.get("alt") or attr.get("title") or "").strip()
            self._emit(f"[Image {self._images}: {alt}]" if alt else f"[Image {self._images}]")
            self._images += 1
        elif tag == "a" and "href" in attr and self._link is None:
            self._open_link(attr["href"])
        elif tag in ("sub", "sup"):
            self._marks.append(tag)
            self._emit(self._script_text[tag] + "{")
        elif tag in ("td", "th"):
            self._emit(" ")
        elif tag in _BLOCK:
            self._flush(paragraph=not self._lists and tag not in _ROW_LIKE)
            if tag in ("ul", "ol"):
                self._lists.append([1 if tag == "ol" else None])
            elif tag == "li":
                self._list_item()
            elif tag in _HEADINGS:
                self._emit("#" * _HEADINGS[tag] + " ")
            elif tag == "blockquote":
                self._quote += 1
            elif tag == "pre":
                self._pre += 1

    def handle_endtag(self, tag: str) -> None:
        if tag == "title" and self._in_title:
            self._in_title = False
            return
        if tag in _SKIP:
            if tag not in _VOID:
                self._skip = max(0, self._skip - 1)
            return
        if self._skip:
            return
        if tag == "a" and self._link is not None:
            self._close_link()
        elif tag in ("sub", "sup") and self._marks:
            self._marks.pop()
            self._emit("}")
        elif tag in _BLOCK and tag not in ("td", "th"):
            if tag in ("ul", "ol") and self._lists:
                self._lists.pop()  # first, so that closing the outermost list ends the paragraph
            self._flush(paragraph=not self._lists and tag not in _ROW_LIKE)
            if tag == "blockquote":
                self._quote = max(0, self._quote - 1)
            elif tag == "pre":
                self._pre = max(0, self._pre - 1)

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title = (self.title or "") + data
        elif not self._skip:
            self._emit(data)

    # -- pieces --------------------------------------------------------------------------------------------
    def _list_item(self) -> None:
        depth = max(1, len(self._lists))
        counter = self._lists[-1] if self._lists else [None]
        if counter[0] is None:
            bullet = "*"
        else:
            bullet = f"{counter[0]}."
            counter[0] += 1
        self._bullet = "  " * depth + bullet + " "

    def _open_link(self, href: str) -> None:
        href = href.strip()
        if href.startswith(("mailto:", "javascript:", "#")):
            self._link = ("", [])  # shown as plain text
            return
        try:
            target = urljoin(self.url, href)
            domain = get_domain(target) if urlparse(target).scheme in ("http", "https", "file") else ""
        except ValueError:
            domain = ""
        self._link = (target if domain or target.startswith("file:") else "", [])

    def _close_link(self) -> None:
        assert self._link is not None
        target, parts = self._link
        self._link = None
        text = re.sub(r"\s+", " ", "".join(parts)).strip().replace("†", "‡")
        if (
            not target
            or not text
            or "[Image " in text
            and not re.sub(r"\[Image \d+(: [^\]]*)?\]", "", text).strip()
        ):
            self._inline.append(text)  # no usable URL, or just an image: keep the text only
            return
        link_id = self._ids.get(target)
        if link_id is None:
            link_id = self._ids[target] = str(len(self.urls))
            self.urls[link_id] = target
        target_domain = get_domain(target)
        marker = (
            f"【{link_id}†{text}】"
            if target_domain == self.domain
            else f"【{link_id}†{text}†{target_domain}】"
        )
        self._inline.append(marker)

    def finish(self) -> str:
        if self._link is not None:
            self._close_link()
        self._flush()
        text = "\n".join(self.lines)
        text = re.sub(r"\n{3,}", "\n\n", text)
        return text.strip("\n")


def html_to_page(html_text: str, url: str, title: str | None = None) -> PageContents:
    """Converts an HTML document at ``url`` into the text the model reads, with its links numbered."""
    converter = _Converter(url)
    converter.feed(html_text.translate(_SPECIAL))
    converter.close()
    text = converter.finish()
    page_title = title or (converter.title or "").strip() or (get_domain(url) if url else "")
    return PageContents(url=url, text=f"\nURL: {url}\n{text}", title=page_title, urls=converter.urls)


_LINK_MARKER = re.compile(r"【\d+†([^†】]*)(?:†[^†】]*)?】")


def plain_text(page: PageContents) -> str:
    """A page's text without its ``URL:`` line and with links reduced to their text (for search snippets)."""
    return _LINK_MARKER.sub(r"\1", page.text.removeprefix(f"\nURL: {page.url}\n"))


def text_to_page(text: str, url: str, title: str | None = None) -> PageContents:
    """A plain-text document (no links)."""
    name = urlparse(url).path.rsplit("/", 1)[-1]
    return PageContents(url=url, text=f"\nURL: {url}\n{text.translate(_SPECIAL)}", title=title or name or url)


def search_results_page(query: str, results: list[tuple[str, str, str]]) -> PageContents:
    """The page a search shows: one linked title per hit, then its summary (as the reference builds it)."""
    items = "".join(
        f"<li><a href='{html.escape(url, quote=True)}'>{html.escape(title)}</a> {html.escape(summary)}</li>"
        for title, url, summary in results
    )
    return html_to_page(
        f"<html><body>\n<h1>Search Results</h1>\n<ul>\n{items}\n</ul>\n</body></html>", "", query
    )
