"""``gpt-oss-native COMMAND ...``: a registry of subcommands, each imported only when it runs.

A subcommand is the module ``gpt_oss_native.cli.<name>`` with

    def add_arguments(parser: argparse.ArgumentParser) -> None: ...
    def run(args: argparse.Namespace) -> int: ...          # the exit status

and one line in COMMANDS below. Errors a user can cause (a missing model, a bad checkpoint, no GPU) are
printed as one line, without a traceback (``GPT_OSS_NATIVE_DEBUG=1`` shows it).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from types import ModuleType
from typing import NoReturn

from .. import __version__

PROG = "gpt-oss-native"

# name -> one-line summary, in the order `--help` lists them.
COMMANDS: dict[str, str] = {
    "generate": "generate a reply to one prompt and print it as it streams",
    "chat": "chat with a model in the terminal",
    "serve": "serve the OpenAI Responses and Chat Completions APIs",
    "demo": "generate from a tiny random demo checkpoint (no weights to download; its text is noise)",
}

# Modules a subcommand may need beyond the core dependencies -> what to install.
_EXTRAS = {"fastapi": "gpt-oss-native[server]", "uvicorn": "gpt-oss-native[server]"}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="A native inference engine for OpenAI's gpt-oss models.",
        epilog=f"Run '{PROG} COMMAND --help' for a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    # Top-level options take no value, so the first bare word names the command: only its module is imported.
    chosen = next((a for a in argv if not a.startswith("-")), None)
    module: ModuleType | None = None
    for name, summary in COMMANDS.items():
        sub = commands.add_parser(name, help=summary, description=summary[0].upper() + summary[1:] + ".")
        if name == chosen:
            module = _load(name)
            module.add_arguments(sub)
    args = parser.parse_args(argv)
    assert module is not None  # argparse rejected anything but a registered command
    return _run(args.command, module, args)


def _load(name: str) -> ModuleType:
    module_name = f"{__package__}.{name}"
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name == module_name:
            _exit(
                f"{PROG} {name}: this command is not available in this installation "
                f"({module_name} is missing)"
            )
        missing = (e.name or "").split(".")[0]
        hint = f"pip install '{_EXTRAS[missing]}'" if missing in _EXTRAS else f"pip install {missing}"
        _exit(f"{PROG} {name}: needs the Python package '{missing}', which is not installed: {hint}")


def _run(name: str, module: ModuleType, args: argparse.Namespace) -> int:
    try:
        return int(module.run(args) or 0)
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`| head`): stop quietly, and keep Python from complaining at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except (ValueError, OSError, RuntimeError, ImportError) as e:
        if os.environ.get("GPT_OSS_NATIVE_DEBUG"):
            raise
        _exit(f"{PROG} {name}: error: {e}\n(set GPT_OSS_NATIVE_DEBUG=1 to see the traceback)", status=1)


def _exit(message: str, status: int = 2) -> NoReturn:
    print(message, file=sys.stderr)
    raise SystemExit(status)


if __name__ == "__main__":
    sys.exit(main())
