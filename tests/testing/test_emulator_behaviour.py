"""The emulator's model-name grammar and deterministic script."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

import llmrelay.testing.emulator as emulator
from llmrelay.testing.emulator import Behaviour, build_script, count_prompt_tokens, parse_behaviour


def test_public_api_is_pinned() -> None:
    assert emulator.__all__ == sorted(emulator.__all__)
    assert emulator.__all__ == [
        "Behaviour",
        "EmulatorServer",
        "RecordedRequest",
        "Recorder",
        "Script",
        "ToolCall",
        "build_app",
        "build_script",
        "count_prompt_tokens",
        "count_words",
        "parse_behaviour",
        "serve_forever",
    ]


def test_plain_model_name_has_defaults() -> None:
    assert parse_behaviour("gpt-4o-mini") == Behaviour(base="gpt-4o-mini")
    assert parse_behaviour("gpt-4o-mini").chunks == 8


def test_every_option() -> None:
    behaviour = parse_behaviour(
        "openai/emu+chunks=50+delay=20+first=100+drop=3+status=429+retry_after=7+error_first"
        "+error_mid=2+tools=2+utf8+bytewise+no_usage+html+hang+comments+reasoning=3+cached=5"
        "+malformed=4+crlf+stop=length"
    )
    assert behaviour == Behaviour(
        base="openai/emu",
        chunks=50,
        delay_ms=20,
        first_ms=100,
        drop=3,
        status=429,
        retry_after=7,
        error_first=True,
        error_mid=2,
        tools=2,
        utf8=True,
        bytewise=True,
        no_usage=True,
        html=True,
        hang=True,
        comments=True,
        reasoning=3,
        cached=5,
        malformed=4,
        crlf=True,
        stop="length",
    )
    assert parse_behaviour("x+reasoning").reasoning == 4


def test_unknown_options_and_bad_values_are_ignored() -> None:
    behaviour = parse_behaviour("x+colour=blue+chunks=many+delay=-5+status=200+utf8=yes+later")
    assert behaviour == Behaviour(base="x")
    assert parse_behaviour("x+chunks=2+chunks=3").chunks == 3


@given(st.text())
def test_any_model_name_parses(model: str) -> None:
    behaviour = parse_behaviour(model)
    assert behaviour.base == model.split("+")[0]
    assert behaviour.chunks >= 0


def test_prompt_token_rule() -> None:
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "two words"}, {"type": "image"}]},
        {"role": "model", "parts": [{"text": "one"}, {"functionCall": {"name": "f"}}]},
    ]
    assert count_prompt_tokens(messages) == (4 + 2) + (4 + 2) + (4 + 1)
    assert count_prompt_tokens(messages[1:], system=[{"text": "be brief"}]) == 6 + 6 + 5


@given(
    chunks=st.integers(0, 40),
    tools=st.integers(0, 4),
    reasoning=st.integers(0, 6),
    cached=st.integers(0, 50),
    words=st.lists(st.text(min_size=1).filter(lambda w: w.split() == [w])),
)
def test_script_is_internally_consistent(
    chunks: int, tools: int, reasoning: int, cached: int, words: list[str]
) -> None:
    behaviour = Behaviour(base="x", chunks=chunks, tools=tools, reasoning=reasoning, cached=cached)
    script = build_script(behaviour, prompt_tokens=20, user_words=words)
    assert script.cached_tokens == min(cached, 20)
    assert len(script.reasoning) == reasoning
    if tools:
        assert not script.content
        assert len(script.tool_calls) == tools
        assert all("".join(c.fragments) == c.arguments for c in script.tool_calls)
        assert script.completion_tokens == reasoning + 3 * tools
    else:
        assert len(script.content) == chunks
        assert script.completion_tokens == reasoning + chunks
        if chunks:
            assert script.text.split()[: len(words) + 1] == ["Echo:", *words][:chunks]


async def test_docs_example_runs() -> None:
    """The first Python example in docs/testing.md is executed as written."""
    docs = Path(__file__).parents[2] / "docs" / "testing.md"
    source = docs.read_text().split("```python\n", 1)[1].split("```", 1)[0]
    namespace: dict[str, Any] = {}
    exec(compile(source, str(docs), "exec"), namespace)
    await namespace["test_echo"]()
