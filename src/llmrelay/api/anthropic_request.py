"""Anthropic Messages request → canonical: the surface's own validation and a pure conversion.

Every 400 names the field in the client's terms (``messages[1].content[0].source``).

Request → canonical: ``system`` (a string or text blocks) → one system message; user ``text``,
``image`` (base64 → a ``data:`` URL, or a URL) and ``document`` (base64 PDF) blocks → content
parts; ``tool_result`` blocks → tool messages, placed before the rest of their turn (OpenAI wants
a tool's answer right after the call), images inside them → a user message after the tool
messages; assistant ``text`` → content, ``tool_use`` → ``tool_calls`` (``input`` as a JSON string);
``tools`` → function tools (``input_schema`` → ``parameters``); ``tool_choice`` auto / any / none /
tool → auto / required / none / named; ``disable_parallel_tool_use`` → ``parallel_tool_calls:
false``; ``stop_sequences`` → ``stop``; ``max_tokens``, ``temperature``, ``top_p`` as they are;
``metadata.user_id`` → ``user``; ``output_config.format`` → ``response_format`` (json_schema).

``upstream`` is the provider type of the routed model. When it is ``anthropic`` too, the
canonical request also carries what only Anthropic can use, in the extensions the Anthropic
provider reads back (providers/canonical.py): signed ``thinking`` and ``redacted_thinking`` blocks
as ``thinking_blocks`` on assistant messages, ``cache_control`` on system, text and image parts
and on tools, and every top-level field OpenAI's format has no place for (``thinking``, ``top_k``,
``output_config``, ``cache_control``...) verbatim. When it is ``gemini``, the Gemini signatures
the gateway marked into thinking blocks (``signatures``) go back on ``extra_content``. Other
upstreams never see any of these: they mean nothing there and would be refused.
"""

from __future__ import annotations

from typing import Any

import orjson

from llmrelay.api.signatures import gemini_from_anthropic
from llmrelay.core.errors import InvalidRequest, UnsupportedParameter
from llmrelay.core.types import ChatRequest, JSONObject
from llmrelay.providers.canonical import EXTRA_CONTENT, THINKING_BLOCKS

_MAPPED = frozenset(
    {
        "model",
        "messages",
        "system",
        "max_tokens",
        "stream",
        "stop_sequences",
        "temperature",
        "top_p",
        "tools",
        "tool_choice",
        "metadata",
    }
)
# Anthropic-only features that change what the model can do: refused for other upstreams rather
# than silently dropped. Other Anthropic-only fields are hints (top_k, service_tier...) and go.
_NATIVE_ONLY = frozenset({"mcp_servers", "container"})
_IMAGE_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})
MIN_THINKING_BUDGET = 1024
NATIVE = "anthropic"


# -- request ------------------------------------------------------------------------------------


def model_name(body: JSONObject) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest(
            "'model' is required: a catalogue id like 'anthropic/claude-sonnet-4-5', or 'auto'",
            param="model",
        )
    return model


def to_chat_request(
    body: JSONObject, model: str, *, upstream: str | None, counting: bool = False
) -> ChatRequest:
    """The canonical request for a Messages body (``counting``: for count_tokens, no max_tokens)."""
    native = upstream == NATIVE
    max_tokens = body.get("max_tokens")
    if (not counting or max_tokens is not None) and (
        not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1
    ):
        raise InvalidRequest("'max_tokens' is required: a positive integer", param="max_tokens")
    stream = body.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise InvalidRequest("'stream' must be a boolean", param="stream")
    messages = _system(body.get("system"), native)
    messages.extend(_turns(body.get("messages"), native, gemini=upstream == "gemini"))
    canonical: JSONObject = {"model": model, "messages": messages}
    if max_tokens is not None:
        canonical["max_tokens"] = max_tokens
    if stream:
        canonical["stream"] = True
    for name in ("temperature", "top_p"):
        value = _number(body, name, 0.0, 1.0)
        if value is not None:
            canonical[name] = value
    stops = _stop_sequences(body.get("stop_sequences"))
    if stops:
        canonical["stop"] = stops
    _tools(body, canonical, native)
    user = _user_id(body.get("metadata"))
    if user is not None:
        canonical["user"] = user
    _thinking(body.get("thinking"), max_tokens if isinstance(max_tokens, int) else None)
    _extras(body, canonical, native)
    return ChatRequest(
        body=canonical,
        model=model,
        stream=stream and not counting,
        include_usage=False,
        max_output_tokens=max_tokens if isinstance(max_tokens, int) else None,
    )


def reasoning_effort(body: JSONObject) -> str | None:
    """``thinking`` (or ``output_config.effort``) as OpenAI's ``reasoning_effort``, for upstreams
    that do not speak Anthropic; None when the client asked for no thinking."""
    config = body.get("output_config")
    effort = config.get("effort") if isinstance(config, dict) else None
    if isinstance(effort, str):
        return {"low": "low", "medium": "medium"}.get(effort, "high")
    thinking = body.get("thinking")
    if not isinstance(thinking, dict):
        return None
    kind = thinking.get("type")
    if kind == "adaptive":
        return "medium"
    if kind != "enabled":
        return None
    budget = thinking.get("budget_tokens")
    if not isinstance(budget, int):
        return None
    return "low" if budget <= 2048 else "medium" if budget <= 8192 else "high"


def _system(system: Any, native: bool) -> list[JSONObject]:
    if system is None:
        return []
    if isinstance(system, str):
        return [{"role": "system", "content": system}] if system else []
    if not isinstance(system, list):
        raise InvalidRequest("'system' must be a string or an array of text blocks", param="system")
    parts = [_text_part(block, f"system[{i}]", native) for i, block in enumerate(system)]
    if not parts:
        return []
    return [{"role": "system", "content": _content(parts)}]


def _turns(messages: Any, native: bool, *, gemini: bool) -> list[JSONObject]:
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("'messages' must be a non-empty array", param="messages")
    out: list[JSONObject] = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise InvalidRequest(f"'{where}' must be an object", param=where)
        role = message.get("role")
        if role not in ("user", "assistant"):
            raise InvalidRequest(
                f"'{where}.role' must be 'user' or 'assistant' (the system prompt is the "
                "top-level 'system' field)",
                param=f"{where}.role",
            )
        content = message.get("content")
        if isinstance(content, str):
            out.append({"role": role, "content": content})
        elif isinstance(content, list):
            if role == "user":
                out.extend(_user_turn(content, where, native))
            else:
                out.append(_assistant_turn(content, where, native, gemini=gemini))
        else:
            raise InvalidRequest(
                f"'{where}.content' must be a string or an array of content blocks",
                param=f"{where}.content",
            )
    return out


def _block(block: Any, where: str) -> str:
    if not isinstance(block, dict) or not isinstance(block.get("type"), str):
        raise InvalidRequest(f"'{where}' must be a content block with a 'type'", param=where)
    kind: str = block["type"]
    return kind


def _string(block: JSONObject, field: str, where: str) -> str:
    value = block.get(field)
    if not isinstance(value, str):
        raise InvalidRequest(f"'{where}.{field}' must be a string", param=f"{where}.{field}")
    return value


def _text_part(block: Any, where: str, native: bool) -> JSONObject:
    if _block(block, where) != "text":
        raise InvalidRequest(f"'{where}' must be a text block", param=f"{where}.type")
    part: JSONObject = {"type": "text", "text": _string(block, "text", where)}
    _cache_control(block, part, native)
    return part


def _cache_control(block: JSONObject, target: JSONObject, native: bool) -> None:
    if native and isinstance(block.get("cache_control"), dict):
        target["cache_control"] = block["cache_control"]


def _content(parts: list[JSONObject]) -> str | list[JSONObject]:
    """A lone plain text part as a string (every OpenAI-compatible host takes that); else parts."""
    if len(parts) == 1 and parts[0]["type"] == "text" and "cache_control" not in parts[0]:
        text: str = parts[0]["text"]
        return text
    return parts


def _user_turn(blocks: list[Any], where: str, native: bool) -> list[JSONObject]:
    tool_messages: list[JSONObject] = []
    tool_images: list[JSONObject] = []
    parts: list[JSONObject] = []
    for j, block in enumerate(blocks):
        at = f"{where}.content[{j}]"
        kind = _block(block, at)
        if kind == "text":
            parts.append(_text_part(block, at, native))
        elif kind == "image":
            parts.append(_image_part(block, at, native))
        elif kind == "document":
            parts.append(_document_part(block, at))
        elif kind == "tool_result":
            tool_messages.append(_tool_result(block, at, tool_images, native))
        elif kind in ("tool_use", "thinking", "redacted_thinking"):
            raise InvalidRequest(
                f"'{at}': a {kind} block belongs in an assistant message", param=f"{at}.type"
            )
        else:
            raise InvalidRequest(
                f"'{at}.type' {kind!r} is not supported in a user message (use text, image, "
                "document or tool_result)",
                param=f"{at}.type",
            )
    # Images a tool returned travel in a user message after the tool messages: OpenAI's tool
    # messages carry text only.
    parts = tool_images + parts
    if parts:
        tool_messages.append({"role": "user", "content": _content(parts)})
    elif not tool_messages:
        tool_messages.append({"role": "user", "content": ""})
    return tool_messages


def _image_part(block: JSONObject, where: str, native: bool) -> JSONObject:
    source = block.get("source")
    if not isinstance(source, dict):
        raise InvalidRequest(f"'{where}.source' must be an object", param=f"{where}.source")
    kind = source.get("type")
    if kind == "base64":
        media_type = _string(source, "media_type", f"{where}.source")
        if media_type not in _IMAGE_TYPES:
            raise InvalidRequest(
                f"'{where}.source.media_type' must be one of {', '.join(sorted(_IMAGE_TYPES))}",
                param=f"{where}.source.media_type",
            )
        data = _string(source, "data", f"{where}.source")
        url = f"data:{media_type};base64,{data}"
    elif kind == "url":
        url = _string(source, "url", f"{where}.source")
    else:
        raise InvalidRequest(
            f"'{where}.source.type' must be 'base64' or 'url'", param=f"{where}.source.type"
        )
    part: JSONObject = {"type": "image_url", "image_url": {"url": url}}
    _cache_control(block, part, native)
    return part


def _document_part(block: JSONObject, where: str) -> JSONObject:
    source = block.get("source")
    kind = source.get("type") if isinstance(source, dict) else None
    if kind == "text" and isinstance(source, dict):
        return {"type": "text", "text": _string(source, "data", f"{where}.source")}
    if kind == "base64" and isinstance(source, dict):
        media_type = _string(source, "media_type", f"{where}.source")
        data = _string(source, "data", f"{where}.source")
        return {
            "type": "file",
            "file": {
                "filename": str(block.get("title") or "document.pdf"),
                "file_data": f"data:{media_type};base64,{data}",
            },
        }
    raise UnsupportedParameter(
        f"'{where}.source': only base64 and text documents can be forwarded (send the file's "
        "bytes rather than a URL or a file id)",
        param=f"{where}.source",
    )


def _tool_result(
    block: JSONObject, where: str, images: list[JSONObject], native: bool
) -> JSONObject:
    call_id = _string(block, "tool_use_id", where)
    content = block.get("content")
    if content is None:
        text: str | list[JSONObject] = ""
    elif isinstance(content, str):
        text = content
    elif isinstance(content, list):
        parts = []
        for k, inner in enumerate(content):
            at = f"{where}.content[{k}]"
            kind = _block(inner, at)
            if kind == "text":
                parts.append({"type": "text", "text": _string(inner, "text", at)})
            elif kind == "image":
                images.append(_image_part(inner, at, native))
            else:
                raise InvalidRequest(
                    f"'{at}.type' {kind!r} is not supported in a tool result (use text or image)",
                    param=f"{at}.type",
                )
        text = _content(parts) if parts else ""
    else:
        raise InvalidRequest(
            f"'{where}.content' must be a string or an array of blocks", param=f"{where}.content"
        )
    return {"role": "tool", "tool_call_id": call_id, "content": text}


def _assistant_turn(blocks: list[Any], where: str, native: bool, *, gemini: bool) -> JSONObject:
    texts: list[JSONObject] = []
    calls: list[JSONObject] = []
    thinking: list[JSONObject] = []
    message: JSONObject = {"role": "assistant"}
    call_signature: str | None = None  # a Gemini signature for the next tool_use
    for j, block in enumerate(blocks):
        at = f"{where}.content[{j}]"
        kind = _block(block, at)
        if kind == "text":
            texts.append(_text_part(block, at, native))
        elif kind == "tool_use":
            call = _tool_call(block, at)
            if call_signature is not None:
                call[EXTRA_CONTENT] = {"google": {"thought_signature": call_signature}}
                call_signature = None
            calls.append(call)
        elif kind == "thinking":
            text = _string(block, "thinking", at)
            signature = _string(block, "signature", at)
            marked = gemini_from_anthropic(signature)
            if marked is None:
                thinking.append({"type": "thinking", "thinking": text, "signature": signature})
            elif gemini and marked[1]:
                call_signature = marked[0]
            elif gemini and EXTRA_CONTENT not in message:
                message[EXTRA_CONTENT] = {"google": {"thought_signature": marked[0]}}
        elif kind == "redacted_thinking":
            thinking.append({"type": "redacted_thinking", "data": _string(block, "data", at)})
        else:
            raise InvalidRequest(
                f"'{at}.type' {kind!r} is not supported in an assistant message (use text, "
                "tool_use, thinking or redacted_thinking)",
                param=f"{at}.type",
            )
    if texts and any("cache_control" in part for part in texts):
        message["content"] = texts
    elif texts:
        message["content"] = "".join(part["text"] for part in texts)
    else:
        message["content"] = None if calls else ""
    if calls:
        message["tool_calls"] = calls
    if native and thinking:
        message[THINKING_BLOCKS] = thinking
    return message


def _tool_call(block: JSONObject, where: str) -> JSONObject:
    tool_input = block.get("input")
    if not isinstance(tool_input, dict):
        raise InvalidRequest(f"'{where}.input' must be an object", param=f"{where}.input")
    return {
        "id": _string(block, "id", where),
        "type": "function",
        "function": {
            "name": _string(block, "name", where),
            "arguments": orjson.dumps(tool_input).decode(),
        },
    }


def _tools(body: JSONObject, canonical: JSONObject, native: bool) -> None:
    tools = body.get("tools")
    if tools is None:
        return
    if not isinstance(tools, list):
        raise InvalidRequest("'tools' must be an array", param="tools")
    converted = []
    for i, tool in enumerate(tools):
        where = f"tools[{i}]"
        if not isinstance(tool, dict):
            raise InvalidRequest(f"'{where}' must be an object", param=where)
        kind = tool.get("type")
        if kind not in (None, "custom"):
            raise UnsupportedParameter(
                f"'{where}': Anthropic server tools ({kind!r}) cannot be forwarded; define the "
                "tool with a name and an input_schema",
                param=f"{where}.type",
            )
        schema = tool.get("input_schema")
        if not isinstance(schema, dict):
            raise InvalidRequest(
                f"'{where}.input_schema' must be a JSON Schema object",
                param=f"{where}.input_schema",
            )
        function: JSONObject = {"name": _string(tool, "name", where), "parameters": schema}
        if isinstance(tool.get("description"), str):
            function["description"] = tool["description"]
        if tool.get("strict") is True:
            function["strict"] = True
        entry: JSONObject = {"type": "function", "function": function}
        _cache_control(tool, entry, native)
        converted.append(entry)
    if not converted:
        return
    canonical["tools"] = converted
    choice = body.get("tool_choice")
    if choice is None:
        return
    kind = choice.get("type") if isinstance(choice, dict) else None
    if kind == "auto":
        canonical["tool_choice"] = "auto"
    elif kind == "any":
        canonical["tool_choice"] = "required"
    elif kind == "none":
        canonical["tool_choice"] = "none"
    elif kind == "tool" and isinstance(choice, dict):
        name = _string(choice, "name", "tool_choice")
        canonical["tool_choice"] = {"type": "function", "function": {"name": name}}
    else:
        raise InvalidRequest(
            "'tool_choice.type' must be auto, any, none or tool", param="tool_choice.type"
        )
    if isinstance(choice, dict) and choice.get("disable_parallel_tool_use") is True:
        canonical["parallel_tool_calls"] = False


def _stop_sequences(stops: Any) -> list[str]:
    if stops is None:
        return []
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise InvalidRequest("'stop_sequences' must be an array of strings", param="stop_sequences")
    return stops


def _number(body: JSONObject, field: str, low: float, high: float) -> float | None:
    value = body.get(field)
    if value is None:
        return None
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise InvalidRequest(f"'{field}' must be a number", param=field)
    if not low <= value <= high:
        raise InvalidRequest(f"'{field}' must be between {low:g} and {high:g}", param=field)
    return value


def _user_id(metadata: Any) -> str | None:
    if metadata is None:
        return None
    if not isinstance(metadata, dict):
        raise InvalidRequest("'metadata' must be an object", param="metadata")
    user = metadata.get("user_id")
    if user is not None and not isinstance(user, str):
        raise InvalidRequest("'metadata.user_id' must be a string", param="metadata.user_id")
    return user or None


def _thinking(thinking: Any, max_tokens: int | None) -> None:
    if thinking is None:
        return
    kind = thinking.get("type") if isinstance(thinking, dict) else None
    if kind not in ("enabled", "disabled", "adaptive"):
        raise InvalidRequest(
            "'thinking.type' must be enabled, disabled or adaptive", param="thinking.type"
        )
    if kind != "enabled" or not isinstance(thinking, dict):
        return
    budget = thinking.get("budget_tokens")
    if not isinstance(budget, int) or isinstance(budget, bool) or budget < MIN_THINKING_BUDGET:
        raise InvalidRequest(
            f"'thinking.budget_tokens' must be an integer of at least {MIN_THINKING_BUDGET}",
            param="thinking.budget_tokens",
        )
    if max_tokens is not None and budget >= max_tokens:
        raise InvalidRequest(
            "'thinking.budget_tokens' must be less than 'max_tokens'",
            param="thinking.budget_tokens",
        )


def _extras(body: JSONObject, canonical: JSONObject, native: bool) -> None:
    """Top-level fields with no OpenAI counterpart: verbatim to Anthropic, else mapped or left."""
    for name, value in body.items():
        if name in _MAPPED:
            continue
        if native:
            canonical[name] = value
        elif name in _NATIVE_ONLY:
            raise UnsupportedParameter(
                f"'{name}' needs a model served by an Anthropic provider", param=name
            )
    if native:
        return
    config = body.get("output_config")
    output_format = config.get("format") if isinstance(config, dict) else None
    if isinstance(output_format, dict) and output_format.get("type") == "json_schema":
        schema = output_format.get("schema")
        if not isinstance(schema, dict):
            raise InvalidRequest(
                "'output_config.format.schema' must be an object",
                param="output_config.format.schema",
            )
        canonical["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": "output", "schema": schema},
        }
