"""The browser tool: the reference's display format (checked against outputs of gpt_oss's SimpleBrowserTool),
and the offline backend against a real HTTP server on 127.0.0.1: search, open, scrolling, links, find,
citations and errors."""

from __future__ import annotations

import hashlib
import http.server
import json
import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest
from gpt_oss_native.tools import BrowserTool
from gpt_oss_native.tools.browser import (
    Backend,
    BackendError,
    ExaBackend,
    LocalBackend,
    PageContents,
    SearchIndex,
    YouComBackend,
    html_to_page,
)
from gpt_oss_native.tools.browser.page import search_results_page
from openai_harmony import Message, Role, ToolNamespaceConfig

WORDS = [
    "fox",
    "dog",
    "zebra",
    "harmony",
    "engine",
    "kernel",
    "token",
    "cache",
    "attention",
    "sink",
    "window",
    "layer",
    "expert",
    "router",
]


def make_site() -> tuple[dict[str, str], list[tuple[str, str, str]]]:
    """Two pages (one far longer than a viewport) and two search hits, the same on every run."""
    rng = random.Random(0)

    def para(n: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(n))

    guide = (
        "<html><head><title>The Guide</title></head><body><h1>Guide</h1>\n"
        + "".join(
            f"<p>{para(rng.randint(5, 60))} <a href='/p{i}.html'>link {i}</a> {para(10)}</p>\n"
            for i in range(60)
        )
        + "<ul><li>first item</li>\n<li>second <a href='http://other.site/x'>outside</a></li>\n</ul>"
        + "<p>The zebra attention sink ends here.</p>\n</body></html>"
    )
    three = f"<html><head><title>Page three</title></head><body><p>{para(300)}</p>\n<p>zebra line</p>\n</body></html>"
    pages = {"http://docs.local/guide.html": guide, "http://docs.local/p3.html": three}
    hits = [
        ("The Guide", "http://docs.local/guide.html", "A guide about " + para(30)),
        ("Page three", "http://docs.local/p3.html", para(50)),
    ]
    return pages, hits


# The calls, and sha256 of what gpt_oss 0.0.9's SimpleBrowserTool displays for each on make_site() (its
# process_html pages, its o200k viewport of 1024 tokens). Generated once with the reference installed with its
# own dependencies (lxml, html2text, tiktoken, aiohttp), which the test environment does not have.
REFERENCE_CALLS = [
    ("search", {"query": "zebra"}, "a5aa19155f4d1a02563c335e6eddf833de95e8dd8598ab719236ffc396b17f30"),
    ("open", {"id": 0}, "945e3a91940b1535914f6cb37f8bcf5fa7bd0a8f67bd33f6452e5eba6615214e"),
    ("open", {"loc": 40}, "5738bc9a042fffd6eb32a31e5089255631fc4e018d8a727a9ce7e06a9188be9a"),
    ("open", {"loc": 10, "num_lines": 5}, "d984b3a55a32ce57b76482e506c3817ba83042c5829ab2f7103b0bd3da374add"),
    ("find", {"pattern": "zebra"}, "9c52adbbe2ee09f302ff22999fc151e6cc497c9d10180bc745f860f4352b03a5"),
    ("open", {"id": 1}, "d33184a97e67c7bc17f746bca985a3d5d654d4fbe5ebe687f6f51162a6e3697d"),
    ("open", {"id": 3, "cursor": 1}, "29b4b5de1b7cdec2e6b82db325c3a285e1863a900d8ae8a6c9dc3cc90adea4fc"),
    (
        "open",
        {"id": "http://docs.local/p3.html"},
        "37ab2954d66e7b3c1d0f93515da2308bc348cf681ce4b3300f95c4fd1a98d759",
    ),
    ("find", {"pattern": "ZEBRA LINE"}, "017c2aef0307b3fc08800720cd307b7d41094c7fb2052dbe23cef3f6c7e20f23"),
    ("open", {"cursor": 0, "id": 1}, "0320db32b15d3df6e8a92b72053da528281de2b1d707559d87cf53f0df8bd4cc"),
    ("open", {"loc": 100000}, "a9b0c9d15f964fe74d12d48abeb9c771b5decfa3310bdedf774bc277d9b03aea"),
    ("open", {"id": 999}, "7026ec5c8c531e4f81d995953421e50e0bf9254c591af7378a885724244f5ce6"),
    ("find", {"pattern": "nothing here"}, "1976c29083b51383390bbdc87dbf8146846e1f46c6a6cdfb21ccc5fe98d94e2d"),
    ("open", {"cursor": 77}, "f84724ad914efb1f48fa76539d35c3c34003cc22accf5ba9c81f6b1d3afef74c"),
    (
        "find",
        {"pattern": "link 59", "cursor": 1},
        "b8873b64275bf9a87780e8ae89ae633d3603e2a88df41d8cddb3076a0344c0ac",
    ),
]
# A few of those displays in full, so that a failure shows what changed.
REFERENCE_TEXTS = {
    3: "[3] The Guide (http://docs.local/guide.html)\n**viewing lines [10 - 14] of 325**\n\nL10: \n"
    "L11: harmony layer kernel layer router dog harmony sink harmony harmony expert zebra \n"
    "L12: expert attention cache dog dog kernel attention cache dog engine attention \n"
    "L13: engine layer dog 【1†link 1】 attention kernel router attention harmony expert \nL14: sink attention sink engine",
    8: "[8] Find results for text: `zebra line` in `Page three` (http://docs.local/p3.html/find?pattern=zebra line)\n"
    "**viewing lines [0 - 1] of 1**\n\nL0: # 【0†match at L28】\nL1: zebra line",
    10: "Invalid location parameter: `100000`. Cannot exceed page maximum of 28.",
    13: "Cursor `77` is out of range. Available cursor indices: [0 - 10].",
    14: "[11] Find results for text: `link 59` in `The Guide` (http://docs.local/guide.html/find?pattern=link 59)\n"
    "**viewing lines [0 - 4] of 4**\n\nL0: # 【0†match at L320】\n"
    "L1: link 59 expert expert cache harmony token harmony engine cache cache zebra\nL2: \nL3:   * first item\n"
    "L4:   * second outside",
}


class StaticBackend(Backend):
    """Serves make_site() the way the reference's backends build pages."""

    source = "web"

    def __init__(self) -> None:
        self.pages, self.hits = make_site()
        self.fetched: list[str] = []

    def search(self, query: str, topn: int) -> PageContents:
        return search_results_page(query, self.hits[:topn])

    def fetch(self, url: str) -> PageContents:
        self.fetched.append(url)
        if url not in self.pages:
            raise BackendError(f"HTTP error 404 (Not Found) for `{url}`")
        return html_to_page(self.pages[url], url)


def call(
    tool: BrowserTool, function: str, args: dict | str | None = None, channel: str = "analysis"
) -> Message:
    text = args if isinstance(args, str) else json.dumps(args or {})
    message = Message.from_role_and_content(Role.ASSISTANT, text).with_recipient(f"browser.{function}")
    [reply] = tool.process(message.with_channel(channel))
    assert reply.author.role == Role.TOOL and reply.recipient == "assistant" and reply.channel == channel
    return reply


def text_of(reply: Message) -> str:
    return reply.content[0].text


# -- the reference's format --------------------------------------------------------------------------------------


def test_displays_match_the_reference() -> None:
    tool = BrowserTool(StaticBackend())  # the default viewport counts gpt-oss tokens, as the reference does
    for n, (function, args, digest) in enumerate(REFERENCE_CALLS):
        reply = call(tool, function, args)
        assert reply.author.name == f"browser.{function}"
        if n in REFERENCE_TEXTS:
            assert text_of(reply) == REFERENCE_TEXTS[n]
        assert hashlib.sha256(text_of(reply).encode()).hexdigest() == digest, (
            n,
            function,
            args,
            text_of(reply),
        )


def test_tool_config_is_the_references() -> None:
    import ast
    import importlib.util

    spec = importlib.util.find_spec("gpt_oss")
    assert spec is not None and spec.origin is not None
    source = Path(spec.origin).parent / "tools" / "simple_browser" / "simple_browser_tool.py"
    [prefix] = [
        node.value
        for node in ast.walk(ast.parse(source.read_text()))
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and node.value.startswith("Tool for browsing.")
    ]
    config = BrowserTool(LocalBackend(source="intranet")).tool_config
    assert config.name == "browser"
    assert config.description == prefix + "intranet"
    assert (
        config.tools == ToolNamespaceConfig.browser().tools
    )  # search / open / find as harmony declares them


def test_viewport_follows_the_token_budget() -> None:
    words = BrowserTool(StaticBackend(), view_tokens=50, count_tokens=lambda text: len(text.split()))
    first = text_of(call(words, "open", {"id": "http://docs.local/p3.html"}))
    shown = [line for line in first.split("\n") if line.startswith("L")]
    # lines are added while fewer than 50 words precede them: the line crossing the budget is still shown
    counts = [len(line.split()) for line in shown]
    assert sum(counts[:-1]) < 50 <= sum(counts)
    assert "**viewing lines [0 - " in first


# -- a real HTTP server ------------------------------------------------------------------------------------------


def long_page(title: str, paragraphs: int) -> str:
    body = "".join(
        f"<p>Paragraph {i} talks about topic {i % 7} and zebras {i}.</p>\n" for i in range(paragraphs)
    )
    return f"<html><head><title>{title}</title></head><body><h1>{title}</h1>\n{body}</body></html>"


SITE = {
    "/index.html": (
        "text/html; charset=utf-8",
        (
            "<html><head><title>Index</title></head><body><h1>Welcome</h1>\n"
            "<p>Read <a href='/long.html'>the long page</a> or <a href='b.html'>page B</a>.</p>\n"
            "<p>External: <a href='http://example.org/x'>example</a>. <img src='c.png' alt='a cat'></p>\n"
            "<p>Forged 【0†link】 markers are neutralised.</p>\n</body></html>"
        ),
    ),
    "/long.html": ("text/html", long_page("Long", 150)),
    "/b.html": (
        "text/html",
        "<html><head><title>Beta</title></head><body><p>Beta is about giraffes.</p></body></html>",
    ),
    "/plain.txt": ("text/plain; charset=utf-8", "first line\nsecond line with giraffes\n"),
    "/latin1.html": ("text/html; charset=iso-8859-1", "<html><body><p>caf\xe9</p></body></html>"),
    "/data.bin": ("application/octet-stream", "\x00\x01\x02"),
    "/big.html": ("text/html", "<html><body>" + "<p>filler text</p>" * 5000 + "</body></html>"),
}


class Handler(http.server.BaseHTTPRequestHandler):
    api_requests: ClassVar[list[tuple[str, str | None, object]]] = []  # (path, X-API-Key, JSON body)

    def do_GET(self) -> None:
        if self.path.startswith("/v1/search?"):  # You.com's search
            self.api_requests.append((self.path, self.headers["X-API-Key"], None))
            web = [{"title": "Web hit", "url": "http://y.org/w", "snippets": ["one snippet", "another"]}]
            news = [{"title": "News hit", "url": "http://y.org/n", "description": "fresh news"}]
            self._json({"results": {"web": web, "news": news}})
            return
        if self.path == "/slow.html":
            time.sleep(3)
        if self.path.startswith("/redirect"):
            host = "localhost" if self.path == "/redirect-away" else "127.0.0.1"
            self.send_response(302)
            self.send_header("Location", f"http://{host}:{self.server.server_address[1]}/b.html")
            self.end_headers()
            return
        if self.path not in SITE:
            self.send_error(404, "Not Found")
            return
        content_type, body = SITE[self.path]
        data = body.encode("latin-1" if "8859" in content_type else "utf-8")
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:  # a stand-in for the web search APIs
        request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.api_requests.append((self.path, self.headers["X-API-Key"], request))
        answers = {
            "/search": {
                "results": [{"title": "Hit", "url": "http://example.org/hit", "summary": "about zebras"}]
            },
            "/contents": {
                "results": [{"title": "Hit page", "text": "<p>Zebra <a href='/more'>more</a></p>"}]
            },
            "/v1/contents": [{"title": "You page", "html": "<p>From you.com</p>"}],
        }
        self._json(answers[self.path])

    def _json(self, answer: object) -> None:
        data = json.dumps(answer).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def site_dir(tmp_path: Path) -> Path:
    """The HTML pages of SITE as files, for the search index."""
    for path, (content_type, body) in SITE.items():
        if content_type.startswith("text/html") and "8859" not in content_type:
            (tmp_path / path.lstrip("/")).write_text(body)
    return tmp_path


def counter(text: str) -> int:
    return len(text) // 4


def test_search_open_follow_scroll_find_and_cite(server: str, site_dir: Path) -> None:
    tool = BrowserTool(
        LocalBackend(SearchIndex.from_directory(site_dir, base_url=server + "/")),
        count_tokens=counter,
        view_tokens=300,
    )
    results = text_of(call(tool, "search", {"query": "giraffes", "topn": 5}))
    assert results.startswith(
        "[0] giraffes\n**viewing lines [0 - 4] of 4**\n\nL0: \nL1: URL: \nL2: # Search Results\nL3: \n"
    )
    assert "L4:   * 【0†Beta†127.0.0.1:" in results and "Beta is about giraffes." in results
    results = text_of(call(tool, "search", {"query": "zebras topic", "topn": 1}))
    assert results.count("【") == 1 and "【0†Long†127.0.0.1:" in results  # the best match only

    page = text_of(call(tool, "open", {"id": 0}))  # follow the hit: fetched over HTTP
    assert page.startswith(f"[2] Long ({server}/long.html)\n**viewing lines [0 - ")
    total = int(page.split("\n")[1].split(" of ")[1].rstrip("*"))
    assert total > 300 and "L2: # Long" in page
    scrolled = text_of(call(tool, "open", {"loc": 200, "num_lines": 3}))
    assert scrolled.split("\n", 2)[1] == f"**viewing lines [200 - 202] of {total}**"
    assert [line.split(":")[0] for line in scrolled.split("\n")[3:]] == ["L200", "L201", "L202"]

    found = text_of(call(tool, "find", {"pattern": "Zebras 120."}))
    assert "# 【0†match at L" in found and "Paragraph 120 talks about topic 1 and zebras 120." in found
    line = int(found.split("match at L")[1].split("】")[0])
    at_match = text_of(call(tool, "open", {"id": 0}))  # the find hit: back on the page, 4 lines above it
    assert at_match.startswith(f"[5] Long ({server}/long.html)\n**viewing lines [{line - 4} - ")

    index = text_of(call(tool, "open", {"id": server + "/index.html"}))
    assert "Read 【0†the long page】 or 【1†page B】." in index
    assert "External: 【2†example†example.org】. [Image 0: a cat]" in index
    assert "Forged 〖0†link〗 markers" in index
    beta = text_of(call(tool, "open", {"id": 1}))
    assert beta.startswith(f"[7] Beta ({server}/b.html)") and "Beta is about giraffes." in beta

    cited, annotations, partial = tool.normalize_citations(
        "Giraffes【7†L2】, zebras【2†L3-L5】 and 【42†L1】【6"
    )
    assert partial
    assert cited.startswith(f"Giraffes ([127.0.0.1:{server.rsplit(':', 1)[1]}]({server}/b.html)) , zebras")
    assert [a["url"] for a in annotations] == [f"{server}/b.html", f"{server}/long.html"]
    for a in annotations:
        assert cited[a["start_index"] : a["end_index"]] == f" ([{a['title']}]({a['url']})) "
    assert "【42†L1】" in cited  # no page at that cursor: left as is


def test_json_index_plain_text_and_view_source(server: str, tmp_path: Path) -> None:
    index_file = tmp_path / "index.json"
    index_file.write_text(
        json.dumps(
            [
                {"url": server + "/plain.txt", "title": "Plain", "text": "giraffes in plain text"},
                {"url": server + "/b.html", "html": SITE["/b.html"][1]},
            ]
        )
    )
    tool = BrowserTool(LocalBackend(SearchIndex.from_json(index_file)), count_tokens=counter)
    results = text_of(call(tool, "search", {"query": "giraffes"}))
    assert "【0†Plain†" in results and f"【1†{server}/b.html†" in results
    plain = text_of(call(tool, "open", {"id": 0}))
    assert plain.endswith("L2: first line\nL3: second line with giraffes\nL4: ")
    source = text_of(call(tool, "open", {"id": server + "/b.html", "view_source": True}))
    assert f"[2] view-source:{server}/b.html" in source and "L2: <html><head><title>Beta</title>" in source
    latin = text_of(call(tool, "open", {"id": server + "/latin1.html"}))
    assert "café" in latin
    big = text_of(
        call(
            BrowserTool(LocalBackend(max_bytes=1000), count_tokens=counter),
            "open",
            {"id": server + "/big.html"},
        )
    )
    assert "filler text" in big and "[The page was cut at 1000 bytes.]" in big


def test_offline_corpus_without_a_server(tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.html").write_text(
        "<html><head><title>Doc A</title></head><body><p>Okapis live here. See <a href='b.txt'>b</a>.</p></body></html>"
    )
    (tmp_path / "docs" / "b.txt").write_text("Notes on okapis and giraffes.\n")
    index = SearchIndex.from_directory(tmp_path / "docs")
    tool = BrowserTool(LocalBackend(index), count_tokens=counter)
    results = text_of(call(tool, "search", {"query": "okapis"}))
    assert "【0†Doc A】" in results and "【1†b.txt】" in results  # file:// URLs: no domain shown
    a = text_of(call(tool, "open", {"id": 0}))
    assert "Okapis live here. See 【0†b】." in a
    assert "Notes on okapis and giraffes." in text_of(
        call(tool, "open", {"id": 0})
    )  # its link, from the index
    outside = text_of(call(tool, "open", {"id": (tmp_path / "secret.txt").as_uri()}))
    assert "only http:// and https:// URLs can be opened" in outside


def test_fetch_errors_are_clear(server: str) -> None:
    tool = BrowserTool(LocalBackend(timeout_s=0.5, allowed_hosts={"127.0.0.1"}), count_tokens=counter)
    missing = text_of(call(tool, "open", {"id": server + "/missing.html"}))
    assert (
        missing
        == f"Error fetching URL `{server}/missing.html`: HTTP error 404 (Not Found) for `{server}/missing.html`"
    )
    started = time.monotonic()
    slow = text_of(call(tool, "open", {"id": server + "/slow.html"}))
    assert time.monotonic() - started < 2.5
    assert "timed out after 0.5 s" in slow
    binary = text_of(call(tool, "open", {"id": server + "/data.bin"}))
    assert "its content type is `application/octet-stream`; only HTML and text pages can be shown" in binary
    assert text_of(call(tool, "open", {"id": server + "/redirect"})).startswith(f"[0] Beta ({server}/b.html)")
    away = text_of(call(tool, "open", {"id": server + "/redirect-away"}))
    assert "host `localhost` is not one this browser may visit" in away
    assert "is not one this browser may visit" in text_of(call(tool, "open", {"id": "http://example.org/"}))
    with socket_closed_port() as port:
        refused = text_of(call(tool, "open", {"id": f"http://127.0.0.1:{port}/"}))
    assert f"cannot connect to `http://127.0.0.1:{port}/`" in refused and "refused" in refused.lower()
    no_index = text_of(call(tool, "search", {"query": "x"}))
    assert no_index == "Error during search for `x`: this browser has no search index; open a URL instead"
    assert len(tool.pages) == 1  # only the successful redirect pushed a page


class socket_closed_port:
    """A port on 127.0.0.1 that nothing listens on."""

    def __enter__(self) -> int:
        import socket

        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        sock.close()
        return self.port

    def __exit__(self, *exc: object) -> None:
        pass


def test_bad_calls_get_readable_answers() -> None:
    tool = BrowserTool(StaticBackend(), count_tokens=counter)
    assert text_of(call(tool, "open", {"loc": 3})) == "No pages to access!"
    assert text_of(call(tool, "find", {"pattern": "x"})) == "No pages to access!"
    reply = call(tool, "search", "{not json")
    assert (
        reply.author.name == "browser.search" and text_of(reply) == '{"error": "Invalid function arguments"}'
    )
    assert text_of(call(tool, "search", "[1, 2]")) == '{"error": "Invalid function arguments"}'
    assert text_of(call(tool, "click", {"id": 1})) == '{"error": "Unknown function: click"}'
    assert text_of(call(tool, "search", {"query": "x", "colour": "red"})) == (
        "Unknown argument(s) colour for `search`; it accepts query, source, top_n, topn."
    )
    assert text_of(call(tool, "find", {})) == "`find` needs the argument(s) pattern."
    assert text_of(call(tool, "search", {"query": ""})) == "`query` should be a non-empty string"
    call(tool, "search", {"query": "zebra"})
    assert text_of(call(tool, "open", {"cursor": "first"})) == "`cursor` should be an integer, not `'first'`"
    assert text_of(call(tool, "open", {"id": 0, "loc": 1.5})) == "`loc` should be an integer, not `1.5`"
    assert text_of(call(tool, "open", {"id": "http://docs.local/none.html"})) == (
        "Error fetching URL `http://docs.local/none.html`: HTTP error 404 (Not Found) for `http://docs.local/none.html`"
    )
    call(tool, "open", {"id": 0})
    call(tool, "find", {"pattern": "zebra"})
    assert text_of(call(tool, "find", {"pattern": "zebra"})) == (
        "Cannot run `find` on search results page or find results page"
    )
    assert len(tool.pages) == 3  # failed calls push nothing


def test_search_honours_topn() -> None:
    backend = StaticBackend()
    tool = BrowserTool(backend, count_tokens=counter, max_search_results=20)
    assert text_of(call(tool, "search", {"query": "q", "topn": 1})).count("【") == 1
    assert text_of(call(tool, "search", {"query": "q", "top_n": 2})).count("【") == 2


# -- the web APIs, against a stand-in server ---------------------------------------------------------------------


def test_web_backends_need_a_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EXA_API_KEY", raising=False)
    monkeypatch.delenv("YDC_API_KEY", raising=False)
    with pytest.raises(BackendError, match="ExaBackend needs an API key: set EXA_API_KEY"):
        ExaBackend().search("x", 3)
    with pytest.raises(BackendError, match="YouComBackend needs an API key: set YDC_API_KEY"):
        YouComBackend().fetch("http://example.org")


def test_web_backends_speak_their_apis(server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ExaBackend, "BASE_URL", server)
    monkeypatch.setattr(YouComBackend, "BASE_URL", server)
    Handler.api_requests.clear()
    tool = BrowserTool(ExaBackend(api_key="exa-key"), count_tokens=counter)
    results = text_of(call(tool, "search", {"query": "zebras", "topn": 3}))
    assert "【0†Hit†example.org】 about zebras" in results
    page = text_of(call(tool, "open", {"id": 0}))
    assert page.startswith("[1] Hit page (http://example.org/hit)") and "Zebra 【0†more】" in page
    you = text_of(
        call(
            BrowserTool(YouComBackend(api_key="you-key"), count_tokens=counter),
            "open",
            {"id": "http://y.org/"},
        )
    )
    assert you.startswith("[0] You page (http://y.org/)") and "From you.com" in you
    youcom = BrowserTool(YouComBackend(api_key="you-key"), count_tokens=counter)
    hits = text_of(call(youcom, "search", {"query": "zebras", "topn": 2}))
    assert "【0†Web hit†y.org】 one snippet another" in hits and "【1†News hit†y.org】 fresh news" in hits
    assert Handler.api_requests == [
        (
            "/search",
            "exa-key",
            {"query": "zebras", "numResults": 3, "contents": {"text": True, "summary": True}},
        ),
        ("/contents", "exa-key", {"urls": ["http://example.org/hit"], "text": {"includeHtmlTags": True}}),
        ("/v1/contents", "you-key", {"urls": ["http://y.org/"], "livecrawl_formats": "html"}),
        ("/v1/search?query=zebras&count=2", "you-key", None),
    ]


# -- the common interface ----------------------------------------------------------------------------------------


def test_dispatch_and_harmony_rendering(tmp_path: Path) -> None:
    from gpt_oss_native.harmony import get_encoding
    from gpt_oss_native.tools import ApplyPatchTool, dispatch
    from openai_harmony import Conversation, DeveloperContent, SystemContent

    browser, patcher = BrowserTool(StaticBackend(), count_tokens=counter), ApplyPatchTool(tmp_path)
    tools = [browser, patcher]
    search = Message.from_role_and_content(Role.ASSISTANT, '{"query": "zebra"}')
    search = search.with_recipient("browser.search").with_channel("analysis")
    edit = Message.from_role_and_content(
        Role.ASSISTANT, "*** Begin Patch\n*** Add File: a.txt\n+a\n*** End Patch"
    )
    edit = edit.with_recipient("functions.apply_patch").with_channel("commentary")
    stray = Message.from_role_and_content(Role.ASSISTANT, "1").with_recipient("calculator.add")
    [found], [patched], [unknown] = (dispatch(tools, m) for m in (search, edit, stray))
    assert text_of(found).startswith("[0] zebra\n") and text_of(patched) == "Done!\nA a.txt"
    assert text_of(unknown) == (
        "Error: there is no tool named `calculator.add`. Available tools: browser, functions.apply_patch."
    )

    system = SystemContent.new().with_tools(browser.tool_config)
    developer = DeveloperContent.new().with_instructions(patcher.developer_instructions)
    developer = developer.with_function_tools([patcher.function_description])
    messages = [
        Message.from_role_and_content(Role.SYSTEM, system),
        Message.from_role_and_content(Role.DEVELOPER, developer),
        search,
        found,
        edit,
        patched,
    ]
    encoding = get_encoding()
    text = encoding.decode(encoding.render_conversation(Conversation.from_messages(messages)))
    assert "namespace browser {" in text and "type apply_patch = (_: string) => any;" in text
    assert "<|start|>browser.search to=assistant<|channel|>analysis<|message|>[0] zebra" in text
    assert (
        "<|start|>functions.apply_patch to=assistant<|channel|>commentary<|message|>Done!\nA a.txt<|end|>"
        in text
    )
