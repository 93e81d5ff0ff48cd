"""apply_patch: each operation, compared with the reference implementation where both define the result, and
every refusal leaving the tree byte-identical."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
from gpt_oss.tools import apply_patch as reference
from gpt_oss_native.tools import ApplyPatchTool
from gpt_oss_native.tools.apply_patch import PatchError, apply_patch
from openai_harmony import Message, Role

# sha256 of gpt_oss/tools/apply_patch.md in openai/gpt-oss (the developer instructions gpt-oss is prompted with).
INSTRUCTIONS_SHA256 = "4346d15597a9cab3f4c05f88ccd88d11f91761c6c5289e36cbb1eb979531c9f7"

APP = 'import sys\n\n\ndef greet():\n    print("Hi")\n\n\ndef main():\n    greet()\n    return 0\n'


def tree(root: Path) -> dict[str, tuple]:
    """Everything under root that a patch could change: kinds, modes, contents, link targets."""
    state: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath, name)
            st = path.lstat()
            rel = str(path.relative_to(root))
            if path.is_symlink():
                state[rel] = ("link", os.readlink(path))
            elif path.is_dir():
                state[rel] = ("dir", st.st_mode)
            else:
                state[rel] = ("file", st.st_mode, hashlib.sha256(path.read_bytes()).hexdigest())
    return state


def patch(*lines: str) -> str:
    return "\n".join(["*** Begin Patch", *lines, "*** End Patch"]) + "\n"


def reference_result(text: str, files: dict[str, str]) -> dict[str, str]:
    """What gpt_oss's own apply_patch makes of ``files`` (an in-memory tree)."""
    out = dict(files)

    def write(path: str, content: str) -> None:
        out[path] = content

    reference.apply_patch(text, open_fn=lambda p: out[p], write_fn=write, remove_fn=lambda p: out.pop(p))
    return out


@pytest.fixture
def root(tmp_path: Path) -> Path:
    work = tmp_path / "work"
    (work / "src").mkdir(parents=True)
    (work / "src" / "app.py").write_text(APP)
    (work / "obsolete.txt").write_text("old\n")
    (work / "notes.txt").write_text("alpha\nbeta\ngamma\n")
    return work


# -- operations ------------------------------------------------------------------------------------------------


def test_the_instructions_example(root: Path) -> None:
    """The patch from apply_patch.md: add, update with a move, delete."""
    os.chmod(root / "src" / "app.py", 0o750)
    text = patch(
        "*** Add File: hello.txt",
        "+Hello world",
        "*** Update File: src/app.py",
        "*** Move to: src/main.py",
        "@@ def greet():",
        '-    print("Hi")',
        '+    print("Hello, world!")',
        "*** Delete File: obsolete.txt",
    )
    summary = apply_patch(text, root)
    assert summary == "Done!\nA hello.txt\nM src/main.py (moved from src/app.py)\nD obsolete.txt"
    assert (root / "hello.txt").read_text() == "Hello world\n"
    assert not (root / "src" / "app.py").exists() and not (root / "obsolete.txt").exists()
    assert (root / "src" / "main.py").read_text() == APP.replace('print("Hi")', 'print("Hello, world!")')
    assert (root / "src" / "main.py").stat().st_mode & 0o777 == 0o750
    expected = reference_result(text, {"src/app.py": APP, "obsolete.txt": "old\n"})
    assert (root / "src" / "main.py").read_text() == expected["src/main.py"]
    assert expected["hello.txt"] == "Hello world"  # the reference drops the final newline of added files
    assert not list(root.rglob("*.patch-*")), "temporary files left behind"


def test_add_creates_directories_and_empty_files(root: Path) -> None:
    apply_patch(patch("*** Add File: a/b/c.txt", "+one", "+", "+three", "*** Add File: empty.txt"), root)
    assert (root / "a" / "b" / "c.txt").read_text() == "one\n\nthree\n"
    assert (root / "empty.txt").read_bytes() == b""
    assert (root / "empty.txt").stat().st_mode & 0o777 == 0o666 & ~_umask()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_several_hunks_and_end_of_file(root: Path) -> None:
    text = patch(
        "*** Update File: src/app.py",
        "@@",
        " import sys",
        "+import os",
        "@@ def main():",
        "     greet()",
        "-    return 0",
        "+    return os.EX_OK",
        "*** End of File",
        "*** Update File: notes.txt",
        " alpha",
        "-beta",
        "+BETA",
    )
    assert apply_patch(text, root) == "Done!\nM src/app.py\nM notes.txt"
    new_app = APP.replace("import sys\n", "import sys\nimport os\n").replace("return 0", "return os.EX_OK")
    assert (root / "src" / "app.py").read_text() == new_app
    assert (root / "notes.txt").read_text() == "alpha\nBETA\ngamma\n"
    reference_files = reference_result(text, {"src/app.py": APP, "notes.txt": "alpha\nbeta\ngamma\n"})
    assert reference_files == {"src/app.py": new_app, "notes.txt": "alpha\nBETA\ngamma\n"}


def test_pure_move_and_insertion_at_the_end(root: Path) -> None:
    text = patch(
        "*** Update File: notes.txt",
        "*** Move to: docs/notes.md",
        "*** Update File: obsolete.txt",
        "@@",
        " old",
        "+new",
        "*** End of File",
    )
    apply_patch(text, root)
    assert (root / "docs" / "notes.md").read_text() == "alpha\nbeta\ngamma\n" and not (
        root / "notes.txt"
    ).exists()
    assert (root / "obsolete.txt").read_text() == "old\nnew\n"


def test_newline_styles_are_kept(root: Path) -> None:
    (root / "dos.txt").write_bytes(b"one\r\ntwo\r\nthree\r\n")
    (root / "bare.txt").write_bytes(b"one\ntwo")
    text = patch(
        "*** Update File: dos.txt",
        " one",
        "-two",
        "+2",
        "*** Update File: bare.txt",
        " one",
        "-two",
        "+2",
        "*** End of File",
    )
    apply_patch(text.replace("\n", "\r\n"), root)  # a CRLF patch too
    assert (root / "dos.txt").read_bytes() == b"one\r\n2\r\nthree\r\n"
    assert (root / "bare.txt").read_bytes() == b"one\n2"


def test_lenient_whitespace_keeps_the_files_own_lines(root: Path) -> None:
    (root / "ws.py").write_text("def f():\n    x = 1   \n    return x\n")
    apply_patch(
        patch("*** Update File: ws.py", " def f():", "  x = 1", "-  return x", "+  return x + 1"), root
    )
    assert (root / "ws.py").read_text() == "def f():\n    x = 1   \n  return x + 1\n"


def test_an_anchor_resolves_repeated_context(root: Path) -> None:
    """Two blank lines occur twice; without an anchor that is refused, with one the first after it is meant."""
    ambiguous = patch("*** Update File: src/app.py", " ", "-")
    with pytest.raises(PatchError, match="matches src/app.py in 2 places"):
        apply_patch(ambiguous, root)
    anchored = patch("*** Update File: src/app.py", "@@ def greet():", " ", "-")
    apply_patch(anchored, root)
    expected = APP.replace('"Hi")\n\n\n', '"Hi")\n\n')
    assert (root / "src" / "app.py").read_text() == expected
    assert reference_result(anchored, {"src/app.py": APP})["src/app.py"] == expected


def test_symlinks_inside_the_root_are_followed(root: Path) -> None:
    (root / "link").symlink_to("src")
    apply_patch(patch("*** Update File: link/app.py", "-import sys", "+import sys  # patched"), root)
    assert (root / "src" / "app.py").read_text().startswith("import sys  # patched\n")
    assert (root / "link").is_symlink()


# -- the tool --------------------------------------------------------------------------------------------------


def test_tool_messages_and_description(root: Path) -> None:
    tool = ApplyPatchTool(root)
    assert (
        tool.tool_config is None and tool.handles("functions.apply_patch") and not tool.handles("apply_patch")
    )
    description = tool.function_description
    assert (description.name, description.description) == ("apply_patch", "Patch a file")
    assert description.parameters == {
        "type": "string",
        "description": "Formatted patch code",
        "default": "*** Begin Patch\n*** End Patch\n",
    }
    assert hashlib.sha256(tool.developer_instructions.encode()).hexdigest() == INSTRUCTIONS_SHA256

    text = patch("*** Add File: x.txt", "+x")
    call = Message.from_role_and_content(Role.ASSISTANT, json.dumps({"patch": text}))
    [reply] = tool.process(call.with_recipient("functions.apply_patch").with_channel("commentary"))
    assert reply.author.role == Role.TOOL and reply.author.name == "functions.apply_patch"
    assert reply.recipient == "assistant" and reply.channel == "commentary"
    assert reply.content[0].text == "Done!\nA x.txt"

    before = tree(root)
    call = Message.from_role_and_content(Role.ASSISTANT, text).with_recipient("functions.apply_patch")
    [reply] = tool.process(call)
    assert reply.content[0].text == "Error applying patch: line 2: cannot add x.txt: it already exists"
    assert tree(root) == before


# -- refusals: a clear message, and nothing changed ------------------------------------------------------------

REFUSALS = {
    "absolute path": (
        patch("*** Add File: /tmp/evil.txt", "+x"),
        "line 2: path '/tmp/evil.txt' must be relative",
    ),
    "dot-dot": (patch("*** Add File: src/../../evil.txt", "+x"), "must not contain `..`"),
    "home": (patch("*** Add File: ~/evil.txt", "+x"), "must be relative"),
    "no begin": (
        "*** Add File: a.txt\n+x\n*** End Patch\n",
        "line 1: a patch must start with `*** Begin Patch`",
    ),
    "no end": ("*** Begin Patch\n*** Add File: a.txt\n+x\n", "line 3: a patch must end with `*** End Patch`"),
    "unknown line": (patch("*** Delete File: notes.txt", "garbage"), "line 3: expected `*** Add File: `"),
    "unknown directive": (patch("*** Update File: notes.txt", "*** Frobnicate", " alpha"), "line 3: unknown"),
    "add without plus": (
        patch("*** Add File: a.txt", "x"),
        "line 3: every line of an added file must start with '+'",
    ),
    "bad hunk line": (
        patch("*** Update File: notes.txt", "@@", "~alpha"),
        "line 4: a hunk line must start with",
    ),
    "empty update": (
        patch("*** Update File: notes.txt"),
        "line 2: `*** Update File: notes.txt` has no hunks",
    ),
    "empty hunk": (patch("*** Update File: notes.txt", "@@", "@@", "-beta"), "line 3: empty hunk"),
    "no-op hunk": (
        patch("*** Update File: notes.txt", " alpha"),
        "line 3: hunk in `*** Update File: notes.txt`",
    ),
    "stray end of file": (
        patch("*** Update File: notes.txt", "*** End of File"),
        "must follow the lines of a hunk",
    ),
    "missing path": (patch("*** Delete File: "), "line 2: missing path"),
    "missing context": (patch("*** Update File: notes.txt", " alpha", "-delta"), "line 3: context not found"),
    "ambiguous context": (
        patch("*** Update File: src/app.py", "-", "+# blank"),
        "matches src/app.py in 4 places (lines 2, 3, 6, 7)",
    ),
    "anchor not found": (
        patch("*** Update File: notes.txt", "@@ class Nope:", "-beta"),
        "`@@ class Nope:` not found",
    ),
    "eof context not at end": (
        patch("*** Update File: notes.txt", " alpha", "-beta", "*** End of File"),
        "does not match the end of notes.txt",
    ),
    "add existing": (
        patch("*** Add File: notes.txt", "+x"),
        "line 2: cannot add notes.txt: it already exists",
    ),
    "update missing": (
        patch("*** Update File: nope.txt", "-x"),
        "cannot update or delete nope.txt: it does not exist",
    ),
    "delete missing": (patch("*** Delete File: nope.txt"), "line 2: cannot update or delete nope.txt"),
    "delete a directory": (patch("*** Delete File: src"), "src: it is not a regular file"),
    "move onto a file": (
        patch("*** Update File: notes.txt", "*** Move to: obsolete.txt", "-beta"),
        "cannot move notes.txt to obsolete.txt: it already exists",
    ),
    "twice the same file": (
        patch("*** Update File: notes.txt", "-beta", "*** Delete File: notes.txt"),
        "line 4: notes.txt is already changed by the operation on line 2",
    ),
    "file as a directory": (patch("*** Add File: notes.txt/x.txt", "+x"), "cannot write the patched files"),
    "not utf-8": (patch("*** Update File: binary.dat", "-x"), "binary.dat is not a UTF-8 text file"),
    "symlinked dir leaving the root": (
        patch("*** Add File: out/evil.txt", "+x"),
        "leaves the workspace root",
    ),
    "symlinked file leaving the root": (
        patch("*** Update File: passwd", "-root"),
        "leaves the workspace root",
    ),
    "json that is not": ('{"patch": ', "the arguments look like JSON but do not parse"),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_refusals_change_nothing(case: str, root: Path, tmp_path: Path) -> None:
    text, message = REFUSALS[case]
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "passwd").write_text("root:x:0:0\n")
    (root / "out").symlink_to(outside)
    (root / "passwd").symlink_to(outside / "passwd")
    (root / "binary.dat").write_bytes(b"\xff\xfex\n")
    # the later operations are valid: a refusal anywhere must also undo nothing-yet-done ones
    text = text.replace(
        "*** End Patch", "*** Add File: later.txt\n+later\n*** Delete File: obsolete.txt\n*** End Patch"
    )
    before, before_outside = tree(root), tree(outside)
    tool = ApplyPatchTool(root)
    [reply] = tool.process(
        Message.from_role_and_content(Role.ASSISTANT, text).with_recipient("functions.apply_patch")
    )
    assert reply.content[0].text.startswith("Error applying patch: ")
    assert message in reply.content[0].text
    assert tree(root) == before and tree(outside) == before_outside


def test_a_failure_while_renaming_undoes_everything(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = patch(
        "*** Add File: new/a.txt",
        "+a",
        "*** Update File: notes.txt",
        "-beta",
        "+BETA",
        "*** Update File: src/app.py",
        "*** Move to: src/main.py",
        "-import sys",
        "+import os",
        "*** Delete File: obsolete.txt",
    )
    before = tree(root)
    real_rename = os.rename
    calls = 0

    def failing_rename(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        nonlocal calls
        calls += 1
        if calls == 5:  # after the originals were set aside and the first new file placed
            raise OSError(28, "No space left on device")
        real_rename(src, dst)

    monkeypatch.setattr(os, "rename", failing_rename)
    with pytest.raises(PatchError, match="cannot write the patched files: .*No space left on device"):
        apply_patch(text, root)
    assert calls > 5
    assert tree(root) == before


def test_the_reference_agrees_on_updates(root: Path) -> None:
    """A few more update patches: our result equals gpt_oss's apply_patch on the same input."""
    source = "\n".join(f"line {i}" for i in range(40)) + "\n"
    patches = [
        patch("*** Update File: f.txt", "@@ line 9", " line 10", "-line 11", "+eleven", " line 12"),
        patch(
            "*** Update File: f.txt", " line 0", "+zero and a half", " line 1", "@@ line 30", "-line 31", "+x"
        ),
        patch("*** Update File: f.txt", "@@", " line 38", "-line 39", "+last", "*** End of File"),
        patch("*** Update File: f.txt", " line 20", "-line 21", "-line 22", "+a", "+b", "+c", " line 23"),
    ]
    for text in patches:
        (root / "f.txt").write_text(source)
        apply_patch(text, root)
        assert (root / "f.txt").read_text() == reference_result(text, {"f.txt": source})["f.txt"], text
