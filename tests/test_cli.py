"""The command line, run as a user runs it: subprocesses, exit codes, stdout / stderr."""

from __future__ import annotations

import datetime
import io
import os
import re
import shutil
import subprocess
import sys

import pytest
from gpt_oss_native import _C, harmony
from gpt_oss_native.cli import generate as generate_cli
from gpt_oss_native.cli import main as cli_main
from gpt_oss_native.engine import Engine
from gpt_oss_native.sampling import SamplingParams

CLI = [sys.executable, "-m", "gpt_oss_native.cli.main"]
RATES = re.compile(
    r"prefill: (\d+) tokens in [\d.]+ s \([\d.]+ tok/s\) \| decode: (\d+) tokens in [\d.]+ s \([\d.]+ tok/s\)"
)


def _run(
    args: list[str], env: dict[str, str] | None = None, prefix: list[str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*(prefix or []), *CLI, *args], capture_output=True, text=True, env=env, timeout=timeout, check=False
    )


def test_top_level_help_lists_every_command():
    result = _run(["--help"])
    assert result.returncode == 0, result.stderr
    for name in cli_main.COMMANDS:
        assert name in result.stdout


@pytest.mark.parametrize("command", ["generate", "demo"])
def test_command_help(command):
    result = _run([command, "--help"])
    assert result.returncode == 0, result.stderr
    for option in (
        "--backend",
        "--max-tokens",
        "--temperature",
        "--top-p",
        "--top-k",
        "--seed",
        "--reasoning-effort",
        "--raw",
        "--developer",
        "--max-context",
    ):
        assert option in result.stdout


def test_python_dash_m_generate():
    result = subprocess.run(
        [sys.executable, "-m", "gpt_oss_native.generate", "--help"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "--prompt" in result.stdout


def test_demo_end_to_end_offline_on_a_fresh_machine(tmp_path):
    """README's first command: writes the random checkpoint, provisions the vocabulary offline, generates."""
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith(("TIKTOKEN", "XDG_CACHE"))}
    env |= {
        "XDG_CACHE_HOME": str(tmp_path / "cache"),
        "TIKTOKEN_RS_CACHE_DIR": str(tmp_path / "rs-cache"),
        "HTTPS_PROXY": "http://127.0.0.1:9",
        "HTTP_PROXY": "http://127.0.0.1:9",
        "NO_PROXY": "",
    }
    unshare = shutil.which("unshare")
    offline = (
        [unshare, "-rn"]
        if unshare
        and subprocess.run([unshare, "-rn", "true"], capture_output=True, check=False).returncode == 0
        else []
    )
    directory = tmp_path / "demo-checkpoint"
    args = ["demo", str(directory), "-p", "Why is the sky blue?", "--max-tokens", "24"]
    result = _run(args, env=env, prefix=offline)
    assert result.returncode == 0, result.stderr
    assert "RANDOM weights" in result.stderr and "noise" in result.stderr
    assert (directory / "config.json").is_file()
    assert result.stdout.strip(), "no generated text"
    rates = RATES.search(result.stderr)
    assert rates, result.stderr
    assert int(rates.group(2)) == 23  # 24 tokens: the first comes out of the prefill
    assert "Traceback" not in result.stderr

    # A second run reuses the checkpoint.
    again = _run(args, env=env, prefix=offline)
    assert again.returncode == 0, again.stderr
    assert "writing a tiny random demo checkpoint" not in again.stderr


def test_demo_refuses_a_directory_that_is_not_a_demo_checkpoint(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    result = _run(["demo", str(tmp_path)])
    assert result.returncode == 1
    assert "is not a demo checkpoint" in result.stderr and "Traceback" not in result.stderr


def test_raw_prints_the_decoded_token_stream(tiny_checkpoint):
    """--raw --temperature 0 prints exactly the decoded greedy tokens of the rendered harmony prompt."""
    prompt = "Why is the sky blue?"
    result = _run(
        [
            "generate",
            str(tiny_checkpoint),
            "-p",
            prompt,
            "--raw",
            "--temperature",
            "0",
            "--max-tokens",
            "12",
            "--reasoning-effort",
            "low",
        ]
    )
    assert result.returncode == 0, result.stderr
    prompt_tokens = harmony.render_prompt(
        prompt, reasoning_effort="low", conversation_start_date=datetime.date.today().isoformat()
    )
    with Engine(tiny_checkpoint, max_context=8192, progress=False) as engine:
        tokens = list(
            engine.generate(prompt_tokens, SamplingParams(temperature=0), 12, harmony.stop_tokens())
        )
    decoder = harmony.TextStream()
    assert (
        result.stdout == "".join(decoder.decode([t]) for t in tokens) + decoder.decode([], final=True) + "\n"
    )
    rates = RATES.search(result.stderr)
    assert rates and int(rates.group(1)) == len(prompt_tokens)


def test_missing_model_is_a_one_line_error(tmp_path):
    result = _run(["generate", str(tmp_path / "no-such-model"), "-p", "hi"])
    assert result.returncode == 1
    assert "does not exist" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--temperature", "-1"], "must be a finite number >= 0"),
        (["--top-p", "0"], r"must be in \(0, 1\]"),
        (["--max-tokens", "zero"], "must be an integer"),
        (["--backend", "tpu"], "invalid choice: 'tpu'"),
        (["--reasoning-effort", "max"], "invalid choice: 'max'"),
    ],
)
def test_bad_arguments_are_usage_errors(tiny_checkpoint, args, message):
    result = _run(["generate", str(tiny_checkpoint), "-p", "hi", *args])
    assert result.returncode == 2
    assert re.search(message, result.stderr), result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.skipif(bool(_C.cuda_devices()), reason="this machine can run the CUDA backend")
def test_cuda_unavailable_is_a_clear_error(tiny_checkpoint):
    result = _run(["generate", str(tiny_checkpoint), "-p", "hi", "--backend", "cuda"])
    assert result.returncode == 1
    assert re.search("no CUDA backend|no CUDA device", result.stderr), result.stderr
    assert "Traceback" not in result.stderr


def test_a_missing_subcommand_module_is_reported(monkeypatch, capsys):
    monkeypatch.setitem(cli_main.COMMANDS, "teleport", "not written yet")
    with pytest.raises(SystemExit) as exit_info:
        cli_main.main(["teleport"])
    assert exit_info.value.code == 2
    assert "this command is not available in this installation" in capsys.readouterr().err


# ---- how channels are shown ----------------------------------------------------------------------------

COMPLETION = (
    "<|channel|>analysis<|message|>Rayleigh scattering.<|end|>"
    "<|start|>assistant<|channel|>final<|message|>Short wavelengths scatter more.<|return|>"
)


def _printed(color: bool) -> str:
    out = io.StringIO()
    printer = generate_cli._ChannelPrinter(out, color=color)
    for token in harmony.get_encoding().encode(COMPLETION, allowed_special="all"):
        printer.token(token)
    printer.finish()
    return out.getvalue()


def test_channels_get_headings_when_not_a_terminal():
    assert _printed(color=False) == (
        "--- analysis ---\nRayleigh scattering.\n\n--- final ---\nShort wavelengths scatter more.\n"
    )


def test_thinking_is_dimmed_on_a_terminal():
    text = _printed(color=True)
    assert text.startswith("\x1b[0m\x1b[2mthinking: Rayleigh scattering.")
    assert text.endswith("\x1b[0m\n\nShort wavelengths scatter more.\x1b[0m\n")
