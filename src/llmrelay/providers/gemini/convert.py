"""Canonical (OpenAI Chat Completions) ⇄ Gemini ``generateContent``: pure, typed conversions.

Request: system and developer messages, in order, become ``systemInstruction``; roles become
``user``/``model`` and runs of one role merge into one turn; tool results become
``functionResponse`` parts in the user turn right after the calls, in the calls' order, named after
the call they answer (Gemini matches by name and order, not id); empty text is never sent; images
become ``inlineData`` (remote URLs are fetched by the provider first, see ``media.py``); thought
signatures ride back on the parts they came on. Answer: thought parts → ``reasoning_content``,
text → ``content``, ``functionCall`` → ``tool_calls`` with Gemini's id or a synthetic one derived
from the request id, candidate, position and name (so a stream and a whole answer agree).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import orjson

from llmrelay.core.catalogue import ModelEntry
from llmrelay.core.errors import InvalidRequest, UnsupportedParameter
from llmrelay.core.types import ChatRequest, FinishReason, JSONObject, Usage
from llmrelay.providers.canonical import (
    EXTRA_CONTENT,
    REASONING_CONTENT,
    arguments_text,
    audio_data,
    content_text,
    file_data,
    image_url,
    max_output_tokens,
    parse_arguments,
    parse_data_url,
    passthrough_fields,
    reasoning_budget,
    stop_sequences,
    tool_call_names,
)
from llmrelay.providers.gemini.schema import has_properties, to_gemini_schema

InlineImages = dict[str, tuple[str, str]]
"""Remote image URL → (mime type, base64 data), fetched before conversion."""

_CONTENT_FILTER: FinishReason = "content_filter"
FINISH_REASONS: Mapping[str, FinishReason] = MappingProxyType(
    {
        "STOP": "stop",
        "MAX_TOKENS": "length",
        "SAFETY": _CONTENT_FILTER,
        "RECITATION": _CONTENT_FILTER,
        "BLOCKLIST": _CONTENT_FILTER,
        "PROHIBITED_CONTENT": _CONTENT_FILTER,
        "SPII": _CONTENT_FILTER,
        "IMAGE_SAFETY": _CONTENT_FILTER,
        "IMAGE_PROHIBITED_CONTENT": _CONTENT_FILTER,
        "IMAGE_RECITATION": _CONTENT_FILTER,
        "IMAGE_OTHER": _CONTENT_FILTER,
    }
)
_TOOL_MODES: Mapping[str, str] = MappingProxyType(
    {"auto": "AUTO", "none": "NONE", "required": "ANY"}
)


# -- request ------------------------------------------------------------------------------------


def remote_image_urls(messages: list[JSONObject]) -> list[tuple[str, str]]:
    """``(url, param)`` of every http(s) image the provider must fetch before converting."""
    found = []
    for i, message in enumerate(messages):
        content = message.get("content")
        if message.get("role") not in ("user", "tool") or not isinstance(content, list):
            continue
        for j, part in enumerate(content):
            if isinstance(part, dict) and part.get("type") == "image_url":
                param = f"messages[{i}].content[{j}]"
                url = image_url(part, param)
                if url.startswith(("http://", "https://")):
                    found.append((url, f"{param}.image_url.url"))
    return found


def request_to_wire(request: ChatRequest, model: ModelEntry, images: InlineImages) -> JSONObject:
    body = request.body
    system, contents = messages_to_wire(request.messages, images)
    wire: JSONObject = {"contents": contents}
    if system:
        wire["systemInstruction"] = {"parts": system}
    tools = body.get("tools")
    if tools:
        wire["tools"] = [
            {"functionDeclarations": [_declaration(t, f"tools[{i}]") for i, t in enumerate(tools)]}
        ]
        config = _tool_config(body.get("tool_choice"))
        if config is not None:
            wire["toolConfig"] = {"functionCallingConfig": config}
    generation = generation_config(body)
    for name, value in passthrough_fields(body).items():
        if name == "generationConfig" and isinstance(value, dict):
            generation = {**value, **generation}
        else:
            wire.setdefault(name, value)
    if generation:
        wire["generationConfig"] = generation
    return wire


def generation_config(body: JSONObject) -> JSONObject:
    config: JSONObject = {}
    cap = max_output_tokens(body)
    if cap is not None:
        config["maxOutputTokens"] = cap
    for source, target in (
        ("temperature", "temperature"),
        ("top_p", "topP"),
        ("seed", "seed"),
        ("presence_penalty", "presencePenalty"),
        ("frequency_penalty", "frequencyPenalty"),
    ):
        if isinstance(body.get(source), int | float):
            config[target] = body[source]
    stops = stop_sequences(body)
    if stops:
        config["stopSequences"] = stops
    n = body.get("n")
    if isinstance(n, int) and n > 1:
        config["candidateCount"] = n
    response_format = body.get("response_format")
    if isinstance(response_format, dict) and response_format.get("type") in (
        "json_object",
        "json_schema",
    ):
        config["responseMimeType"] = "application/json"
        spec = response_format.get("json_schema")
        if isinstance(spec, dict) and isinstance(spec.get("schema"), dict):
            config["responseSchema"] = to_gemini_schema(spec["schema"])
    budget = reasoning_budget(body)
    if budget is not None:
        config["thinkingConfig"] = {"thinkingBudget": budget, "includeThoughts": budget > 0}
    return config


def _declaration(tool: JSONObject, param: str) -> JSONObject:
    if tool.get("type") != "function":
        raise UnsupportedParameter(
            f"tools of type {tool.get('type')!r} are not supported by provider type 'gemini'",
            param=param,
        )
    function = tool["function"]
    declaration: JSONObject = {"name": function["name"]}
    if function.get("description"):
        declaration["description"] = function["description"]
    schema = to_gemini_schema(function.get("parameters"))
    if has_properties(schema):  # Gemini refuses an OBJECT schema with no properties
        declaration["parameters"] = schema
    return declaration


def _tool_config(choice: Any) -> JSONObject | None:
    if choice is None:
        return None
    if isinstance(choice, str) and choice in _TOOL_MODES:
        return {"mode": _TOOL_MODES[choice]}
    if isinstance(choice, dict) and choice.get("type") == "function":
        name = (choice.get("function") or {}).get("name")
        return {"mode": "ANY", "allowedFunctionNames": [name]}
    raise UnsupportedParameter(
        "this 'tool_choice' is not supported by provider type 'gemini' (use auto, none, required "
        "or a named function)",
        param="tool_choice",
    )


def messages_to_wire(
    messages: list[JSONObject], images: InlineImages
) -> tuple[list[JSONObject], list[JSONObject]]:
    """``(systemInstruction parts, contents)``."""
    calls = tool_call_names(messages)
    system: list[JSONObject] = []
    # (role, [(order, part)]): function responses sort first, in the order of the calls they
    # answer; every other part keeps its place (the sort is stable).
    turns: list[tuple[str, list[tuple[tuple[int, int], JSONObject]]]] = []
    for i, message in enumerate(messages):
        role = message.get("role")
        param = f"messages[{i}]"
        content = message.get("content")
        if role in ("system", "developer"):
            text = content_text(content)
            if text:
                system.append({"text": text})
            continue
        if role == "user":
            wire_role, parts = "user", [((1, 0), p) for p in _user_parts(content, param, images)]
        elif role == "tool":
            wire_role, parts = "user", [_function_response(message, param, calls)]
        elif role == "assistant":
            wire_role, parts = "model", [((1, 0), p) for p in _model_parts(message, param)]
        else:
            raise UnsupportedParameter(
                f"the legacy '{role}' role is not supported by provider type 'gemini'; use "
                "tool_calls and tool messages",
                param=f"{param}.role",
            )
        if not parts:
            continue
        if turns and turns[-1][0] == wire_role:
            turns[-1][1].extend(parts)
        else:
            turns.append((wire_role, parts))
    contents = [
        {"role": role, "parts": [part for _, part in sorted(parts, key=lambda item: item[0])]}
        for role, parts in turns
    ]
    return system, contents


def _user_parts(content: Any, param: str, images: InlineImages) -> list[JSONObject]:
    if isinstance(content, str):
        return [{"text": content}] if content else []
    parts: list[JSONObject] = []
    for j, part in enumerate(content or ()):
        where = f"{param}.content[{j}]"
        kind = part.get("type")
        if kind in ("text", "refusal"):
            text = content_text([part])
            if text:
                parts.append({"text": text})
        elif kind == "image_url":
            url = image_url(part, where)
            if url.startswith("data:"):
                mime, data = parse_data_url(url, f"{where}.image_url.url")
            elif url in images:
                mime, data = images[url]
            else:
                raise InvalidRequest(
                    f"'{where}.image_url.url' must be an http(s) or data: URL",
                    param=f"{where}.image_url",
                )
            parts.append({"inlineData": {"mimeType": mime, "data": data}})
        elif kind == "input_audio":
            mime, data = audio_data(part, where)
            parts.append({"inlineData": {"mimeType": mime, "data": data}})
        elif kind == "file":
            mime, data = file_data(part, where)
            parts.append({"inlineData": {"mimeType": mime, "data": data}})
    return parts


def _function_response(
    message: JSONObject, param: str, calls: dict[str, tuple[str, int]]
) -> tuple[tuple[int, int], JSONObject]:
    call_id = message["tool_call_id"]
    if call_id not in calls:
        raise InvalidRequest(
            f"'{param}.tool_call_id' {call_id!r} answers no tool call of an earlier assistant "
            "message (Gemini needs the function's name)",
            param=f"{param}.tool_call_id",
        )
    name, position = calls[call_id]
    text = content_text(message.get("content"))
    try:
        parsed = orjson.loads(text) if text else None
    except orjson.JSONDecodeError:
        parsed = text
    response = parsed if isinstance(parsed, dict) else {"result": parsed}
    return (0, position), {"functionResponse": {"name": name, "response": response}}


def _model_parts(message: JSONObject, param: str) -> list[JSONObject]:
    parts: list[JSONObject] = []
    text = content_text(message.get("content"))
    if text:
        parts.append({"text": text})
        signature = _signature(message)
        if signature:
            parts[0]["thoughtSignature"] = signature
    for j, call in enumerate(message.get("tool_calls") or ()):
        function = call.get("function") or {}
        where = f"{param}.tool_calls[{j}].function.arguments"
        part: JSONObject = {
            "functionCall": {
                "name": function.get("name"),
                "args": parse_arguments(function.get("arguments"), where),
            }
        }
        signature = _signature(call)
        if signature:
            part["thoughtSignature"] = signature
        parts.append(part)
    return parts


def _signature(holder: JSONObject) -> str | None:
    extra = holder.get(EXTRA_CONTENT)
    google = extra.get("google") if isinstance(extra, dict) else None
    signature = google.get("thought_signature") if isinstance(google, dict) else None
    return signature if isinstance(signature, str) and signature else None


# -- answer -------------------------------------------------------------------------------------


def synthetic_call_id(request_id: str, candidate: int, position: int, name: str) -> str:
    digest = hashlib.sha256(f"{request_id}\0{candidate}\0{position}\0{name}".encode()).hexdigest()
    return "call_" + digest[:24]


def signature_extra(signature: str) -> JSONObject:
    return {"google": {"thought_signature": signature}}


class CandidateReader:
    """Turns one candidate's parts into canonical deltas, in order, across stream chunks."""

    __slots__ = ("_request_id", "called", "index", "signed", "tool_calls")

    def __init__(self, request_id: str, index: int) -> None:
        self._request_id = request_id
        self.index = index
        self.tool_calls = 0
        self.called = False
        self.signed = False

    def deltas(self, parts: list[JSONObject]) -> list[JSONObject]:
        out = []
        for part in parts:
            delta = self._delta(part)
            if delta:
                out.append(delta)
        return out

    def _delta(self, part: JSONObject) -> JSONObject:
        signature = part.get("thoughtSignature")
        call = part.get("functionCall")
        delta: JSONObject = {}
        if isinstance(call, dict):
            name = str(call.get("name") or "")
            position = self.tool_calls
            self.tool_calls += 1
            self.called = True
            call_id = call.get("id") or synthetic_call_id(
                self._request_id, self.index, position, name
            )
            tool_call: JSONObject = {
                "index": position,
                "id": call_id,
                "type": "function",
                "function": {"name": name, "arguments": arguments_text(call.get("args"))},
            }
            if signature:
                tool_call[EXTRA_CONTENT] = signature_extra(signature)
            return {"tool_calls": [tool_call]}
        text = part.get("text")
        if isinstance(text, str) and text:
            delta[REASONING_CONTENT if part.get("thought") else "content"] = text
        if signature and not self.signed:
            # One message-level signature (the first); the OpenAI accumulator would concatenate
            # a second one into the first.
            self.signed = True
            delta[EXTRA_CONTENT] = signature_extra(signature)
        return delta

    def finish_reason(self, reason: Any) -> FinishReason:
        mapped = FINISH_REASONS.get(reason, "stop") if isinstance(reason, str) else "stop"
        return "tool_calls" if mapped == "stop" and self.called else mapped


def merge_deltas(deltas: list[JSONObject]) -> JSONObject:
    """Fold one candidate's deltas into its whole assistant message."""
    content: list[str] = []
    reasoning: list[str] = []
    calls: list[JSONObject] = []
    signature: JSONObject | None = None
    message: JSONObject = {"role": "assistant"}
    for delta in deltas:
        if "content" in delta:
            content.append(delta["content"])
        if REASONING_CONTENT in delta:
            reasoning.append(delta[REASONING_CONTENT])
        for call in delta.get("tool_calls", ()):
            calls.append({k: v for k, v in call.items() if k != "index"})
        signature = delta.get(EXTRA_CONTENT, signature)
    message["content"] = "".join(content) if content or not calls else None
    if calls:
        message["tool_calls"] = calls
    if reasoning:
        message[REASONING_CONTENT] = "".join(reasoning)
    if signature is not None:
        message[EXTRA_CONTENT] = signature
    return message


def usage_from_wire(metadata: JSONObject) -> Usage:
    """Gemini's candidates exclude thoughts and its prompt excludes tool-use prompt tokens."""
    thoughts = int(metadata.get("thoughtsTokenCount") or 0)
    return Usage(
        prompt_tokens=int(metadata.get("promptTokenCount") or 0)
        + int(metadata.get("toolUsePromptTokenCount") or 0),
        completion_tokens=int(metadata.get("candidatesTokenCount") or 0) + thoughts,
        cached_tokens=int(metadata.get("cachedContentTokenCount") or 0),
        reasoning_tokens=thoughts,
    )
