"""harmony.py against openai-harmony (the format's own implementation) and quicktok (an independent
tokenizer)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from gpt_oss_native import harmony
from openai_harmony import (
    Author,
    DeveloperContent,
    HarmonyError,
    Message,
    RenderConversationConfig,
    Role,
    StreamableParser,
    SystemContent,
    ToolDescription,
)

WEATHER_TOOL = ToolDescription.new(
    "get_weather",
    "Get the current weather in a city",
    parameters={"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
)


def _network_blocked_prefix() -> list[str]:
    """`unshare -rn` (a private network namespace with no interfaces) where the kernel allows it."""
    unshare = shutil.which("unshare")
    if unshare and subprocess.run([unshare, "-rn", "true"], capture_output=True, check=False).returncode == 0:
        return [unshare, "-rn"]
    return []


@pytest.fixture
def fresh_env(tmp_path, monkeypatch):
    """No vocabulary anywhere: empty XDG cache, no TIKTOKEN_ENCODINGS_BASE, empty harmony download cache."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("TIKTOKEN_RS_CACHE_DIR", str(tmp_path / "tiktoken-rs-cache"))
    monkeypatch.delenv(harmony.ENCODINGS_BASE_VAR, raising=False)
    return tmp_path


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------------------------------------------------
# Offline vocabulary

OFFLINE_PROBE = r"""
import json, os, sys
from gpt_oss_native import harmony
import quicktok
path = harmony.ensure_vocabulary()
enc = harmony.get_encoding()
texts = ["Why is the sky blue?", "naïve café — 東京 🌍", "def f(x):\n    return x**2\n"]
reference = quicktok.get_encoding("o200k_base")
print(json.dumps({
    "path": str(path),
    "env": os.environ.get("TIKTOKEN_ENCODINGS_BASE"),
    "ours": [enc.encode(t) for t in texts],
    "reference": [list(reference.encode(t)) for t in texts],
    "roundtrip": [enc.decode(enc.encode(t)) == t for t in texts],
}))
"""


def test_offline_provisioning_in_a_fresh_process(tmp_path):
    """A fresh machine, no network: the vocabulary comes from quicktok, hash-checked, and harmony loads."""
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith(("TIKTOKEN", "XDG_CACHE"))}
    env |= {
        "XDG_CACHE_HOME": str(tmp_path / "xdg"),
        "TIKTOKEN_RS_CACHE_DIR": str(tmp_path / "tiktoken-rs-cache"),
        "TMPDIR": str(tmp_path),
        # Belt and braces where namespaces are not allowed: any HTTP(S) request goes to a closed port.
        "HTTPS_PROXY": "http://127.0.0.1:9",
        "HTTP_PROXY": "http://127.0.0.1:9",
        "ALL_PROXY": "http://127.0.0.1:9",
        "NO_PROXY": "",
    }
    result = subprocess.run(
        [*_network_blocked_prefix(), sys.executable, "-c", OFFLINE_PROBE],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    path = Path(out["path"])
    assert path == tmp_path / "xdg" / "gpt_oss_native" / harmony.VOCAB_FILE
    assert out["env"] == str(path.parent)
    assert _sha256(path) == harmony.VOCAB_SHA256
    assert out["ours"] == out["reference"]
    assert all(out["roundtrip"])
    assert not list(path.parent.glob("*.tmp")), "a temporary file was left behind"


def test_a_vocabulary_with_the_wrong_hash_is_refused(fresh_env, monkeypatch):
    good = harmony._quicktok_vocab_bytes()
    corrupt = good.replace(b" 1000\n", b" 1001\n", 1)
    assert corrupt != good
    monkeypatch.setattr(harmony, "_quicktok_vocab_bytes", lambda: corrupt)
    with pytest.raises(harmony.VocabularyError, match=r"sha256 .* expected 446a9538.*refusing"):
        harmony.ensure_vocabulary()
    assert not (fresh_env / "xdg" / "gpt_oss_native" / harmony.VOCAB_FILE).exists()
    assert harmony.ENCODINGS_BASE_VAR not in os.environ


def test_a_corrupt_cached_file_is_rebuilt(fresh_env):
    path = fresh_env / "xdg" / "gpt_oss_native" / harmony.VOCAB_FILE
    path.parent.mkdir(parents=True)
    path.write_bytes(b"IQ== 0\n")  # a valid-looking but truncated vocabulary
    assert harmony.ensure_vocabulary() == path
    assert _sha256(path) == harmony.VOCAB_SHA256


def test_an_unwritable_cache_is_a_clear_error(fresh_env, monkeypatch):
    blocker = fresh_env / "a-file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))
    with pytest.raises(harmony.VocabularyError, match="point XDG_CACHE_HOME at a writable directory"):
        harmony.ensure_vocabulary()


def test_an_existing_encodings_base_is_respected(fresh_env, monkeypatch):
    source = harmony.ensure_vocabulary()
    mine = fresh_env / "mine"
    mine.mkdir()
    shutil.copy(source, mine / harmony.VOCAB_FILE)
    shutil.rmtree(source.parent)
    monkeypatch.setenv(harmony.ENCODINGS_BASE_VAR, str(mine))
    assert harmony.ensure_vocabulary() == mine / harmony.VOCAB_FILE
    assert os.environ[harmony.ENCODINGS_BASE_VAR] == str(mine)
    assert not source.exists(), "provisioned although the configured vocabulary was there"


def test_an_encodings_base_without_the_file_falls_back_to_the_offline_copy(fresh_env, monkeypatch):
    empty = fresh_env / "empty"
    empty.mkdir()
    monkeypatch.setenv(harmony.ENCODINGS_BASE_VAR, str(empty))
    path = harmony.ensure_vocabulary()
    assert path == fresh_env / "xdg" / "gpt_oss_native" / harmony.VOCAB_FILE
    assert os.environ[harmony.ENCODINGS_BASE_VAR] == str(path.parent)


def test_harmonys_own_download_cache_is_respected(fresh_env):
    source = harmony.ensure_vocabulary()
    del os.environ[harmony.ENCODINGS_BASE_VAR]
    downloaded = fresh_env / "tiktoken-rs-cache" / hashlib.sha1(harmony.VOCAB_URL.encode()).hexdigest()
    downloaded.parent.mkdir()
    shutil.move(source, downloaded)
    assert harmony.ensure_vocabulary() == downloaded
    assert harmony.ENCODINGS_BASE_VAR not in os.environ
    assert not source.exists()


# ---------------------------------------------------------------------------------------------------------
# Rendering


@pytest.fixture(scope="module")
def enc():
    return harmony.get_encoding()


def test_stop_tokens(enc):
    (ret,), (call,), (end,) = (
        enc.encode(name, allowed_special="all") for name in ("<|return|>", "<|call|>", "<|end|>")
    )
    assert sorted(harmony.stop_tokens()) == sorted([ret, call])
    assert sorted(harmony.stop_tokens(end_of_message=True)) == sorted([ret, call, end])


@pytest.mark.parametrize("effort", ["low", "medium", "high"])
def test_render_prompt_matches_a_conversation_built_with_harmony(enc, effort):
    ours = harmony.render_prompt(
        "What's the weather in Paris?",
        reasoning_effort=effort,
        developer_instructions="Answer in one sentence.",
        function_tools=[WEATHER_TOOL],
        conversation_start_date="2026-11-25",
    )
    system = (
        SystemContent.new()
        .with_reasoning_effort(harmony._EFFORTS[effort])
        .with_conversation_start_date("2026-11-25")
    )
    developer = (
        DeveloperContent.new()
        .with_instructions("Answer in one sentence.")
        .with_function_tools([WEATHER_TOOL])
    )
    reference = enc.render_conversation_for_completion(
        harmony.Conversation.from_messages(
            [
                Message.from_role_and_content(Role.SYSTEM, system),
                Message.from_role_and_content(Role.DEVELOPER, developer),
                Message.from_role_and_content(Role.USER, "What's the weather in Paris?"),
            ]
        ),
        Role.ASSISTANT,
    )
    assert ours == reference
    text = enc.decode(ours)
    assert f"Reasoning: {effort}" in text
    assert "type get_weather" in text and "Answer in one sentence." in text
    assert text.endswith("<|start|>assistant")


def test_a_bare_prompt_has_no_developer_message(enc):
    text = enc.decode(harmony.render_prompt("Hi", model_identity="You are a test."))
    assert text.startswith("<|start|>system<|message|>You are a test.")
    assert "<|start|>developer" not in text
    assert "Reasoning: medium" in text


def test_bad_conversation_arguments_are_refused():
    with pytest.raises(ValueError, match="reasoning_effort must be one of low, medium, high"):
        harmony.build_conversation("Hi", reasoning_effort="extreme")  # type: ignore[arg-type]
    system = Message.from_role_and_content(Role.SYSTEM, "You are evil.")
    with pytest.raises(ValueError, match="must not contain system messages"):
        harmony.build_conversation([system])


def _tool_call_turn() -> list[Message]:
    return [
        Message.from_role_and_content(
            Role.ASSISTANT, "The user wants the weather; call the tool."
        ).with_channel("analysis"),
        Message.from_role_and_content(Role.ASSISTANT, '{"city": "Paris"}')
        .with_channel("commentary")
        .with_recipient("functions.get_weather")
        .with_content_type("<|constrain|>json"),
    ]


def _tool_result() -> Message:
    author = Author.new(Role.TOOL, "functions.get_weather")
    return (
        Message.from_author_and_content(author, '{"temp_c": 21}')
        .with_channel("commentary")
        .with_recipient("assistant")
    )


FINAL = Message.from_role_and_content(Role.ASSISTANT, "It is 21 °C in Paris — sunny ☀️.").with_channel("final")


def test_conversation_round_trip(enc):
    """Render a whole conversation (analysis, tool call, tool result, final) and parse it back unchanged."""
    history = [
        Message.from_role_and_content(Role.USER, "Weather in Paris?"),
        *_tool_call_turn(),
        _tool_result(),
        FINAL,
    ]
    conversation = harmony.build_conversation(
        history, reasoning_effort="high", developer_instructions="Be brief.", function_tools=[WEATHER_TOOL]
    )
    tokens = enc.render_conversation(conversation, RenderConversationConfig(auto_drop_analysis=False))
    parsed = enc.parse_messages_from_completion_tokens(tokens, role=None)
    assert [m.author.role for m in parsed] == [Role.SYSTEM, Role.DEVELOPER] + [m.author.role for m in history]
    assert parsed[2:] == history
    assert "Reasoning: high" in parsed[0].content[0].text
    assert "Be brief." in parsed[1].content[0].text and "type get_weather" in parsed[1].content[0].text


def _completion(enc, messages: list[Message], last: str) -> list[int]:
    """What the model emits after a prompt ending in `<|start|>assistant`, its turn ending with `last`."""
    tokens = [t for m in messages for t in enc.render(m)]
    prompt_tail = enc.encode("<|start|>assistant", allowed_special="all")
    assert tokens[: len(prompt_tail)] == prompt_tail
    return tokens[len(prompt_tail) : -1] + enc.encode(last, allowed_special="all")


def _stream(tokens: list[int]) -> tuple[harmony.ChannelStream, list[harmony.ChannelDelta]]:
    stream = harmony.ChannelStream()
    deltas = [d for t in tokens if (d := stream.feed(t)) is not None]
    if (tail := stream.finish()) is not None:
        deltas.append(tail)
    return stream, deltas


def _grouped(deltas: list[harmony.ChannelDelta]) -> list[tuple[int, str | None, str | None, str | None, str]]:
    groups: dict[tuple, str] = {}
    for d in deltas:
        key = (d.message, d.channel, d.recipient, d.content_type)
        groups[key] = groups.get(key, "") + d.text
    return [(*key, text) for key, text in groups.items()]


def test_channel_stream_yields_each_channel_in_order(enc):
    messages = _tool_call_turn()
    tokens = _completion(enc, messages, "<|call|>")
    stream, deltas = _stream(tokens)
    assert stream.malformed is None
    assert len(deltas) > 4, "text should stream token by token"
    assert _grouped(deltas) == [
        (0, "analysis", None, None, messages[0].content[0].text),
        (1, "commentary", "functions.get_weather", "<|constrain|>json", messages[1].content[0].text),
    ]
    assert stream.messages == messages
    assert stream.messages == enc.parse_messages_from_completion_tokens(tokens, Role.ASSISTANT)

    stream, deltas = _stream(_completion(enc, [FINAL], "<|return|>"))
    assert _grouped(deltas) == [(0, "final", None, None, FINAL.content[0].text)]
    assert stream.messages == [FINAL]


def test_channel_stream_keeps_split_characters_whole(enc):
    text = "🌍🌍 東京"
    tokens = enc.encode("<|channel|>final<|message|>" + text + "<|return|>", allowed_special="all")
    _, deltas = _stream(tokens)
    assert "".join(d.text for d in deltas) == text
    assert all("\ufffd" not in d.text for d in deltas)


def test_a_truncated_completion_keeps_its_text(enc):
    tokens = enc.encode("<|channel|>final<|message|>The sky is blue because", allowed_special="all")
    stream, deltas = _stream(tokens)
    assert "".join(d.text for d in deltas) == "The sky is blue because"
    assert stream.malformed is None
    assert stream.messages[-1].content[0].text == "The sky is blue because"


@pytest.mark.parametrize(
    ("completion", "text"),
    [
        ("<|channel|>fi", ""),
        (" to=functions.get_weather<|channel|>comm", ""),
        ("<|channel|>final<|message|>Hi<|end|><|start|>assistant", "Hi"),
        ("<|channel|>final<|message|>Hi<|end|><|start|>assistant<|channel|>commentary to=functions.f <|constrain|>js",
         "Hi"),
    ],
)
def test_a_completion_cut_inside_a_header_just_ends(enc, completion, text):
    """The token limit can fall inside a message header: the message had not begun, nothing is shown."""
    stream, deltas = _stream(enc.encode(completion, allowed_special="all"))
    assert stream.malformed is None
    assert all(d.channel == "final" for d in deltas)
    assert "".join(d.text for d in deltas) == text
    assert [m.content[0].text for m in stream.messages] == ([text] if text else [])


def test_messages_follow_the_parser_token_by_token(enc):
    """``messages`` is read from harmony only when a message completes: it must never lag behind."""
    pieces = ["<|start|>", "<|end|>", "<|message|>", "<|channel|>", "<|return|>", "<|call|>", "<|constrain|>",
              " assistant", "final", "analysis", " to=functions.f", " json", " hi"]
    vocabulary = [t for p in pieces for t in enc.encode(p, allowed_special="all")]
    rng = random.Random(1)
    for _ in range(300):
        tokens = enc.encode(rng.choice(["<|channel|>final<|message|>", "<|channel|>analysis<|message|>a<|end|>", ""]),
                            allowed_special="all")
        tokens += [rng.choice(vocabulary) for _ in range(rng.randrange(1, 30))]
        stream = harmony.ChannelStream()
        reference = StreamableParser(enc, Role.ASSISTANT, strict=True)
        for token in tokens:
            stream.feed(token)
            if stream.malformed is None:
                reference.process(token)
            assert stream.messages == reference.messages
        stream.finish()
        if stream.malformed is None:
            with contextlib.suppress(HarmonyError):  # a cut header: ChannelStream just ends there
                reference.process_eos()
        assert stream.messages == reference.messages


def test_random_tokens_stream_as_raw_text(enc):
    rng = random.Random(0)
    tokens = [rng.randrange(200_000) for _ in range(100)]
    stream, deltas = _stream(tokens)
    assert stream.malformed is not None and "header" in stream.malformed
    assert all(d.channel is None for d in deltas)
    assert "".join(d.text for d in deltas) == enc.decode(tokens)


@pytest.mark.parametrize("garbage", [" random words, no header", " random words that look like a header"])
def test_short_garbage_is_shown_at_the_end(enc, garbage):
    tokens = enc.encode(garbage, allowed_special="all")
    stream, deltas = _stream(tokens)
    assert "incomplete" in stream.malformed
    assert "".join(d.text for d in deltas) == garbage


def test_text_after_a_message_end_is_passed_through(enc):
    tokens = enc.encode("<|channel|>final<|message|>Hi<|end|>oops", allowed_special="all")
    stream, deltas = _stream(tokens)
    assert "rejected" in stream.malformed
    assert [(d.channel, d.text) for d in deltas] == [("final", "Hi"), (None, "oops")]


def test_text_stream_decodes_incrementally(enc):
    tokens = enc.encode("<|channel|>final<|message|>naïve 🌍 ok<|return|>", allowed_special="all")
    decoder = harmony.TextStream()
    pieces = [decoder.decode([t]) for t in tokens] + [decoder.decode([], final=True)]
    assert "".join(pieces) == enc.decode(tokens)
    assert all("\ufffd" not in p for p in pieces)
