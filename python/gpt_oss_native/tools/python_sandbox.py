"""Stateless Python execution inside a bubblewrap (``bwrap``) sandbox.

Every call starts a fresh interpreter in fresh namespaces (mount, pid, network, ipc, uts, cgroup): the host's
system directories and the interpreter's own prefix are mounted read-only, ``/tmp`` is a private size-limited
tmpfs and the working directory, nothing else of the host (home, workspace, sockets, devices) is visible, and
there is no network at all (only a loopback interface of its own). Resource limits (CPU time, address space,
file size, number of processes) are set inside the sandbox; a wall-clock timeout kills the whole sandbox.

Who the code runs as:

- an ordinary user: bwrap makes a user namespace and drops every capability (nested user namespaces disabled);
- root: the kernel never enforces the process-count limit for uid 0, not even inside a user namespace mapped
  to it, so bwrap runs *without* a user namespace and the launcher drops to ``nobody`` (65534), clears every
  capability set (bounding and inheritable included) before running the code. ``no_new_privs`` is always set
  by bwrap, so set-uid binaries cannot give anything back.

This module needs only the standard library (it is also run standalone by a test, as an unprivileged user).
"""

from __future__ import annotations

import logging
import os
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "UNSAFE_ENV_VAR",
    "ExecutionResult",
    "PythonSandbox",
    "SandboxError",
    "SandboxLimits",
]

log = logging.getLogger(__name__)

# Set to 1 to run the model's code WITHOUT any isolation (only resource limits). Never the default.
UNSAFE_ENV_VAR = "GPT_OSS_NATIVE_UNSAFE_PYTHON"

NOBODY = 65534

# Message the reference tool returns when a script printed nothing (gpt_oss/tools/python_docker).
NO_OUTPUT_WARNING = (
    "[WARN] No output available. Use print() to output anything to stdout to receive the output"
)

# Host paths the interpreter may need, mounted read-only where they exist. Nothing user-specific: no passwd,
# no resolv.conf (there is no network anyway), no ssh/ssl private material.
_SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
_ETC_PATHS = (
    "/etc/ld.so.cache",
    "/etc/ld.so.conf",
    "/etc/ld.so.conf.d",
    "/etc/localtime",
    "/etc/alternatives",
    "/etc/fonts",
    "/etc/mime.types",
)

# Runs inside the sandbox, first thing, with the interpreter in isolated mode and without `site`: sets the
# resource limits, drops root (see the module docstring), then replaces itself with a fresh interpreter that
# reads the model's script from stdin. argv: cpu_s mem_bytes file_bytes nproc uid gid python
_LAUNCHER = r"""
import os, resource, sys
cpu, mem, fsize, nproc, uid, gid = map(int, sys.argv[1:7])
python = sys.argv[7]
for res, soft, hard in (
    (resource.RLIMIT_CPU, cpu, cpu + 1),
    (resource.RLIMIT_AS, mem, mem),
    (resource.RLIMIT_FSIZE, fsize, fsize),
    (resource.RLIMIT_NPROC, nproc, nproc),
    (resource.RLIMIT_CORE, 0, 0),
):
    resource.setrlimit(res, (soft, hard))
if uid >= 0:
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    last_cap = int(open("/proc/sys/kernel/cap_last_cap").read())
    for cap in range(last_cap + 1):
        if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "cannot drop capability %d from the bounding set" % cap)
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)  # clears the permitted, effective and ambient sets
    header = (ctypes.c_uint32 * 2)(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this process
    data = (ctypes.c_uint32 * 6)()  # effective, permitted, inheritable: all empty
    if libc.capset(header, data) != 0:
        raise OSError(ctypes.get_errno(), "cannot clear the capability sets")
    if os.getuid() == 0 or os.geteuid() == 0:
        raise SystemExit("sandbox launcher: still root after dropping privileges")
os.execv(python, [python, "-u", "-"])
"""


class SandboxError(RuntimeError):
    """The sandbox cannot be set up (bwrap missing, namespaces not permitted, ...)."""


@dataclass(frozen=True)
class SandboxLimits:
    """Limits of one execution. Sizes in bytes. ``processes`` counts threads too; ``memory_bytes`` bounds each
    process's address space, so the sandbox as a whole stays under ``processes * memory_bytes``."""

    timeout_s: float = 60.0
    cpu_s: int = 60
    memory_bytes: int = 2 << 30
    file_bytes: int = 64 << 20
    tmp_bytes: int = 256 << 20
    processes: int = 32
    output_bytes: int = 16 << 10

    def __post_init__(self) -> None:
        for name in ("timeout_s", "cpu_s", "memory_bytes", "file_bytes", "tmp_bytes", "processes"):
            if not getattr(self, name) > 0:
                raise ValueError(f"SandboxLimits.{name} must be positive, got {getattr(self, name)!r}")
        if self.output_bytes < 64:
            raise ValueError(f"SandboxLimits.output_bytes must be at least 64, got {self.output_bytes!r}")


@dataclass(frozen=True)
class ExecutionResult:
    output: str  # stdout and stderr interleaved, possibly truncated
    exit_code: int | None  # None when the wall-clock timeout stopped it
    signal: int | None  # the signal that killed the code, if any
    timed_out: bool
    truncated: bool

    def to_text(self, limits: SandboxLimits) -> str:
        """What the model sees: the output, then a line saying how the run ended if it ended abnormally."""
        notes = []
        if self.timed_out:
            notes.append(f"[ERROR] Execution timed out after {limits.timeout_s:g} seconds and was stopped.")
        elif self.signal == signal.SIGXCPU:
            notes.append(
                f"[ERROR] CPU time limit of {limits.cpu_s} seconds exceeded; the process was killed."
            )
        elif self.signal is not None:
            notes.append(f"[ERROR] The process was killed by {signal.Signals(self.signal).name}.")
        text = self.output
        if not text.strip() and not notes:
            return NO_OUTPUT_WARNING
        if notes:
            text = (text.rstrip("\n") + "\n" if text.strip() else "") + "\n".join(notes)
        return text


class _BoundedOutput:
    """Keeps the first and the last part of a stream that may be arbitrarily long."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.tail_limit = limit // 2
        self.head = bytearray()
        self.tail = bytearray()
        self.total = 0

    def add(self, data: bytes) -> None:
        self.total += len(data)
        room = self.limit - len(self.head)
        if room > 0:
            self.head += data[:room]
            data = data[room:]
        if data:
            self.tail += data
            del self.tail[: -self.tail_limit]

    @property
    def truncated(self) -> bool:
        return self.total > self.limit

    def text(self) -> str:
        if not self.truncated:
            return self.head.decode("utf-8", errors="replace")
        head = self.head[: self.limit - self.tail_limit]
        omitted = self.total - len(head) - len(self.tail)
        return (
            head.decode("utf-8", errors="replace")
            + f"\n[... {omitted} bytes of output omitted ...]\n"
            + self.tail.decode("utf-8", errors="replace")
        )


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


class PythonSandbox:
    """Runs Python source statelessly under bubblewrap; see the module docstring.

    ``python``: the interpreter to run (default: this one, with its virtual environment's packages, mounted
    read-only). ``unsafe_no_sandbox``: run without isolation (resource limits only); defaults to the
    ``GPT_OSS_NATIVE_UNSAFE_PYTHON`` environment variable. ``run()`` is blocking and thread-safe.
    """

    def __init__(
        self,
        limits: SandboxLimits | None = None,
        *,
        python: str | None = None,
        unsafe_no_sandbox: bool | None = None,
    ) -> None:
        self.limits = limits or SandboxLimits()
        self.unsafe = _env_flag(UNSAFE_ENV_VAR) if unsafe_no_sandbox is None else unsafe_no_sandbox
        self.python = python or sys.executable
        if not self.python or not os.access(self.python, os.X_OK):
            raise SandboxError(f"Python interpreter {self.python!r} is not an executable file.")
        self._bwrap: str | None = None
        self._checked = False
        if self.unsafe:
            log.warning("%s is set: the python tool runs the model's code WITHOUT a sandbox", UNSAFE_ENV_VAR)
        else:
            self._bwrap = shutil.which("bwrap")
            if self._bwrap is None:
                raise SandboxError(
                    "The python tool needs bubblewrap to isolate the model's code, and `bwrap` is not on PATH. "
                    "Install it (Debian/Ubuntu: `apt-get install bubblewrap`, Fedora: `dnf install bubblewrap`), "
                    f"or set {UNSAFE_ENV_VAR}=1 to run the code unsandboxed (dangerous)."
                )

    # -- command line ----------------------------------------------------------------------------------------

    def _interpreter_dirs(self) -> list[str]:
        """Directories of the interpreter installation that must be visible inside the sandbox."""
        if os.path.abspath(self.python) == os.path.abspath(sys.executable):
            prefixes = {sys.prefix, sys.exec_prefix, sys.base_prefix, sys.base_exec_prefix}
        else:
            query = "import sys; print(sys.prefix, sys.exec_prefix, sys.base_prefix, sys.base_exec_prefix, sep=chr(10))"
            probe = subprocess.run(
                [self.python, "-I", "-c", query],
                check=False,
                capture_output=True,
                text=True,
                timeout=30,
            )
            if probe.returncode != 0:
                raise SandboxError(f"Cannot query interpreter {self.python!r}: {probe.stderr.strip()}")
            prefixes = set(probe.stdout.splitlines())
        prefixes.add(os.path.dirname(os.path.abspath(self.python)))
        home = os.path.realpath(os.path.expanduser("~"))
        dirs: set[str] = set()
        for prefix in prefixes:
            for path in {os.path.abspath(prefix), os.path.realpath(prefix)}:
                if path in ("/", home):
                    raise SandboxError(
                        f"The interpreter {self.python!r} lives directly in {path!r}; mounting that into the "
                        "sandbox would expose it entirely. Use a Python installed in its own prefix or a venv."
                    )
                if not any(path == d or path.startswith(d + "/") for d in _SYSTEM_DIRS):
                    dirs.add(path)
        # A directory inside another one is covered by the outer mount.
        return sorted(d for d in dirs if not any(d.startswith(o + "/") for o in dirs))

    def _bwrap_args(self) -> list[str]:
        assert self._bwrap is not None
        is_root = os.geteuid() == 0
        args = [self._bwrap, "--die-with-parent", "--new-session", "--hostname", "sandbox"]
        args += ["--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts", "--unshare-cgroup-try"]
        if is_root:  # see the module docstring: the launcher drops to nobody and clears the capabilities
            args += ["--cap-drop", "ALL"]
            args += [arg for cap in ("CAP_SETUID", "CAP_SETGID", "CAP_SETPCAP") for arg in ("--cap-add", cap)]
        else:
            args += ["--unshare-user", "--disable-userns", "--cap-drop", "ALL"]

        for path in _SYSTEM_DIRS:
            if os.path.islink(path):
                args += ["--symlink", os.readlink(path), path]
            elif os.path.isdir(path):
                args += ["--ro-bind", path, path]
        for path in _ETC_PATHS:
            args += ["--ro-bind-try", path, path]
        args += ["--proc", "/proc", "--dev", "/dev"]
        args += ["--perms", "1777", "--size", str(self.limits.tmp_bytes), "--tmpfs", "/tmp"]
        # After /tmp: an interpreter living under /tmp (a CI virtualenv) must not be hidden by the tmpfs.
        created = {"/", "/tmp"} | set(_SYSTEM_DIRS)
        for path in self._interpreter_dirs():
            # bwrap would create the missing parents mode 0700, unreadable after dropping root.
            parents = [str(p) for p in reversed(Path(path).parents) if str(p) not in created]
            for parent in parents:
                args += ["--perms", "0755", "--dir", parent]
            created.update(parents)
            args += ["--ro-bind", path, path]
        args += ["--remount-ro", "/", "--chdir", "/tmp"]
        return args

    def _command(self) -> list[str]:
        lim = self.limits
        uid = NOBODY if (not self.unsafe and os.geteuid() == 0) else -1
        launcher = [self.python, "-I", "-S", "-c", _LAUNCHER]
        launcher += [
            str(v) for v in (lim.cpu_s, lim.memory_bytes, lim.file_bytes, lim.processes, uid, NOBODY)
        ]
        launcher.append(self.python)
        return launcher if self.unsafe else self._bwrap_args() + ["--", *launcher]

    def _env(self) -> dict[str, str]:
        bin_dir = os.path.dirname(os.path.abspath(self.python))
        # Math libraries start a thread per core by default, which the process limit (threads count) refuses.
        threads = str(max(1, min(8, self.limits.processes // 4)))
        env = {
            "PATH": f"{bin_dir}:/usr/local/bin:/usr/bin:/bin",
            "LANG": "C.UTF-8",
            "PYTHONDONTWRITEBYTECODE": "1",
            "MPLBACKEND": "Agg",
        }
        env |= {var: threads for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}
        if not self.unsafe:
            env |= {"HOME": "/tmp", "TMPDIR": "/tmp"}
        return env

    # -- running ---------------------------------------------------------------------------------------------

    def check(self) -> None:
        """Runs a trivial script once; raises SandboxError with bwrap's message if the sandbox cannot start."""
        if self._checked:
            return
        result = self._execute("print('ok')")
        if result.output.strip() != "ok" or result.exit_code != 0:
            raise SandboxError(
                "The python sandbox does not work on this machine (bubblewrap could not create its namespaces, "
                "or the interpreter failed inside it). Its output:\n"
                f"{result.output.strip()}\n"
                "Allow unprivileged user namespaces (sysctl kernel.unprivileged_userns_clone=1, or an AppArmor "
                f"profile for bwrap), run as root, or set {UNSAFE_ENV_VAR}=1 to run code unsandboxed (dangerous)."
            )
        self._checked = True

    def run(self, code: str) -> ExecutionResult:
        """Executes ``code`` (a whole script) in a fresh sandbox and returns its interleaved stdout/stderr."""
        self.check()
        return self._execute(code)

    def _execute(self, code: str) -> ExecutionResult:
        lim = self.limits
        # Unsandboxed code gets a scratch directory of its own; sandboxed code starts in its private /tmp.
        scratch = tempfile.TemporaryDirectory(prefix="gpt-oss-python-") if self.unsafe else nullcontext("/")
        with tempfile.TemporaryFile() as script, scratch as cwd:
            script.write(code.encode("utf-8", errors="surrogatepass"))
            script.seek(0)
            proc = subprocess.Popen(
                self._command(),
                stdin=script,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                env=self._env(),
                cwd=cwd,
                start_new_session=True,  # its own process group, killed as a whole
            )
            output = _BoundedOutput(lim.output_bytes)
            timed_out = False
            try:
                timed_out = not self._drain(proc, output, time.monotonic() + lim.timeout_s)
            finally:
                if proc.poll() is None:
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                assert proc.stdout is not None
                proc.stdout.close()
        status = proc.returncode
        # Popen reports a process killed by a signal as -signal, bwrap reports its child's as 128 + signal (so a
        # script's own sys.exit(137) reads as SIGKILL too).
        killed_by = -status if status < 0 else status - 128 if 128 < status <= 128 + 64 else None
        return ExecutionResult(
            output=output.text(),
            exit_code=None if timed_out else status,
            signal=None if timed_out else killed_by,
            timed_out=timed_out,
            truncated=output.truncated,
        )

    @staticmethod
    def _drain(proc: subprocess.Popen, output: _BoundedOutput, deadline: float) -> bool:
        """Reads the output until the process exits; False if the deadline passed first."""
        assert proc.stdout is not None
        fd = proc.stdout.fileno()
        with selectors.DefaultSelector() as selector:
            selector.register(fd, selectors.EVENT_READ)
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                if not selector.select(remaining):
                    continue
                chunk = os.read(fd, 1 << 16)
                if not chunk:
                    break
                output.add(chunk)
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            return False
        return True
