"""Where the browser's pages come from.

- :class:`LocalBackend` needs no internet: ``open`` fetches ``http(s)`` URLs directly (a local server, an
  intranet) and ``search`` ranks the documents of a :class:`SearchIndex` (a JSON file or a directory of HTML /
  text files, which it can also serve offline under ``file://`` URLs);
- :class:`ExaBackend` (``EXA_API_KEY``) and :class:`YouComBackend` (``YDC_API_KEY``) search and read the web
  through those services' APIs, as the reference's backends do.

Backends are synchronous; errors a model or a site can cause raise :class:`BackendError` with a readable message.
"""

from __future__ import annotations

import json
import math
import os
import re
import urllib.error
import urllib.parse
import urllib.request
from abc import ABC, abstractmethod
from collections import Counter
from dataclasses import dataclass
from email.message import Message as HeaderMessage
from pathlib import Path

from ... import __version__
from .page import PageContents, get_domain, html_to_page, plain_text, search_results_page, text_to_page

__all__ = [
    "Backend",
    "BackendError",
    "Document",
    "ExaBackend",
    "LocalBackend",
    "SearchIndex",
    "YouComBackend",
]

VIEW_SOURCE_PREFIX = "view-source:"
USER_AGENT = f"gpt-oss-native/{__version__}"
_HTML_TYPES = {"text/html", "application/xhtml+xml"}
_TEXT_TYPES = {"application/json", "application/xml", "application/javascript", "application/x-yaml"}


class BackendError(Exception):
    """A search or a page fetch failed; the message is shown to the model."""


class Backend(ABC):
    """A source of search results and pages. ``source`` names it in the tool description (``sources=...``)."""

    source: str

    @abstractmethod
    def search(self, query: str, topn: int) -> PageContents:
        """A results page (``search_results_page``) with at most ``topn`` hits."""

    @abstractmethod
    def fetch(self, url: str) -> PageContents:
        """The page at ``url``; a ``view-source:`` prefix asks for the raw document."""


# -- HTTP --------------------------------------------------------------------------------------------------------


@dataclass
class _Response:
    url: str  # after redirects
    content_type: str
    charset: str | None
    body: bytes
    truncated: bool


class _HostCheckingRedirects(urllib.request.HTTPRedirectHandler):
    def __init__(self, allowed_hosts: frozenset[str] | None) -> None:
        self.allowed_hosts = allowed_hosts

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        _check_url(newurl, self.allowed_hosts)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _check_url(url: str, allowed_hosts: frozenset[str] | None) -> None:
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme not in ("http", "https"):
        raise BackendError(f"cannot open `{url}`: only http:// and https:// URLs can be opened")
    if allowed_hosts is not None and (parsed.hostname or "") not in allowed_hosts:
        raise BackendError(f"cannot open `{url}`: host `{parsed.hostname}` is not one this browser may visit")


def _http(
    url: str,
    *,
    timeout_s: float,
    max_bytes: int,
    allowed_hosts: frozenset[str] | None = None,
    data: dict | None = None,
    headers: dict[str, str] | None = None,
) -> _Response:
    _check_url(url, allowed_hosts)
    body = json.dumps(data).encode() if data is not None else None
    request = urllib.request.Request(url, data=body, headers={"User-Agent": USER_AGENT, **(headers or {})})
    if body is not None:
        request.add_header("Content-Type", "application/json")
    opener = urllib.request.build_opener(_HostCheckingRedirects(allowed_hosts))
    try:
        with opener.open(request, timeout=timeout_s) as response:
            content = response.read(max_bytes + 1)
            header: HeaderMessage = response.headers
            return _Response(
                url=response.geturl(),
                content_type=header.get_content_type(),
                charset=header.get_content_charset(),
                body=content[:max_bytes],
                truncated=len(content) > max_bytes,
            )
    except urllib.error.HTTPError as e:
        raise BackendError(f"HTTP error {e.code} ({e.reason}) for `{url}`") from None
    except urllib.error.URLError as e:
        if isinstance(e.reason, TimeoutError):
            raise BackendError(f"timed out after {timeout_s:g} s connecting to `{url}`") from None
        raise BackendError(f"cannot connect to `{url}`: {e.reason}") from None
    except TimeoutError:
        raise BackendError(f"timed out after {timeout_s:g} s reading `{url}`") from None
    except (OSError, ValueError) as e:  # http.client errors, malformed URLs
        raise BackendError(f"cannot fetch `{url}`: {e}") from None


def _decode(body: bytes, charset: str | None) -> str:
    try:
        return body.decode(charset or "utf-8", errors="replace")
    except LookupError:  # an unknown charset name
        return body.decode("utf-8", errors="replace")


# -- local search ------------------------------------------------------------------------------------------------


@dataclass
class Document:
    url: str
    title: str
    text: str  # plain text, what search matches and summarises
    html: str | None = None  # the original HTML when there is one, served by `fetch` for file:// URLs


_WORD = re.compile(r"\w+", re.UNICODE)


def _words(text: str) -> list[str]:
    return [w.lower() for w in _WORD.findall(text)]


class SearchIndex:
    """Documents ranked by BM25 over their title and text."""

    K1, B = 1.5, 0.75

    def __init__(self, documents: list[Document]) -> None:
        self.documents = documents
        self.by_url = {doc.url: doc for doc in documents}
        self._terms = [Counter(_words(doc.title + " " + doc.text)) for doc in documents]
        self._lengths = [sum(t.values()) for t in self._terms]
        self._avg_length = (sum(self._lengths) / len(documents)) if documents else 0.0
        self._df = Counter(term for terms in self._terms for term in terms)

    @classmethod
    def from_json(cls, path: str | os.PathLike[str]) -> SearchIndex:
        """A JSON list (or JSON lines) of objects with ``url``, ``title``, ``text`` and optionally ``html``."""
        raw = Path(path).read_text(encoding="utf-8")
        try:
            items = (
                json.loads(raw)
                if raw.lstrip().startswith("[")
                else [json.loads(x) for x in raw.splitlines() if x.strip()]
            )
        except json.JSONDecodeError as e:
            raise ValueError(f"search index {str(path)!r} is not valid JSON / JSON lines: {e}") from None
        docs = []
        for n, item in enumerate(items):
            if not isinstance(item, dict) or not isinstance(item.get("url"), str):
                raise TypeError(
                    f"search index {str(path)!r}: entry {n} must be an object with a string `url`"
                )
            text, page_html = item.get("text"), item.get("html")
            if text is None and page_html is not None:
                text = plain_text(html_to_page(page_html, item["url"]))
            docs.append(Document(item["url"], item.get("title") or item["url"], text or "", page_html))
        return cls(docs)

    @classmethod
    def from_directory(cls, root: str | os.PathLike[str], base_url: str | None = None) -> SearchIndex:
        """Every ``.html``/``.htm``/``.txt``/``.md`` file under ``root``. Its URL is ``base_url`` + its relative
        path when the directory is served over HTTP, else its ``file://`` URL (then served from the index)."""
        root_path = Path(root).resolve()
        if not root_path.is_dir():
            raise ValueError(f"search index directory {str(root)!r} does not exist")
        docs = []
        for path in sorted(root_path.rglob("*")):
            if path.suffix.lower() not in (".html", ".htm", ".txt", ".md") or not path.is_file():
                continue
            rel = path.relative_to(root_path).as_posix()
            url = urllib.parse.urljoin(base_url, urllib.parse.quote(rel)) if base_url else path.as_uri()
            content = path.read_text(encoding="utf-8", errors="replace")
            if path.suffix.lower() in (".html", ".htm"):
                page = html_to_page(content, url)
                docs.append(
                    Document(
                        url, page.title if page.title != get_domain(url) else rel, plain_text(page), content
                    )
                )
            else:
                docs.append(Document(url, rel, content))
        return cls(docs)

    def search(self, query: str, topn: int) -> list[tuple[Document, float]]:
        terms = set(_words(query))
        n = len(self.documents)
        scored = []
        for doc, tf, length in zip(self.documents, self._terms, self._lengths, strict=True):
            score = 0.0
            for term in terms & tf.keys():
                idf = math.log(1 + (n - self._df[term] + 0.5) / (self._df[term] + 0.5))
                freq = tf[term]
                score += (
                    idf
                    * freq
                    * (self.K1 + 1)
                    / (freq + self.K1 * (1 - self.B + self.B * length / self._avg_length))
                )
            if score > 0:
                scored.append((doc, score))
        scored.sort(key=lambda pair: -pair[1])
        return scored[:topn]


def _summary(text: str, query: str, width: int = 300) -> str:
    """The part of ``text`` around the first query word, on one line."""
    flat = re.sub(r"\s+", " ", text).strip()
    lowered = flat.lower()
    hits = [lowered.find(w) for w in _words(query) if w in lowered]
    start = max(0, min(hits) - width // 3) if hits else 0
    snippet = flat[start : start + width]
    return ("..." if start else "") + snippet + ("..." if start + width < len(flat) else "")


class LocalBackend(Backend):
    """Pages over plain HTTP(S) and search over a local :class:`SearchIndex` (see the module docstring).

    ``allowed_hosts``: if given, the only host names ``open`` may contact (redirects included); by default any.
    """

    def __init__(
        self,
        index: SearchIndex | None = None,
        *,
        source: str = "local",
        timeout_s: float = 15.0,
        max_bytes: int = 5 << 20,
        allowed_hosts: set[str] | None = None,
    ) -> None:
        self.index = index
        self.source = source
        self.timeout_s = timeout_s
        self.max_bytes = max_bytes
        self.allowed_hosts = frozenset(allowed_hosts) if allowed_hosts is not None else None

    def search(self, query: str, topn: int) -> PageContents:
        if self.index is None:
            raise BackendError("this browser has no search index; open a URL instead")
        hits = self.index.search(query, topn)
        return search_results_page(query, [(d.title, d.url, _summary(d.text, query)) for d, _ in hits])

    def fetch(self, url: str) -> PageContents:
        view_source = url.startswith(VIEW_SOURCE_PREFIX)
        target = url.removeprefix(VIEW_SOURCE_PREFIX)
        doc = self.index.by_url.get(target) if self.index is not None else None
        if doc is not None and target.startswith("file:"):
            source = doc.html if doc.html is not None else doc.text
            if view_source:
                return text_to_page(source, url, title=url)
            return (
                html_to_page(doc.html, target)
                if doc.html is not None
                else text_to_page(doc.text, target, doc.title)
            )
        response = _http(
            target, timeout_s=self.timeout_s, max_bytes=self.max_bytes, allowed_hosts=self.allowed_hosts
        )
        text = _decode(response.body, response.charset)
        if response.truncated:
            text += f"\n\n[The page was cut at {self.max_bytes} bytes.]"
        if view_source:
            return text_to_page(
                text, VIEW_SOURCE_PREFIX + response.url, title=VIEW_SOURCE_PREFIX + response.url
            )
        if response.content_type in _HTML_TYPES:
            return html_to_page(text, response.url)
        if response.content_type.startswith("text/") or response.content_type in _TEXT_TYPES:
            return text_to_page(text, response.url)
        raise BackendError(
            f"cannot display `{target}`: its content type is `{response.content_type}`; "
            "only HTML and text pages can be shown"
        )


# -- web search services -----------------------------------------------------------------------------------------


class _ApiBackend(Backend):
    BASE_URL: str
    KEY_VAR: str

    def __init__(self, *, api_key: str | None = None, source: str = "web", timeout_s: float = 30.0) -> None:
        self.api_key = api_key
        self.source = source
        self.timeout_s = timeout_s

    def _key(self) -> str:
        key = self.api_key or os.environ.get(self.KEY_VAR)
        if not key:
            raise BackendError(f"{type(self).__name__} needs an API key: set {self.KEY_VAR} or pass api_key")
        return key

    def _call(self, endpoint: str, *, params: dict | None = None, data: dict | None = None) -> object:
        url = self.BASE_URL + endpoint + ("?" + urllib.parse.urlencode(params) if params else "")
        response = _http(
            url, timeout_s=self.timeout_s, max_bytes=32 << 20, data=data, headers={"X-API-Key": self._key()}
        )
        try:
            return json.loads(response.body)
        except json.JSONDecodeError as e:
            raise BackendError(
                f"{type(self).__name__}: the service answered with invalid JSON ({e})"
            ) from None


class ExaBackend(_ApiBackend):
    """Search and page contents from Exa (https://exa.ai)."""

    BASE_URL = "https://api.exa.ai"
    KEY_VAR = "EXA_API_KEY"

    def search(self, query: str, topn: int) -> PageContents:
        data = self._call(
            "/search", data={"query": query, "numResults": topn, "contents": {"text": True, "summary": True}}
        )
        results = data.get("results", []) if isinstance(data, dict) else []
        return search_results_page(
            query, [(r.get("title") or r["url"], r["url"], r.get("summary") or "") for r in results]
        )

    def fetch(self, url: str) -> PageContents:
        target = url.removeprefix(VIEW_SOURCE_PREFIX)
        data = self._call("/contents", data={"urls": [target], "text": {"includeHtmlTags": True}})
        results = data.get("results", []) if isinstance(data, dict) else []
        if not results:
            raise BackendError(f"no contents returned for `{target}`")
        return html_to_page(results[0].get("text", ""), target, results[0].get("title") or None)


class YouComBackend(_ApiBackend):
    """Search and page contents from You.com (https://you.com/platform)."""

    BASE_URL = "https://api.ydc-index.io"
    KEY_VAR = "YDC_API_KEY"

    def search(self, query: str, topn: int) -> PageContents:
        data = self._call("/v1/search", params={"query": query, "count": topn})
        results = data.get("results", {}) if isinstance(data, dict) else {}
        hits = [(r["title"], r["url"], " ".join(r.get("snippets") or [])) for r in results.get("web", [])]
        hits += [(r["title"], r["url"], r.get("description") or "") for r in results.get("news", [])]
        return search_results_page(query, hits)

    def fetch(self, url: str) -> PageContents:
        target = url.removeprefix(VIEW_SOURCE_PREFIX)
        data = self._call("/v1/contents", data={"urls": [target], "livecrawl_formats": "html"})
        if not isinstance(data, list) or not data or "html" not in data[0]:
            raise BackendError(f"no HTML returned for `{target}`")
        return html_to_page(data[0]["html"] or "", target, data[0].get("title") or None)
