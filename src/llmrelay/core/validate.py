"""Validation of Chat Completions requests: the fields that matter, each 400 naming its field.

Only what the gateway must rely on is checked (shape of ``messages``, numbers in range, stream
flags); every other field passes through to the provider untouched, as the contract says.
"""

from __future__ import annotations

from typing import Any

import orjson

from llmrelay.core.errors import InvalidRequest
from llmrelay.core.types import ChatRequest, JSONObject

_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
# Roles whose message with string content needs no check beyond its role (a tool message
# needs its tool_call_id).
_TEXT_ROLES = _ROLES - {"tool"}
_PART_TYPES = frozenset({"text", "image_url", "input_audio", "file", "refusal"})


def parse_json_object(raw: bytes) -> JSONObject:
    if not raw:
        raise InvalidRequest("the request body is empty; send a JSON object")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"the request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise InvalidRequest("the request body must be a JSON object")
    return body


def validate_chat_request(body: JSONObject) -> ChatRequest:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest(
            "'model' is required: a catalogue id like 'openai/gpt-4o-mini', or 'auto'",
            param="model",
        )
    _check_messages(body.get("messages"))
    stream = body.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise InvalidRequest("'stream' must be a boolean", param="stream")
    include_usage = False
    options = body.get("stream_options")
    if options is not None:
        if not isinstance(options, dict):
            raise InvalidRequest("'stream_options' must be an object", param="stream_options")
        flag = options.get("include_usage", False)
        if not isinstance(flag, bool):
            raise InvalidRequest(
                "'stream_options.include_usage' must be a boolean",
                param="stream_options.include_usage",
            )
        include_usage = flag
    max_tokens = _optional_int(body, "max_tokens", minimum=1)
    max_completion = _optional_int(body, "max_completion_tokens", minimum=1)
    _optional_number(body, "temperature", 0.0, 2.0)
    _optional_number(body, "top_p", 0.0, 1.0)
    _optional_number(body, "presence_penalty", -2.0, 2.0)
    _optional_number(body, "frequency_penalty", -2.0, 2.0)
    n = _optional_int(body, "n", minimum=1)
    if n is not None and n > 128:
        raise InvalidRequest("'n' must be at most 128", param="n")
    _check_stop(body.get("stop"))
    _check_tools(body)
    response_format = body.get("response_format")
    if response_format is not None and (
        not isinstance(response_format, dict) or not isinstance(response_format.get("type"), str)
    ):
        raise InvalidRequest(
            "'response_format' must be an object with a 'type'", param="response_format"
        )
    return ChatRequest(
        body=body,
        model=model,
        stream=stream,
        include_usage=include_usage and stream,
        max_output_tokens=max_completion if max_completion is not None else max_tokens,
    )


def _check_messages(messages: Any) -> None:
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("'messages' must be a non-empty array", param="messages")
    for i, message in enumerate(messages):
        # The usual message (a known role, text content) is checked without building a name
        # for it; anything else is checked in full by _check_message.
        if (
            type(message) is dict
            and type(message.get("content")) is str
            and message.get("role") in _TEXT_ROLES
        ):
            continue
        _check_message(i, message)


def _check_message(i: int, message: Any) -> None:
    where = f"messages[{i}]"
    if not isinstance(message, dict):
        raise InvalidRequest(f"'{where}' must be an object", param=where)
    role = message.get("role")
    if role not in _ROLES:
        raise InvalidRequest(
            f"'{where}.role' must be one of system, developer, user, assistant, tool",
            param=f"{where}.role",
        )
    content = message.get("content")
    if content is None:
        if role == "assistant" and (message.get("tool_calls") or message.get("function_call")):
            return
        if role == "assistant":
            return
        raise InvalidRequest(f"'{where}.content' is required", param=f"{where}.content")
    if isinstance(content, str):
        pass
    elif isinstance(content, list):
        for j, part in enumerate(content):
            part_where = f"{where}.content[{j}]"
            if not isinstance(part, dict) or part.get("type") not in _PART_TYPES:
                raise InvalidRequest(
                    f"'{part_where}' must be a content part with a type of text, image_url, "
                    "input_audio or file",
                    param=part_where,
                )
            if part["type"] == "text" and not isinstance(part.get("text"), str):
                raise InvalidRequest(
                    f"'{part_where}.text' must be a string", param=f"{part_where}.text"
                )
    else:
        raise InvalidRequest(
            f"'{where}.content' must be a string or an array of content parts",
            param=f"{where}.content",
        )
    if role == "tool" and not isinstance(message.get("tool_call_id"), str):
        raise InvalidRequest(
            f"'{where}.tool_call_id' is required on a tool message",
            param=f"{where}.tool_call_id",
        )


def _check_tools(body: JSONObject) -> None:
    tools = body.get("tools")
    if tools is None:
        return
    if not isinstance(tools, list):
        raise InvalidRequest("'tools' must be an array", param="tools")
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict) or not isinstance(tool.get("type"), str):
            raise InvalidRequest(f"'tools[{i}]' must be an object with a type", param=f"tools[{i}]")
        if tool["type"] == "function":
            function = tool.get("function")
            if not isinstance(function, dict) or not isinstance(function.get("name"), str):
                raise InvalidRequest(
                    f"'tools[{i}].function.name' is required", param=f"tools[{i}].function.name"
                )


def _check_stop(stop: Any) -> None:
    if stop is None or isinstance(stop, str):
        return
    if not isinstance(stop, list) or len(stop) > 4 or not all(isinstance(s, str) for s in stop):
        raise InvalidRequest("'stop' must be a string or an array of up to 4 strings", param="stop")


def _optional_int(body: JSONObject, field: str, *, minimum: int) -> int | None:
    value = body.get(field)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidRequest(f"'{field}' must be an integer", param=field)
    if value < minimum:
        raise InvalidRequest(f"'{field}' must be at least {minimum}", param=field)
    return value


def _optional_number(body: JSONObject, field: str, low: float, high: float) -> None:
    value = body.get(field)
    if value is None:
        return
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise InvalidRequest(f"'{field}' must be a number", param=field)
    if not low <= value <= high:
        raise InvalidRequest(f"'{field}' must be between {low:g} and {high:g}", param=field)
