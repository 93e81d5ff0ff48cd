"""``gpt-oss-native chat``: driven through a real terminal with pexpect on the tiny checkpoint (streaming, two
turns, Ctrl-C, Ctrl-D, /exit), and its tool loop in-process with scripted harmony and the real apply_patch."""

from __future__ import annotations

import datetime
import io
import os
import sys

import pexpect
import pytest
from gpt_oss_native import harmony
from gpt_oss_native.cli.chat import PROMPT, ChatSession
from gpt_oss_native.engine import Engine
from gpt_oss_native.sampling import SamplingParams
from gpt_oss_native.tools import ApplyPatchTool
from server_harness import ScriptedEngine


def spawn_chat(checkpoint, *options: str) -> pexpect.spawn:
    return pexpect.spawn(
        sys.executable,
        ["-m", "gpt_oss_native.cli.main", "chat", str(checkpoint), "--temperature", "0", *options],
        env={**os.environ, "NO_COLOR": "1", "XDG_STATE_HOME": os.environ.get("TMPDIR", "/tmp")},
        encoding="utf-8",
        timeout=120,
        dimensions=(50, 400),
    )


def expected_reply(checkpoint, user_text: str, max_tokens: int) -> str:
    """What the model says to a first message, computed here with the Engine and harmony directly."""
    with Engine(checkpoint, max_context=1024, max_sequences=1, progress=False) as engine:
        prompt = harmony.render_prompt(user_text, reasoning_effort="low",
                                       conversation_start_date=datetime.date.today().isoformat())
        stream = harmony.ChannelStream()
        text = ""
        for token in engine.generate(prompt, SamplingParams(temperature=0), max_tokens, harmony.stop_tokens()):
            if (delta := stream.feed(token)) is not None:
                text += delta.text
        if (delta := stream.finish()) is not None:
            text += delta.text
    return text


def test_two_turns_through_a_terminal(tiny_checkpoint):
    child = spawn_chat(tiny_checkpoint, "--max-tokens", "16", "--max-context", "1024")
    try:
        child.expect_exact("RANDOM weights")
        child.expect_exact(PROMPT)
        child.sendline("Hello there")
        child.expect_exact("assistant:")
        child.expect_exact("[stopped: token limit]")
        reply = child.before.replace("\r\n", "\n").strip("\n")
        child.expect_exact(PROMPT)
        child.sendline("And then?")
        child.expect_exact("assistant:")
        child.expect_exact(PROMPT)
        child.sendline("/exit")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0
    assert reply == expected_reply(tiny_checkpoint, "Hello there", 16).strip("\n")


def test_ctrl_c_stops_the_reply_and_ctrl_d_quits(tiny_checkpoint):
    child = spawn_chat(tiny_checkpoint, "--max-tokens", "3500", "--max-context", "4096")
    try:
        child.expect_exact(PROMPT)
        child.sendline("Tell me everything.")
        child.expect_exact("assistant:")
        child.expect(r"\S{3}")  # the reply is streaming
        child.sendintr()
        child.expect_exact("[interrupted]")
        child.expect_exact(PROMPT)
        child.sendintr()  # at the prompt: a fresh line, the session goes on
        child.expect_exact(PROMPT)
        child.sendline("Short answer, please.")  # the interrupted reply freed the only engine sequence
        child.expect_exact("assistant:")
        child.sendintr()
        child.expect_exact(PROMPT)
        child.sendeof()
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0


def test_tool_calls_run_and_feed_back_until_the_final_answer(tmp_path):
    patch = "*** Begin Patch\n*** Add File: hello.txt\n+hello from the model\n*** End Patch"
    engine = ScriptedEngine([
        ("<|channel|>analysis<|message|>I will create the file.<|end|>"
        f"<|start|>assistant<|channel|>commentary to=functions.apply_patch code<|message|>{patch}<|call|>"),
        "<|channel|>final<|message|>Created hello.txt.<|return|>",
    ])
    out = io.StringIO()
    session = ChatSession(engine, SamplingParams(temperature=0), tools=[ApplyPatchTool(tmp_path)], out=out,
                          show_reasoning=True, color=False)
    session.turn("Create hello.txt")
    assert (tmp_path / "hello.txt").read_text() == "hello from the model\n"
    text = out.getvalue()
    assert text.index("[thinking]\nI will create the file.") < text.index("[tool call to functions.apply_patch]")
    assert text.index("[functions.apply_patch output]\nDone!") < text.index("assistant:\nCreated hello.txt.")
    # the tool's answer went back to the model, with apply_patch declared in the developer message
    assert "<|start|>functions.apply_patch to=assistant<|channel|>commentary<|message|>Done!" in engine.prompts[1]
    assert "namespace functions" in engine.prompts[0] and "apply_patch" in engine.prompts[0]
    assert [m.channel for m in session.history[1:]] == ["analysis", "commentary", "commentary", "final"]


def test_reasoning_is_hidden_unless_asked():
    engine = ScriptedEngine([("<|channel|>analysis<|message|>secret musing<|end|>"
                             "<|start|>assistant<|channel|>final<|message|>Hi!<|return|>")])
    out = io.StringIO()
    ChatSession(engine, SamplingParams(temperature=0), out=out, color=False).turn("hi")
    assert "secret musing" not in out.getvalue() and "assistant:\nHi!" in out.getvalue()


@pytest.mark.parametrize("effort", ["low", "high"])
def test_effort_and_developer_message_reach_the_prompt(effort):
    engine = ScriptedEngine(["<|channel|>final<|message|>ok<|return|>"])
    ChatSession(engine, SamplingParams(), reasoning_effort=effort, developer_message="Be terse.",
                out=io.StringIO()).turn("hi")
    assert f"Reasoning: {effort}" in engine.prompts[0]
    assert "<|start|>developer<|message|># Instructions\n\nBe terse." in engine.prompts[0]
