"""The python tool's sandbox against hostile code: no network, no host files, bounded resources, nothing left.

Runs as root here and in CI, where the sandbox drops to `nobody`; one test also runs the sandbox as an
unprivileged user (bwrap's user-namespace mode).
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import uuid
from pathlib import Path

import pytest
from gpt_oss_native.tools import PythonTool
from gpt_oss_native.tools.python_sandbox import (
    NO_OUTPUT_WARNING,
    UNSAFE_ENV_VAR,
    PythonSandbox,
    SandboxError,
    SandboxLimits,
)
from gpt_oss_native.tools.python_tool import PYTHON_DESCRIPTION
from openai_harmony import Message, Role


def _why_no_sandbox() -> str | None:
    """Why this machine cannot sandbox anything (no bwrap, or namespaces forbidden), or None if it can."""
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        return "bubblewrap (bwrap) is not installed"
    probe = subprocess.run(
        [bwrap, "--unshare-all", "--ro-bind", "/", "/", "true"], capture_output=True, check=False
    )
    return (
        None
        if probe.returncode == 0
        else f"bwrap cannot create namespaces here: {probe.stderr.decode().strip()}"
    )


NO_SANDBOX = _why_no_sandbox()
needs_sandbox = pytest.mark.skipif(NO_SANDBOX is not None, reason=f"no sandbox on this machine: {NO_SANDBOX}")

LIMITS = SandboxLimits(timeout_s=20, cpu_s=10, memory_bytes=1 << 30, processes=32, output_bytes=4096)


@pytest.fixture(scope="module")
def sandbox() -> PythonSandbox:
    if NO_SANDBOX is not None:
        pytest.skip(f"no sandbox on this machine: {NO_SANDBOX}")
    box = PythonSandbox(LIMITS)
    box.check()
    return box


def run(box: PythonSandbox, code: str) -> str:
    return box.run(textwrap.dedent(code)).to_text(box.limits)


def foreign_pid_namespace_processes() -> set[int]:
    """Live processes visible here that belong to another pid namespace (a sandbox's).

    Zombies do not count: bwrap's monitor exits without reaping the sandbox's init, which the host's init
    reaps (in this container, within a couple of seconds); a zombie runs nothing and holds only its pid.
    """
    own = os.readlink("/proc/self/ns/pid")
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                zombie = "\nState:\tZ" in Path(f"/proc/{entry}/status").read_text()
                if not zombie and os.readlink(f"/proc/{entry}/ns/pid") != own:
                    found.add(int(entry))
            except OSError:
                pass  # exited meanwhile, or not ours to inspect
    return found


def assert_nothing_left(before: set[int]) -> None:
    deadline = time.monotonic() + 5
    while (left := foreign_pid_namespace_processes() - before) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not left, f"sandbox processes survived the call: {sorted(left)}"


# -- what the model sees ---------------------------------------------------------------------------------------


def test_description_is_the_reference_tools_word_for_word() -> None:
    spec = importlib.util.find_spec("gpt_oss")
    assert spec is not None and spec.origin is not None
    source = Path(spec.origin).parent / "tools" / "python_docker" / "docker_tool.py"
    texts = [
        node.value
        for node in ast.walk(ast.parse(source.read_text()))
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and "STATELESS" in node.value
    ]
    assert len(texts) == 1
    assert PYTHON_DESCRIPTION == texts[0].strip()


@needs_sandbox
def test_tool_message_round_trip(sandbox: PythonSandbox) -> None:
    tool = PythonTool(sandbox)
    assert tool.tool_config.name == "python" and tool.tool_config.description == PYTHON_DESCRIPTION
    assert tool.handles("python") and not tool.handles("pythonx") and not tool.handles("browser.open")
    call = Message.from_role_and_content(Role.ASSISTANT, "print(6 * 7)").with_recipient("python")
    [reply] = tool.process(call.with_channel("analysis"))
    assert reply.author.role == Role.TOOL and reply.author.name == "python"
    assert reply.recipient == "assistant" and reply.channel == "analysis"
    assert reply.content[0].text == "42\n"


def test_output_of_a_normal_script(sandbox: PythonSandbox) -> None:
    out = run(
        sandbox,
        """
        import sys
        print("to stdout")
        print("to stderr", file=sys.stderr)
        print("again stdout")
        1 / 0
        """,
    )
    assert out.startswith("to stdout\nto stderr\nagain stdout\nTraceback (most recent call last):\n")
    assert out.rstrip().endswith("ZeroDivisionError: division by zero")
    assert run(sandbox, "x = 1") == NO_OUTPUT_WARNING
    result = sandbox.run("import sys; sys.exit(3)")
    assert result.exit_code == 3 and not result.timed_out and result.signal is None


def test_calls_share_nothing(sandbox: PythonSandbox) -> None:
    listing = "import os; print(sorted(os.listdir('/tmp')), os.getcwd())"
    baseline = run(sandbox, listing)  # empty, unless the interpreter itself lives under /tmp (as in CI)
    assert baseline.endswith(" /tmp\n") and "state" not in baseline
    assert "'state'" in run(sandbox, "open('/tmp/state', 'w').write('x')\n" + listing)
    assert run(sandbox, listing) == baseline


@needs_sandbox
def test_an_interpreter_under_tmp(tmp_path: Path) -> None:
    """CI's virtualenv lives in /tmp: the sandbox's own /tmp must not hide it, nor show the rest of /tmp."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    (tmp_path / "beside.txt").write_text("not for the sandbox")
    box = PythonSandbox(LIMITS, python=str(venv / "bin" / "python"))
    out = run(
        box,
        f"""
        import os, sys
        print(sys.prefix == {str(venv)!r}, sorted(os.listdir({str(tmp_path)!r})))
        open("/tmp/scratch", "w").write("writable")
        try:
            open({str(venv / "escape")!r}, "w")
        except OSError as e:
            print("venv read-only", type(e).__name__)
        """,
    )
    assert out == "True ['venv']\nvenv read-only OSError\n", out
    assert not (venv / "escape").exists()


def test_the_virtual_environment_is_usable(sandbox: PythonSandbox) -> None:
    code = "import numpy, os; print(numpy.arange(4).sum(), os.environ['OPENBLAS_NUM_THREADS'])"
    assert run(sandbox, code) == "6 8\n"  # math libraries keep to a few threads: threads count as processes


# -- isolation -------------------------------------------------------------------------------------------------


def test_no_network(sandbox: PythonSandbox) -> None:
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    port = server.getsockname()[1]
    accepted: list[object] = []

    def accept() -> None:
        end = time.monotonic() + 10
        while time.monotonic() < end:
            try:
                accepted.append(server.accept())
            except TimeoutError:
                continue
            except OSError:
                return

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    # The host's listener is reachable from here, so a failure inside can only be the sandbox.
    with socket.create_connection(("127.0.0.1", port), timeout=5):
        pass
    deadline = time.monotonic() + 5
    while not accepted and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(accepted) == 1
    out = run(
        sandbox,
        f"""
        import socket
        for target in [("127.0.0.1", {port}), ("1.1.1.1", 53)]:
            try:
                socket.create_connection(target, timeout=3)
                print("CONNECTED", target)
            except OSError as e:
                print("refused", target, type(e).__name__)
        try:
            print("RESOLVED", socket.getaddrinfo("pypi.org", 443))
        except OSError as e:
            print("no dns", type(e).__name__)
        print(sorted(name for _, name in socket.if_nameindex()))
        """,
    )
    server.close()
    thread.join()
    assert "CONNECTED" not in out and "RESOLVED" not in out, out
    assert out.count("refused") == 2 and "no dns" in out, out
    assert out.rstrip().endswith("['lo']"), out
    assert len(accepted) == 1, "the sandbox reached the host's listener"


def test_writes_outside_tmp_fail(sandbox: PythonSandbox, tmp_path: Path) -> None:
    targets = ["/escape", "/usr/escape", "/etc/escape", f"{sys.prefix}/escape", str(tmp_path / "escape")]
    out = run(
        sandbox,
        f"""
        for path in {targets!r}:
            try:
                open(path, "w").write("x")
                print("WROTE", path)
            except OSError as e:
                print("denied", path, type(e).__name__)
        """,
    )
    assert "WROTE" not in out and out.count("denied") == len(targets), out
    for path in targets:
        assert not os.path.exists(path), path


def test_host_files_and_environment_are_invisible(
    sandbox: PythonSandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = uuid.uuid4().hex
    home = tmp_path / "home"
    home.mkdir()
    (home / "secret.txt").write_text(secret)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("GPT_OSS_TEST_SECRET", secret)
    paths = [str(home / "secret.txt"), str(Path(__file__).resolve()), "/proc/1/environ"]
    root_secret = None
    if os.geteuid() == 0 and os.path.isdir("/root"):
        root_secret = Path("/root") / f".gpt_oss_native_test_{uuid.uuid4().hex}"
        root_secret.write_text(secret)
        paths.append(str(root_secret))
    try:
        box = PythonSandbox(LIMITS)  # created with the test's HOME in place
        out = run(
            box,
            f"""
            import os
            for path in {paths!r}:
                try:
                    print("READ", path, open(path, "rb").read()[:200])
                except OSError as e:
                    print("denied", path, type(e).__name__)
            print("env", sorted(os.environ))
            print("home", os.path.expanduser("~"))
            print("uid", os.getuid(), os.geteuid())
            """,
        )
    finally:
        if root_secret is not None:
            root_secret.unlink()
    assert secret not in out, out
    assert f"denied {paths[0]}" in out and f"denied {paths[1]}" in out, out
    assert "GPT_OSS_TEST_SECRET" not in out and "home /tmp" in out
    if os.geteuid() == 0:
        assert "uid 65534 65534" in out, out


def test_no_capabilities_and_no_host_processes(sandbox: PythonSandbox) -> None:
    out = run(
        sandbox,
        f"""
        import os, signal
        status = dict(line.split(":", 1) for line in open("/proc/self/status").read().splitlines())
        for key in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb", "NoNewPrivs"):
            print(key, int(status[key].strip(), 16))
        try:
            os.kill({os.getpid()}, signal.SIGTERM)
            print("KILLED THE HOST")
        except OSError as e:
            print("kill", type(e).__name__)
        print("pids", len([p for p in os.listdir("/proc") if p.isdigit()]))
        """,
    )
    for key in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
        assert f"{key} 0\n" in out, out
    assert "NoNewPrivs 1\n" in out
    assert "KILLED" not in out and "kill ProcessLookupError" in out
    pids = int(out.rsplit("pids ", 1)[1])
    assert pids <= 3, out  # bwrap's init, the script, maybe a reaper


# -- resources -------------------------------------------------------------------------------------------------


def test_fork_bomb_is_contained_and_cleaned_up(sandbox: PythonSandbox) -> None:
    before = foreign_pid_namespace_processes()
    started = time.monotonic()
    result = sandbox.run(
        textwrap.dedent(
            """
            import os, time
            refused = 0
            for _ in range(100000):
                try:
                    os.fork()
                except OSError:
                    refused += 1
                    if refused > 200:
                        break
            print("refused", refused)
            time.sleep(1)
            """
        )
    )
    assert time.monotonic() - started < LIMITS.timeout_s
    assert "refused" in result.output
    assert_nothing_left(before)


def test_detached_children_do_not_outlive_the_call(sandbox: PythonSandbox) -> None:
    before = foreign_pid_namespace_processes()
    out = run(
        sandbox,
        """
        import os, subprocess, sys
        subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True)
        if os.fork() == 0:  # a double-forked daemon
            os.setsid()
            if os.fork() == 0:
                import time
                time.sleep(600)
            os._exit(0)
        print("parent done")
        """,
    )
    assert out == "parent done\n"
    assert_nothing_left(before)


def test_huge_output_is_truncated(sandbox: PythonSandbox) -> None:
    result = sandbox.run(
        "import sys\nfor i in range(300_000): sys.stdout.write(f'line {i}\\n')\nprint('THE END')"
    )
    text = result.to_text(sandbox.limits)
    assert result.truncated and result.exit_code == 0
    assert text.startswith("line 0\nline 1\n") and text.endswith("line 299999\nTHE END\n")
    assert "bytes of output omitted ...]" in text
    assert len(text.encode()) < LIMITS.output_bytes + 100


@needs_sandbox
def test_wall_clock_timeout_kills_everything() -> None:
    box = PythonSandbox(SandboxLimits(timeout_s=2, cpu_s=60))
    before = foreign_pid_namespace_processes()
    started = time.monotonic()
    result = box.run("import os, time\nos.fork()\nprint('sleeping', flush=True)\ntime.sleep(600)")
    elapsed = time.monotonic() - started
    # The script sleeps 600 s: finishing well under that proves the kill; the slack absorbs a loaded CI machine.
    assert 2 <= elapsed < 30, elapsed
    assert result.timed_out and result.exit_code is None
    text = result.to_text(box.limits)
    assert "sleeping" in text and text.endswith(
        "[ERROR] Execution timed out after 2 seconds and was stopped."
    )
    assert_nothing_left(before)


@needs_sandbox
def test_cpu_limit_stops_a_busy_loop() -> None:
    box = PythonSandbox(SandboxLimits(timeout_s=30, cpu_s=1))
    started = time.monotonic()
    result = box.run("while True:\n    pass")
    assert time.monotonic() - started < 10
    assert not result.timed_out and result.signal is not None
    assert (
        result.to_text(box.limits) == "[ERROR] CPU time limit of 1 seconds exceeded; the process was killed."
    )


def test_memory_is_limited(sandbox: PythonSandbox) -> None:
    out = run(
        sandbox,
        """
        try:
            block = bytearray(8 << 30)
            print("GOT 8 GiB")
        except MemoryError:
            print("one block refused")
        chunks = []
        try:
            while True:
                chunks.append(bytearray(64 << 20))
        except MemoryError:
            print("grew to", len(chunks) * 64, "MiB")
        """,
    )
    assert "GOT" not in out and "one block refused" in out, out
    grown = int(out.split("grew to ")[1].split()[0])
    assert grown <= LIMITS.memory_bytes >> 20, out


@needs_sandbox
def test_file_and_tmp_sizes_are_limited() -> None:
    box = PythonSandbox(SandboxLimits(file_bytes=1 << 20, tmp_bytes=4 << 20))
    out = run(
        box,
        """
        import signal
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # get EFBIG instead of being killed
        for name, size in (("big", 2 << 20), ("a", 1 << 20), ("b", 1 << 20), ("c", 1 << 20), ("d", 1 << 20)):
            try:
                with open("/tmp/" + name, "wb") as f:
                    f.write(b"x" * size)
                print("wrote", name)
            except OSError as e:
                print("refused", name, e.errno)
        """,
    )
    assert "refused big 27" in out, out  # EFBIG: larger than the file-size limit
    assert "wrote a" in out and "refused d 28" in out, out  # ENOSPC: the 4 MiB /tmp is full


# -- setup errors and the opt-out ------------------------------------------------------------------------------


def test_missing_bwrap_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv(UNSAFE_ENV_VAR, raising=False)
    with pytest.raises(SandboxError, match="apt-get install bubblewrap") as info:
        PythonSandbox()
    assert UNSAFE_ENV_VAR in str(info.value)


def test_broken_namespaces_are_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake = tmp_path / "bwrap"
    fake.write_text("#!/bin/sh\necho 'bwrap: No permissions to creating new namespace' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv(UNSAFE_ENV_VAR, raising=False)
    with pytest.raises(SandboxError, match="No permissions to creating new namespace"):
        PythonTool(PythonSandbox())


def test_unsafe_mode_needs_the_explicit_opt_in(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no bwrap
    monkeypatch.setenv(UNSAFE_ENV_VAR, "1")
    box = PythonSandbox(LIMITS)
    assert "WITHOUT a sandbox" in caplog.text
    assert run(box, "import os; print(os.getcwd() != '/tmp', 6 * 7)") == "True 42\n"


def test_limits_are_validated() -> None:
    with pytest.raises(ValueError, match="timeout_s must be positive"):
        SandboxLimits(timeout_s=0)
    with pytest.raises(ValueError, match="processes must be positive"):
        SandboxLimits(processes=-1)


# -- as an unprivileged user -----------------------------------------------------------------------------------

_UNPRIVILEGED_SCRIPT = """
import importlib.util, json, sys
spec = importlib.util.spec_from_file_location("python_sandbox", sys.argv[1])
mod = importlib.util.module_from_spec(spec)
sys.modules["python_sandbox"] = mod
spec.loader.exec_module(mod)
box = mod.PythonSandbox(mod.SandboxLimits(timeout_s=20, processes=32, output_bytes=4096))
probe = '''
import os, socket
print("uid", os.getuid())
try:
    socket.create_connection(("127.0.0.1", int(PORT)), timeout=3)
    print("CONNECTED")
except OSError:
    print("no network")
try:
    open("/escape", "w")
    print("WROTE")
except OSError:
    print("read-only root")
status = dict(line.split(":", 1) for line in open("/proc/self/status").read().splitlines())
print("caps", int(status["CapEff"], 16), int(status["CapBnd"], 16))
import time
for _ in range(1000):
    try:
        if os.fork() == 0:
            time.sleep(30)
            os._exit(0)
    except OSError:
        print("fork refused")
        break
'''
out = box.run(probe.replace("PORT", sys.argv[2])).output
print(json.dumps(out))
"""


@needs_sandbox
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to switch to an unprivileged user")
@pytest.mark.skipif(not os.access("/usr/bin/python3", os.X_OK), reason="needs a system /usr/bin/python3")
def test_sandbox_as_an_unprivileged_user() -> None:
    userns = subprocess.run(
        ["bwrap", "--unshare-user", "--ro-bind", "/", "/", "true"], user=65534, group=65534, extra_groups=[],
        capture_output=True, check=False,
    )  # fmt: skip
    if userns.returncode != 0:
        pytest.skip(f"unprivileged user namespaces are not allowed here: {userns.stderr.decode().strip()}")
    work = Path(tempfile.mkdtemp())
    try:
        work.chmod(0o755)
        module = work / "python_sandbox.py"
        shutil.copy(Path(__file__).parents[1] / "python/gpt_oss_native/tools/python_sandbox.py", module)
        module.chmod(0o644)
        server = socket.create_server(("127.0.0.1", 0))
        before = foreign_pid_namespace_processes()
        done = subprocess.run(
            ["/usr/bin/python3", "-I", "-c", _UNPRIVILEGED_SCRIPT, str(module), str(server.getsockname()[1])],
            user=65534, group=65534, extra_groups=[], cwd=work, env={"PATH": "/usr/bin:/bin", "HOME": "/nonexistent"},
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        server.close()
        assert done.returncode == 0, done.stderr
        out = json.loads(done.stdout)
        assert "uid 65534\nno network\nread-only root\ncaps 0 0\nfork refused\n" == out, out
        assert_nothing_left(before)
    finally:
        shutil.rmtree(work)
