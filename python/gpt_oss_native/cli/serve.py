"""``gpt-oss-native serve MODEL``: the OpenAI Responses and Chat Completions APIs over HTTP (uvicorn).

Clients point their base URL at ``http://HOST:PORT/v1`` (any API key). The Responses API's built-in
``code_interpreter`` runs scripts in the python tool's sandbox, ``web_search`` uses the browser tool; a tool
whose setup is missing here (no bubblewrap, no search backend) is refused per request with a clear error.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import PurePath

from . import (
    add_browser_options,
    add_engine_options,
    add_model_argument,
    browser_backend,
    engine_from_args,
    positive_int,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_argument(parser)
    group = parser.add_argument_group("server")
    group.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    group.add_argument("--port", type=positive_int, default=8000, help="port to listen on (default: %(default)s)")
    group.add_argument("--model-name", default=None, metavar="NAME",
                       help="the model id clients use (default: from MODEL, e.g. gpt-oss-20b)")
    group.add_argument("--max-sequences", type=positive_int, default=8, metavar="N",
                       help="generations running at once; more requests wait (default: %(default)s)")
    group.add_argument("--no-python", action="store_true",
                       help="refuse the code_interpreter tool instead of running scripts in the sandbox")
    group.add_argument("--no-browser", action="store_true", help="refuse the web_search tool")
    add_browser_options(group)
    group.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"),
                       help="server log level (default: %(default)s)")
    add_engine_options(parser, max_context=16384)


def served_model_name(model: str) -> str:
    """``gpt-oss-20b/original`` → ``gpt-oss-20b``; ``openai/gpt-oss-20b`` → ``gpt-oss-20b``."""
    parts = [p for p in PurePath(model).parts if p not in ("/", ".", "")]
    if parts and parts[-1] == "original" and len(parts) > 1:
        parts.pop()
    return parts[-1] if parts else model


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from ..server.app import create_app

    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    tools = _tool_factories(args)
    engine = engine_from_args(args.model, args, max_sequences=args.max_sequences)
    name = args.model_name or served_model_name(args.model)
    app = create_app(
        engine,
        model_name=name,
        model_aliases=[args.model],
        tool_factories=tools,
    )
    print(f"serving {name} on http://{args.host}:{args.port}/v1 (built-in tools: "
          f"{', '.join(sorted(tools)) or 'none'})", file=sys.stderr)
    with engine:
        uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0


def _tool_factories(args: argparse.Namespace) -> dict:
    """The built-in tools that work on this machine; a missing one is reported once, here."""
    factories = {}
    if not args.no_python:
        from ..tools import PythonTool

        try:
            python = PythonTool()  # checks the sandbox once; stateless, so every request shares it
            factories["python"] = lambda: python
        except (RuntimeError, OSError) as e:
            print(f"code_interpreter disabled: {e}", file=sys.stderr)
    if not args.no_browser:
        from ..tools import BrowserTool

        backend = browser_backend(args)
        factories["browser"] = lambda: BrowserTool(backend)
    return factories
