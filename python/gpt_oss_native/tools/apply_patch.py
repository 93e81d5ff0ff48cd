"""The ``apply_patch`` function tool: gpt-oss's file-oriented patch format, applied atomically under a root.

The format (the model's instructions are ``apply_patch.md``, the reference's own text)::

    *** Begin Patch
    *** Add File: path            then every line "+text"
    *** Delete File: path         nothing follows
    *** Update File: path         optionally "*** Move to: new/path", then hunks:
    @@ [a line of the file to anchor on]
     context / -removed / +added lines
    *** End of File               (optional, after a hunk: its context ends the file)
    *** End Patch

The whole patch is parsed and every hunk located before anything is written; then all new contents go to
temporary files beside their targets and are renamed into place, undoing everything if any step fails. A
refused patch leaves the tree byte-identical.

Where this is stricter than the reference (gpt_oss/tools/apply_patch.py): context that matches in several
places is refused rather than taking the first (unless an ``@@`` anchor line precedes it: then the first match
after the anchor is meant); an ``@@`` anchor that is not in the file is an error (unified
diff ranges such as ``@@ -3,7 +3,8 @@`` are ignored); ``*** End of File`` context must really end the file.
Paths must be relative, without ``..``, and stay inside the root after resolving symlinks. Added files end
with a newline (like Codex's apply_patch); updates keep a file's newline style and final newline.
"""

from __future__ import annotations

import json
import os
import re
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from openai_harmony import Message, ToolDescription

from .base import Tool, message_text, tool_message

__all__ = ["ApplyPatchTool", "PatchError", "apply_patch", "parse_patch"]

BEGIN, END, END_OF_FILE = "*** Begin Patch", "*** End Patch", "*** End of File"
ADD, DELETE, UPDATE, MOVE = "*** Add File: ", "*** Delete File: ", "*** Update File: ", "*** Move to: "
_FILE_HEADERS = (ADD, DELETE, UPDATE)
_UNIFIED_RANGE = re.compile(r"^-\d+(,\d+)? \+\d+(,\d+)? @@")

DEVELOPER_INSTRUCTIONS = (Path(__file__).with_name("apply_patch.md")).read_text(encoding="utf-8")


class PatchError(ValueError):
    """A patch that cannot be parsed or applied; the message names the patch line or file at fault."""


@dataclass
class Hunk:
    line: int  # 1-based line of the patch where it starts (for messages)
    anchor: str | None = None  # text after "@@ ", a file line to find before the context
    lines: list[tuple[str, str]] = field(default_factory=list)  # (" " | "-" | "+", text)
    end_of_file: bool = False

    @property
    def old(self) -> list[str]:
        return [text for kind, text in self.lines if kind != "+"]


@dataclass
class FileOp:
    kind: str  # "add" | "delete" | "update"
    path: str
    line: int
    content: list[str] = field(default_factory=list)  # add
    move_to: str | None = None  # update
    hunks: list[Hunk] = field(default_factory=list)  # update


# -- parsing -----------------------------------------------------------------------------------------------------


def parse_patch(text: str) -> list[FileOp]:
    """Parses a patch into file operations (syntax only: nothing is read from disk)."""
    lines = [line.removesuffix("\r") for line in text.strip("\n").split("\n")]
    if not lines or lines[0].strip() != BEGIN:
        raise PatchError(f"line 1: a patch must start with `{BEGIN}`")
    if len(lines) < 2 or lines[-1].strip() != END:
        raise PatchError(f"line {len(lines)}: a patch must end with `{END}`")
    ops: list[FileOp] = []
    i = 1
    last = len(lines) - 1  # index of the End Patch line
    while i < last:
        line, lineno = lines[i], i + 1
        header = next((h for h in _FILE_HEADERS if line.startswith(h)), None)
        if header is None:
            raise PatchError(
                f"line {lineno}: expected `{ADD}`, `{DELETE}` or `{UPDATE}` followed by a path, got {line!r}"
            )
        path = line[len(header) :].strip()
        if not path:
            raise PatchError(f"line {lineno}: missing path after `{header.strip()}`")
        i += 1
        if header == ADD:
            op = FileOp("add", path, lineno)
            while i < last and not lines[i].startswith(_FILE_HEADERS):
                if not lines[i].startswith("+"):
                    raise PatchError(
                        f"line {i + 1}: every line of an added file must start with '+', got {lines[i]!r}"
                    )
                op.content.append(lines[i][1:])
                i += 1
        elif header == DELETE:
            op = FileOp("delete", path, lineno)
        else:
            op = FileOp("update", path, lineno)
            if i < last and lines[i].startswith(MOVE):
                op.move_to = lines[i][len(MOVE) :].strip()
                if not op.move_to:
                    raise PatchError(f"line {i + 1}: missing path after `{MOVE.strip()}`")
                i += 1
            i = _parse_hunks(lines, i, last, op)
            if not op.hunks and op.move_to is None:
                raise PatchError(f"line {lineno}: `{UPDATE}{path}` has no hunks")
        ops.append(op)
    return ops


def _parse_hunks(lines: list[str], i: int, last: int, op: FileOp) -> int:
    hunk: Hunk | None = None
    while i < last and not lines[i].startswith(_FILE_HEADERS):
        line, lineno = lines[i], i + 1
        if line == "@@" or line.startswith("@@ "):
            anchor = line[3:] if line.startswith("@@ ") else ""
            hunk = Hunk(lineno, anchor if anchor.strip() and not _UNIFIED_RANGE.match(anchor) else None)
            op.hunks.append(hunk)
        elif line.strip() == END_OF_FILE:
            if hunk is None or not hunk.lines:
                raise PatchError(f"line {lineno}: `{END_OF_FILE}` must follow the lines of a hunk")
            hunk.end_of_file = True
            hunk = None  # a new hunk needs its own @@
        elif line.startswith("***"):
            raise PatchError(f"line {lineno}: unknown patch directive {line!r}")
        else:
            if hunk is None:
                if op.hunks:  # after `*** End of File`
                    raise PatchError(f"line {lineno}: hunk lines must follow an `@@` line, got {line!r}")
                hunk = Hunk(lineno)  # the first hunk may omit its @@
                op.hunks.append(hunk)
            kind = line[:1] or " "  # an empty line is an empty context line
            if kind not in " +-":
                raise PatchError(
                    f"line {lineno}: a hunk line must start with ' ' (context), '-' (remove) or '+' (add), "
                    f"got {line!r}"
                )
            hunk.lines.append((kind, line[1:]))
        i += 1
    for hunk in op.hunks:
        if not hunk.lines:
            raise PatchError(f"line {hunk.line}: empty hunk in `{UPDATE}{op.path}`")
        if all(kind == " " for kind, _ in hunk.lines):
            raise PatchError(f"line {hunk.line}: hunk in `{UPDATE}{op.path}` changes nothing")
    return i


# -- applying to text ------------------------------------------------------------------------------------------


@dataclass
class _Text:
    lines: list[str]
    eol: str
    final_newline: bool

    @classmethod
    def parse(cls, content: str) -> _Text:
        eol = "\r\n" if "\r\n" in content and content.count("\r\n") == content.count("\n") else "\n"
        lines = content.split(eol)
        final_newline = lines[-1] == ""
        if final_newline:
            lines.pop()
        return cls(lines, eol, final_newline)

    def render(self) -> str:
        if not self.lines:
            return ""
        return self.eol.join(self.lines) + (self.eol if self.final_newline else "")


_NORMALISERS = (lambda s: s, str.rstrip, str.strip)  # exact first, then ignoring trailing / all edge spaces


def _find(lines: list[str], pattern: list[str], start: int, stop: int) -> list[int]:
    """Positions in [start, stop] where ``pattern`` matches, at the strictest level that matches at all."""
    for norm in _NORMALISERS:
        want = [norm(s) for s in pattern]
        found = [i for i in range(start, stop + 1) if [norm(s) for s in lines[i : i + len(pattern)]] == want]
        if found:
            return found
    return []


def _update(path: str, content: str, hunks: list[Hunk]) -> str:
    text = _Text.parse(content)
    lines = text.lines
    out: list[str] = []
    pos = 0  # lines before pos are done
    for hunk in hunks:
        start = pos
        if hunk.anchor is not None:
            found = _find(lines, [hunk.anchor], pos, len(lines) - 1)
            if not found:
                raise PatchError(
                    f"line {hunk.line}: `@@ {hunk.anchor}` not found in {path} (after line {pos})"
                )
            start = found[0] + 1  # the first anchor after the previous hunk, as in the reference
        old = hunk.old
        if hunk.end_of_file:
            at = len(lines) - len(old)
            if at < start or not _find(lines, old, at, at):
                raise PatchError(f"line {hunk.line}: the hunk's context does not match the end of {path}")
        else:
            found = _find(lines, old, start, len(lines) - len(old))
            if not found:
                shown = "\n".join(old)
                raise PatchError(f"line {hunk.line}: context not found in {path}:\n{shown}")
            if len(found) > 1 and old and hunk.anchor is None:  # an anchor picks its first match
                where = ", ".join(str(i + 1) for i in found[:5])
                raise PatchError(
                    f"line {hunk.line}: the hunk's context matches {path} in {len(found)} places (lines {where}); "
                    "add context lines or an `@@` line naming the enclosing block"
                )
            at = found[0]
        out += lines[pos:at]
        j = at
        for kind, line in hunk.lines:
            if kind == "+":
                out.append(line)
            else:
                if kind == " ":
                    out.append(lines[j])  # keep the file's own spacing where matching was lenient
                j += 1
        pos = j
    out += lines[pos:]
    text.lines = out
    return text.render()


# -- the file system side --------------------------------------------------------------------------------------


def _resolve(root: Path, path: str, line: int) -> Path:
    """The real path of ``path`` under ``root``; refuses anything that leaves it."""
    where = f"line {line}: path {path!r}"
    if "\0" in path:
        raise PatchError(f"{where} contains a NUL character")
    parts = Path(path).parts
    if Path(path).is_absolute() or path.startswith("~"):
        raise PatchError(f"{where} must be relative to the workspace root")
    if ".." in parts:
        raise PatchError(f"{where} must not contain `..`")
    if not parts or parts == (".",):
        raise PatchError(f"{where} does not name a file")
    current = root
    for part in parts:  # check every component: a symlink may point anywhere
        current = Path(os.path.realpath(current / part))
        if current != root and root not in current.parents:
            raise PatchError(f"{where} leaves the workspace root through a symbolic link ({current})")
    return current


def _read_text(real: Path, path: str, line: int) -> str:
    if not real.is_file():
        what = "is not a regular file" if real.exists() else "does not exist"
        raise PatchError(f"line {line}: cannot update or delete {path}: it {what}")
    try:
        return real.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise PatchError(f"line {line}: {path} is not a UTF-8 text file ({e})") from None


@dataclass
class _Plan:
    writes: dict[Path, str] = field(default_factory=dict)  # target -> new content
    modes: dict[Path, int] = field(default_factory=dict)  # target -> permission bits to keep
    deletes: list[Path] = field(default_factory=list)
    summary: list[str] = field(default_factory=list)


def _plan(ops: list[FileOp], root: Path) -> _Plan:
    plan = _Plan()
    touched: dict[Path, int] = {}

    def claim(real: Path, path: str, line: int) -> None:
        if real in touched:
            raise PatchError(
                f"line {line}: {path} is already changed by the operation on line {touched[real]}"
            )
        touched[real] = line

    for op in ops:
        real = _resolve(root, op.path, op.line)
        claim(real, op.path, op.line)
        if op.kind == "add":
            if os.path.lexists(real):
                raise PatchError(f"line {op.line}: cannot add {op.path}: it already exists")
            plan.writes[real] = "\n".join(op.content) + "\n" if op.content else ""
            plan.summary.append(f"A {op.path}")
        elif op.kind == "delete":
            _read_text(real, op.path, op.line)
            plan.deletes.append(real)
            plan.summary.append(f"D {op.path}")
        else:
            new = _update(op.path, _read_text(real, op.path, op.line), op.hunks)
            target = real
            if op.move_to is not None:
                target = _resolve(root, op.move_to, op.line)
            if target != real:
                claim(target, op.move_to or op.path, op.line)
                if os.path.lexists(target):
                    raise PatchError(
                        f"line {op.line}: cannot move {op.path} to {op.move_to}: it already exists"
                    )
                plan.deletes.append(real)
                plan.summary.append(f"M {op.move_to} (moved from {op.path})")
            else:
                plan.summary.append(f"M {op.path}")
            plan.writes[target] = new
            plan.modes[target] = real.stat().st_mode & 0o7777
    return plan


def _commit(plan: _Plan) -> None:
    """Writes everything to temporary files, then renames into place; undoes it all on any failure."""
    made_dirs: list[Path] = []
    temps: dict[Path, Path] = {}
    backups: list[tuple[Path, Path]] = []  # (original, backup)
    placed: list[Path] = []
    try:
        for target, content in plan.writes.items():
            missing = [p for p in reversed(target.parents) if not p.exists()]
            for directory in missing:
                directory.mkdir()
                made_dirs.append(directory)
            fd, tmp = _exclusive_file(target, ".patch-tmp")
            temps[target] = tmp
            with os.fdopen(fd, "wb") as f:
                f.write(content.encode("utf-8"))
            if target in plan.modes:
                os.chmod(tmp, plan.modes[target])
        for original in [*plan.deletes, *(t for t in plan.writes if t.exists())]:
            fd, backup = _exclusive_file(original, ".patch-old")
            os.close(fd)
            os.rename(original, backup)  # atomically over the placeholder: a unique name nobody else can take
            backups.append((original, backup))
        for target, tmp in temps.items():
            os.rename(tmp, target)
            placed.append(target)
    except BaseException:
        for target in reversed(placed):
            os.unlink(target)
        for original, backup in reversed(backups):
            os.rename(backup, original)
        for tmp in temps.values():
            if tmp.exists():
                os.unlink(tmp)
        for directory in reversed(made_dirs):
            directory.rmdir()
        raise
    for _, backup in backups:
        os.unlink(backup)


def _exclusive_file(beside: Path, suffix: str) -> tuple[int, Path]:
    """A new file next to ``beside``, created 0666 less the umask (the mode a new file normally gets)."""
    for _ in range(100):
        path = beside.with_name(f".{beside.name}.{secrets.token_hex(6)}{suffix}")
        try:
            return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), path
        except FileExistsError:
            continue
    raise FileExistsError(f"cannot create a temporary file beside {beside}")


def apply_patch(text: str, root: str | os.PathLike[str]) -> str:
    """Applies ``text`` to the files under ``root``; returns a summary or raises PatchError (changing nothing)."""
    root_path = Path(os.path.realpath(root))
    if not root_path.is_dir():
        raise PatchError(f"workspace root {str(root)!r} is not a directory")
    plan = _plan(parse_patch(text), root_path)
    try:
        _commit(plan)
    except OSError as e:
        raise PatchError(f"cannot write the patched files: {e}") from e
    return "\n".join(["Done!", *plan.summary])


class ApplyPatchTool(Tool):
    """``functions.apply_patch``: edits files under ``root``. Declared as a developer-message function tool.

    Put ``developer_instructions`` into the developer message and ``function_description`` into its function
    tools (``DeveloperContent.with_instructions(...).with_function_tools([...])``), as the reference chat does.
    """

    name = "functions.apply_patch"
    developer_instructions = DEVELOPER_INSTRUCTIONS
    function_description = ToolDescription.new(
        "apply_patch",
        "Patch a file",
        parameters={
            "type": "string",
            "description": "Formatted patch code",
            "default": "*** Begin Patch\n*** End Patch\n",
        },
    )

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise ValueError(f"apply_patch workspace root {str(root)!r} is not a directory")

    def handles(self, recipient: str | None) -> bool:
        return recipient == self.name

    def process(self, message: Message) -> list[Message]:
        text = message_text(message)
        try:
            output = apply_patch(_unwrap_json(text), self.root)
        except PatchError as e:
            output = f"Error applying patch: {e}"
        return [tool_message(self.name, output, message)]


def _unwrap_json(text: str) -> str:
    """The model sometimes sends ``{"patch": "..."}`` (or another key) instead of the bare patch."""
    if not text.lstrip().startswith("{"):
        return text
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise PatchError(
            f"the arguments look like JSON but do not parse ({e}); send the patch text itself"
        ) from None
    strings = [v for v in value.values() if isinstance(v, str)] if isinstance(value, dict) else []
    if len(strings) != 1:
        raise PatchError("expected the patch text, or a JSON object with one string field holding it")
    return strings[0]
