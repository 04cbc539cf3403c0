"""Upstream provider emulators: real HTTP servers speaking each provider's exact wire format.

``async with EmulatorServer() as emu:`` serves OpenAI (``/v1/chat/completions``), Anthropic
(``/v1/messages``) and Gemini (``/v1beta/models/{model}:generateContent``) on loopback, records
every request in ``emu.requests``, and behaves as the model name asks (see
:mod:`llmrelay.testing.emulator.behaviour` and ``docs/testing.md``).
"""

from llmrelay.testing.emulator.app import EmulatorServer, build_app, serve_forever
from llmrelay.testing.emulator.behaviour import Behaviour, parse_behaviour
from llmrelay.testing.emulator.recording import RecordedRequest, Recorder
from llmrelay.testing.emulator.script import (
    Script,
    ToolCall,
    build_script,
    count_prompt_tokens,
    count_words,
)

__all__ = [
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
