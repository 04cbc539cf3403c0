"""Signed reasoning across dialects: what one provider signs survives a client of another dialect.

Anthropic signs thinking blocks and Gemini signs parts (``thoughtSignature``), and each refuses a
later turn that lacks them (Anthropic: thinking together with tool use; Gemini 3: function calls).
When the client speaks one dialect and the model is served in the other, the signature travels in
the client's own signed field, marked so that the gateway knows it when the client sends it back,
and goes back only to the provider type that made it:

- A Gemini signature, to an Anthropic client: a ``thinking`` block whose ``signature`` is
  ``llmrelay.gemini:<signature>`` (the answer's own) or ``llmrelay.gemini.call:<signature>`` (a
  function call's, placed right before that call's ``tool_use`` block).
- An Anthropic thinking block, to a Gemini client: a thought part whose ``thoughtSignature`` is the
  base64url of ``llmrelay.anthropic:<signature>`` (or ``llmrelay.anthropic.redacted:<data>``), its
  thinking text being the thought text before it. Base64, because google-genai holds
  ``thoughtSignature`` as bytes and re-encodes it (urlsafe) when it sends it back.
"""

from __future__ import annotations

import base64
import binascii

from llmrelay.core.types import JSONObject

GEMINI = "llmrelay.gemini:"
GEMINI_CALL = "llmrelay.gemini.call:"
_ANTHROPIC = b"llmrelay.anthropic:"
_ANTHROPIC_REDACTED = b"llmrelay.anthropic.redacted:"


def gemini_for_anthropic(signature: str, *, call: bool) -> str:
    return (GEMINI_CALL if call else GEMINI) + signature


def gemini_from_anthropic(signature: str) -> tuple[str, bool] | None:
    """``(gemini signature, belongs to a call)`` if the gateway marked it, else None."""
    if signature.startswith(GEMINI_CALL):
        return signature[len(GEMINI_CALL) :], True
    if signature.startswith(GEMINI):
        return signature[len(GEMINI) :], False
    return None


def anthropic_for_gemini(block: JSONObject) -> str:
    """A thinking or redacted_thinking block's signature as a ``thoughtSignature``."""
    if block.get("type") == "redacted_thinking":
        raw = _ANTHROPIC_REDACTED + str(block.get("data") or "").encode()
    else:
        raw = _ANTHROPIC + str(block.get("signature") or "").encode()
    return base64.urlsafe_b64encode(raw).decode("ascii")


def anthropic_from_gemini(signature: str, thinking: str) -> JSONObject | None:
    """The Anthropic block a marked ``thoughtSignature`` stands for, else None."""
    try:
        raw = base64.urlsafe_b64decode(signature.replace("+", "-").replace("/", "_"))
    except (binascii.Error, ValueError):
        return None
    try:
        if raw.startswith(_ANTHROPIC_REDACTED):
            data = raw[len(_ANTHROPIC_REDACTED) :].decode()
            return {"type": "redacted_thinking", "data": data}
        if raw.startswith(_ANTHROPIC):
            signed = raw[len(_ANTHROPIC) :].decode()
            return {"type": "thinking", "thinking": thinking, "signature": signed}
    except UnicodeDecodeError:
        pass
    return None
