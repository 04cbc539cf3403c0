"""Gemini ``generateContent`` request → canonical: the surface's validation and a pure conversion.

Every 400 names the client's field (``contents[2].parts[0].functionResponse.name``). Field names
are read in Gemini's camelCase and, as Google's JSON parser also accepts them, in snake_case.

Request → canonical: ``systemInstruction`` → a system message; ``user`` turns → user messages
(``text``; ``inlineData`` → a ``data:`` URL image, ``input_audio`` or ``file`` part by MIME type;
``fileData`` with an http(s) image URI → an image URL); ``model`` turns → assistant messages
(text; ``functionCall`` → ``tool_calls`` with the part's ``id``, or a synthetic id that is stable
across turns, ``call_<turn>_<position>``); ``functionResponse`` parts → tool messages placed right
after the calls, paired by ``id`` when the client kept it, else by name in the order of the calls;
``tools[].functionDeclarations`` → function tools (``parameters``, an OpenAPI Schema, becomes JSON
Schema; ``parametersJsonSchema`` is taken as is); ``toolConfig.functionCallingConfig`` AUTO / ANY /
NONE → auto / required (named when one function is allowed) / none; ``generationConfig``:
``maxOutputTokens``, ``temperature``, ``topP``, ``stopSequences``, ``candidateCount`` (→ ``n``),
``presencePenalty``, ``frequencyPenalty``, ``seed``, ``responseMimeType: application/json`` →
``json_object``, ``responseSchema`` / ``responseJsonSchema`` → ``json_schema``.

``upstream`` is the provider type of the routed model. When it is ``gemini`` too, the canonical
request also carries what only Gemini can use: thought signatures on the canonical
``extra_content.google.thought_signature`` extension (the Gemini provider sends them back on the
parts they came on), the ``generationConfig`` fields OpenAI has no name for (``thinkingConfig``,
``topK``, ``responseModalities``...), ``safetySettings`` and ``cachedContent``. When it is
``anthropic``, the thought parts whose signature the gateway marked (``signatures``) go back as
the signed ``thinking_blocks`` Anthropic wants. Other upstreams never see any of these.
"""

from __future__ import annotations

from typing import Any

import orjson

from llmrelay.api.signatures import anthropic_from_gemini
from llmrelay.core.errors import InvalidRequest, UnsupportedParameter
from llmrelay.core.types import ChatRequest, JSONObject
from llmrelay.providers.canonical import EXTRA_CONTENT, THINKING_BLOCKS

NATIVE = "gemini"
_AUDIO_FORMATS = {"audio/wav": "wav", "audio/x-wav": "wav", "audio/mpeg": "mp3", "audio/mp3": "mp3"}
# generationConfig fields mapped to canonical fields; the rest are Gemini's own.
_MAPPED_GENERATION = frozenset(
    {
        "maxOutputTokens",
        "temperature",
        "topP",
        "stopSequences",
        "candidateCount",
        "presencePenalty",
        "frequencyPenalty",
        "seed",
        "responseMimeType",
        "responseSchema",
        "responseJsonSchema",
    }
)
_SCHEMA_KEYS = frozenset(
    {
        "description",
        "title",
        "enum",
        "format",
        "minimum",
        "maximum",
        "minItems",
        "maxItems",
        "minLength",
        "maxLength",
        "minProperties",
        "maxProperties",
        "pattern",
        "default",
        "required",
    }
)


def field(obj: JSONObject, camel: str) -> Any:
    """``obj[camel]``, or its snake_case spelling (Google's JSON parser accepts both)."""
    value = obj.get(camel)
    if value is None:
        value = obj.get(_snake(camel))
    return value


def _snake(name: str) -> str:
    return "".join("_" + c.lower() if c.isupper() else c for c in name)


# -- request ------------------------------------------------------------------------------------


def to_chat_request(
    body: JSONObject, model: str, *, stream: bool, upstream: str | None
) -> ChatRequest:
    native = upstream == NATIVE
    messages = _system(field(body, "systemInstruction"))
    messages.extend(_contents(body.get("contents"), upstream))
    canonical: JSONObject = {"model": model, "messages": messages}
    if stream:
        canonical["stream"] = True
    _tools(body, canonical)
    generation = field(body, "generationConfig")
    cap = _generation(generation, canonical, native) if generation is not None else None
    for name in ("safetySettings", "cachedContent"):
        value = field(body, name)
        if value is None:
            continue
        if native:
            canonical[name] = value
        elif name == "cachedContent":
            raise UnsupportedParameter(
                "'cachedContent' needs a model served by a Gemini provider", param=name
            )
    return ChatRequest(
        body=canonical, model=model, stream=stream, include_usage=False, max_output_tokens=cap
    )


def reasoning_effort(body: JSONObject) -> str | None:
    """``thinkingConfig`` as OpenAI's ``reasoning_effort``, for upstreams that are not Gemini."""
    generation = field(body, "generationConfig")
    config = field(generation, "thinkingConfig") if isinstance(generation, dict) else None
    if not isinstance(config, dict):
        return None
    level = field(config, "thinkingLevel")
    if isinstance(level, str) and level.lower() in ("minimal", "low", "medium", "high"):
        return level.lower()
    budget = field(config, "thinkingBudget")
    if not isinstance(budget, int) or budget == 0:
        return None
    if budget < 0:  # -1: dynamic thinking, the model decides
        return "medium"
    return "low" if budget <= 2048 else "medium" if budget <= 8192 else "high"


def _system(instruction: Any) -> list[JSONObject]:
    if instruction is None:
        return []
    if isinstance(instruction, str):
        return [{"role": "system", "content": instruction}] if instruction else []
    parts = instruction.get("parts") if isinstance(instruction, dict) else None
    if not isinstance(parts, list):
        raise InvalidRequest(
            "'systemInstruction.parts' must be an array of text parts",
            param="systemInstruction.parts",
        )
    texts = []
    for j, part in enumerate(parts):
        text = part.get("text") if isinstance(part, dict) else None
        if not isinstance(text, str):
            where = f"systemInstruction.parts[{j}].text"
            raise InvalidRequest(f"'{where}' must be a string", param=where)
        texts.append(text)
    text = "\n".join(t for t in texts if t)
    return [{"role": "system", "content": text}] if text else []


def _contents(contents: Any, upstream: str | None) -> list[JSONObject]:
    if not isinstance(contents, list) or not contents:
        raise InvalidRequest("'contents' must be a non-empty array", param="contents")
    out: list[JSONObject] = []
    pending: list[tuple[str, str]] = []  # the previous model turn's unanswered (id, name)
    for i, content in enumerate(contents):
        where = f"contents[{i}]"
        if not isinstance(content, dict):
            raise InvalidRequest(f"'{where}' must be an object", param=where)
        role = content.get("role") or "user"
        parts = content.get("parts")
        if not isinstance(parts, list) or not parts:
            raise InvalidRequest(
                f"'{where}.parts' must be a non-empty array", param=f"{where}.parts"
            )
        if role == "model":
            message, pending = _model_turn(parts, where, i, upstream)
            out.append(message)
        elif role in ("user", "function"):
            out.extend(_user_turn(parts, where, pending))
        else:
            raise InvalidRequest(f"'{where}.role' must be 'user' or 'model'", param=f"{where}.role")
    return out


def _part(part: Any, where: str) -> JSONObject:
    if not isinstance(part, dict) or not part:
        raise InvalidRequest(f"'{where}' must be a non-empty object", param=where)
    return part


def _signature(part: JSONObject) -> str | None:
    signature = field(part, "thoughtSignature")
    return signature if isinstance(signature, str) and signature else None


def _model_turn(
    parts: list[Any], where: str, turn: int, upstream: str | None
) -> tuple[JSONObject, list[tuple[str, str]]]:
    native = upstream == NATIVE
    texts: list[str] = []
    thoughts: list[str] = []  # thought text since the last signed thinking block
    blocks: list[JSONObject] = []
    calls: list[JSONObject] = []
    message: JSONObject = {"role": "assistant"}
    for j, raw in enumerate(parts):
        at = f"{where}.parts[{j}]"
        part = _part(raw, at)
        signature = _signature(part)
        call = field(part, "functionCall")
        text = part.get("text")
        if call is not None:
            own = signature if native else None
            calls.append(_function_call(call, f"{at}.functionCall", turn, len(calls), own))
            continue
        if not isinstance(text, str) and signature is None:
            raise InvalidRequest(
                f"'{at}' must hold text or a functionCall in a model turn", param=at
            )
        if isinstance(text, str):
            # The model's own thoughts are not input again; only their signatures go back.
            (thoughts if part.get("thought") else texts).append(text)
        if signature is None:
            continue
        block = anthropic_from_gemini(signature, "".join(thoughts))
        if block is not None:
            thoughts.clear()
            if upstream == "anthropic":
                blocks.append(block)
        elif native and EXTRA_CONTENT not in message:
            message[EXTRA_CONTENT] = {"google": {"thought_signature": signature}}
    text = "".join(texts)
    message["content"] = text if text or not calls else None
    if calls:
        message["tool_calls"] = calls
    if blocks:
        message[THINKING_BLOCKS] = blocks
    return message, [(call["id"], call["function"]["name"]) for call in calls]


def _function_call(
    call: Any, where: str, turn: int, position: int, signature: str | None
) -> JSONObject:
    if not isinstance(call, dict) or not isinstance(call.get("name"), str):
        raise InvalidRequest(f"'{where}.name' must be a string", param=f"{where}.name")
    args = call.get("args")
    if args is None:
        args = {}
    if not isinstance(args, dict):
        raise InvalidRequest(f"'{where}.args' must be an object", param=f"{where}.args")
    call_id = call.get("id")
    tool_call: JSONObject = {
        "id": call_id if isinstance(call_id, str) and call_id else f"call_{turn}_{position}",
        "type": "function",
        "function": {"name": call["name"], "arguments": orjson.dumps(args).decode()},
    }
    if signature is not None:
        tool_call[EXTRA_CONTENT] = {"google": {"thought_signature": signature}}
    return tool_call


def _user_turn(parts: list[Any], where: str, pending: list[tuple[str, str]]) -> list[JSONObject]:
    tool_messages: list[JSONObject] = []
    content: list[JSONObject] = []
    for j, raw in enumerate(parts):
        at = f"{where}.parts[{j}]"
        part = _part(raw, at)
        text = part.get("text")
        inline = field(part, "inlineData")
        file_data = field(part, "fileData")
        response = field(part, "functionResponse")
        if isinstance(text, str):
            content.append({"type": "text", "text": text})
        elif inline is not None:
            content.append(_inline(inline, f"{at}.inlineData"))
        elif file_data is not None:
            content.append(_file_uri(file_data, f"{at}.fileData"))
        elif response is not None:
            tool_messages.append(_function_response(response, f"{at}.functionResponse", pending))
        elif field(part, "functionCall") is not None:
            raise InvalidRequest(
                f"'{at}': a functionCall belongs in a model turn", param=f"{at}.functionCall"
            )
        else:
            raise UnsupportedParameter(
                f"'{at}': only text, inlineData, fileData and functionResponse parts are "
                "supported in a user turn",
                param=at,
            )
    if content:
        if len(content) == 1 and content[0]["type"] == "text":
            tool_messages.append({"role": "user", "content": content[0]["text"]})
        else:
            tool_messages.append({"role": "user", "content": content})
    return tool_messages


def _inline(inline: Any, where: str) -> JSONObject:
    if not isinstance(inline, dict):
        raise InvalidRequest(f"'{where}' must be an object", param=where)
    mime = field(inline, "mimeType")
    data = inline.get("data")
    if not isinstance(mime, str) or not mime:
        raise InvalidRequest(f"'{where}.mimeType' must be a string", param=f"{where}.mimeType")
    if not isinstance(data, str):
        raise InvalidRequest(f"'{where}.data' must be base64 text", param=f"{where}.data")
    mime = mime.lower()
    if mime.startswith("image/"):
        return {"type": "image_url", "image_url": {"url": f"data:{mime};base64,{data}"}}
    if mime in _AUDIO_FORMATS:
        audio = {"data": data, "format": _AUDIO_FORMATS[mime]}
        return {"type": "input_audio", "input_audio": audio}
    return {
        "type": "file",
        "file": {"filename": "attachment", "file_data": f"data:{mime};base64,{data}"},
    }


def _file_uri(file_data: Any, where: str) -> JSONObject:
    uri = field(file_data, "fileUri") if isinstance(file_data, dict) else None
    mime = field(file_data, "mimeType") if isinstance(file_data, dict) else None
    if not isinstance(uri, str) or not uri:
        raise InvalidRequest(f"'{where}.fileUri' must be a string", param=f"{where}.fileUri")
    image = not isinstance(mime, str) or mime.lower().startswith("image/")
    if uri.startswith(("https://", "http://")) and image:
        return {"type": "image_url", "image_url": {"url": uri}}
    raise UnsupportedParameter(
        f"'{where}': only http(s) image URIs can be forwarded; send other files as inlineData",
        param=f"{where}.fileUri",
    )


def _function_response(response: Any, where: str, pending: list[tuple[str, str]]) -> JSONObject:
    if not isinstance(response, dict) or not isinstance(response.get("name"), str):
        raise InvalidRequest(f"'{where}.name' must be a string", param=f"{where}.name")
    name = response["name"]
    given = response.get("id")
    # By id when the client kept it, else (or when it matches nothing) by name, in call order.
    match = next((i for i, (call_id, _) in enumerate(pending) if given and call_id == given), None)
    if match is None:
        match = next((i for i, (_, call_name) in enumerate(pending) if call_name == name), None)
    if match is None:
        raise InvalidRequest(
            f"'{where}' answers no functionCall named {name!r} of the model turn before it",
            param=f"{where}.name",
        )
    call_id, _ = pending.pop(match)
    payload = response.get("response")
    text = orjson.dumps(payload if payload is not None else {}).decode()
    return {"role": "tool", "tool_call_id": call_id, "content": text}


def _tools(body: JSONObject, canonical: JSONObject) -> None:
    tools = body.get("tools")
    if tools is None:
        return
    if not isinstance(tools, list):
        raise InvalidRequest("'tools' must be an array", param="tools")
    converted: list[JSONObject] = []
    for i, tool in enumerate(tools):
        where = f"tools[{i}]"
        if not isinstance(tool, dict):
            raise InvalidRequest(f"'{where}' must be an object", param=where)
        declarations = field(tool, "functionDeclarations")
        others = [
            k for k, v in tool.items() if v is not None and _snake(k) != "function_declarations"
        ]
        if others:
            raise UnsupportedParameter(
                f"'{where}.{others[0]}': only functionDeclarations tools can be forwarded",
                param=f"{where}.{others[0]}",
            )
        if not isinstance(declarations, list):
            raise InvalidRequest(
                f"'{where}.functionDeclarations' must be an array",
                param=f"{where}.functionDeclarations",
            )
        for j, declaration in enumerate(declarations):
            converted.append(_declaration(declaration, f"{where}.functionDeclarations[{j}]"))
    if not converted:
        return
    config = field(body, "toolConfig")
    calling = field(config, "functionCallingConfig") if isinstance(config, dict) else None
    if isinstance(calling, dict):
        converted = _tool_choice(calling, converted, canonical)
    canonical["tools"] = converted


def _declaration(declaration: Any, where: str) -> JSONObject:
    if not isinstance(declaration, dict) or not isinstance(declaration.get("name"), str):
        raise InvalidRequest(f"'{where}.name' must be a string", param=f"{where}.name")
    function: JSONObject = {"name": declaration["name"]}
    if isinstance(declaration.get("description"), str):
        function["description"] = declaration["description"]
    json_schema = field(declaration, "parametersJsonSchema")
    parameters = declaration.get("parameters")
    if json_schema is not None:
        function["parameters"] = json_schema
    elif parameters is not None:
        if not isinstance(parameters, dict):
            raise InvalidRequest(
                f"'{where}.parameters' must be a Schema object", param=f"{where}.parameters"
            )
        function["parameters"] = to_json_schema(parameters)
    else:
        function["parameters"] = {"type": "object", "properties": {}}
    return {"type": "function", "function": function}


def _tool_choice(
    calling: JSONObject, tools: list[JSONObject], canonical: JSONObject
) -> list[JSONObject]:
    mode = str(calling.get("mode") or "AUTO").upper()
    allowed = field(calling, "allowedFunctionNames")
    if mode in ("AUTO", "VALIDATED", "MODE_UNSPECIFIED"):
        canonical["tool_choice"] = "auto"
    elif mode == "NONE":
        canonical["tool_choice"] = "none"
    elif mode == "ANY":
        if isinstance(allowed, list) and allowed:
            names = set(allowed)
            tools = [t for t in tools if t["function"]["name"] in names]
            if len(allowed) == 1:
                canonical["tool_choice"] = {"type": "function", "function": {"name": allowed[0]}}
                return tools
        canonical["tool_choice"] = "required"
    else:
        raise InvalidRequest(
            "'toolConfig.functionCallingConfig.mode' must be AUTO, ANY, NONE or VALIDATED",
            param="toolConfig.functionCallingConfig.mode",
        )
    return tools


def _generation(generation: Any, canonical: JSONObject, native: bool) -> int | None:
    if not isinstance(generation, dict):
        raise InvalidRequest("'generationConfig' must be an object", param="generationConfig")
    cap = _int(generation, "maxOutputTokens", 1)
    if cap is not None:
        canonical["max_tokens"] = cap
    for name, target, low, high in (
        ("temperature", "temperature", 0.0, 2.0),
        ("topP", "top_p", 0.0, 1.0),
        ("presencePenalty", "presence_penalty", -2.0, 2.0),
        ("frequencyPenalty", "frequency_penalty", -2.0, 2.0),
    ):
        value = field(generation, name)
        if value is None:
            continue
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise InvalidRequest(
                f"'generationConfig.{name}' must be a number", param=f"generationConfig.{name}"
            )
        if not low <= value <= high:
            raise InvalidRequest(
                f"'generationConfig.{name}' must be between {low:g} and {high:g}",
                param=f"generationConfig.{name}",
            )
        canonical[target] = value
    seed = _int(generation, "seed", None)
    if seed is not None:
        canonical["seed"] = seed
    candidates = _int(generation, "candidateCount", 1)
    if candidates is not None and candidates > 1:
        canonical["n"] = candidates
    stops = field(generation, "stopSequences")
    if stops is not None:
        if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
            raise InvalidRequest(
                "'generationConfig.stopSequences' must be an array of strings",
                param="generationConfig.stopSequences",
            )
        if stops:
            canonical["stop"] = stops
    _response_format(generation, canonical)
    if native:
        own = {k: v for k, v in generation.items() if _camel(k) not in _MAPPED_GENERATION}
        if own:
            canonical["generationConfig"] = own
    return cap


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(word.title() for word in rest)


def _int(generation: JSONObject, name: str, minimum: int | None) -> int | None:
    value = field(generation, name)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidRequest(
            f"'generationConfig.{name}' must be an integer", param=f"generationConfig.{name}"
        )
    if minimum is not None and value < minimum:
        raise InvalidRequest(
            f"'generationConfig.{name}' must be at least {minimum}",
            param=f"generationConfig.{name}",
        )
    return value


def _response_format(generation: JSONObject, canonical: JSONObject) -> None:
    mime = field(generation, "responseMimeType")
    json_schema = field(generation, "responseJsonSchema")
    schema = field(generation, "responseSchema")
    if mime not in (None, "text/plain", "application/json"):
        raise UnsupportedParameter(
            f"'generationConfig.responseMimeType' {mime!r} is not supported (use text/plain or "
            "application/json)",
            param="generationConfig.responseMimeType",
        )
    if json_schema is None and schema is not None:
        if not isinstance(schema, dict):
            raise InvalidRequest(
                "'generationConfig.responseSchema' must be a Schema object",
                param="generationConfig.responseSchema",
            )
        json_schema = to_json_schema(schema)
    if json_schema is not None:
        canonical["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": "response", "schema": json_schema},
        }
    elif mime == "application/json":
        canonical["response_format"] = {"type": "json_object"}


def to_json_schema(schema: JSONObject) -> JSONObject:
    """Gemini's OpenAPI-subset ``Schema`` (``type: OBJECT``, ``nullable``...) as JSON Schema."""
    out: JSONObject = {}
    kind = schema.get("type")
    if isinstance(kind, str) and kind.upper() != "TYPE_UNSPECIFIED":
        lowered = kind.lower()
        out["type"] = [lowered, "null"] if schema.get("nullable") else lowered
    for key in _SCHEMA_KEYS:
        if key in schema:
            out[key] = schema[key]
    properties = schema.get("properties")
    if isinstance(properties, dict):
        out["properties"] = {
            name: to_json_schema(value) if isinstance(value, dict) else {}
            for name, value in properties.items()
        }
    items = schema.get("items")
    if isinstance(items, dict):
        out["items"] = to_json_schema(items)
    any_of = field(schema, "anyOf")
    if isinstance(any_of, list):
        out["anyOf"] = [to_json_schema(s) for s in any_of if isinstance(s, dict)]
    return out
