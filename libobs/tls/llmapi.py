"""LLM API facts (model, stream, token usage) from reassembled HTTP messages.

Requests are recognised by path: Anthropic Messages, OpenAI(-compatible) Chat Completions and
Responses (any prefix, Azure deployments included), Gemini generateContent and
streamGenerateContent (also Vertex AI publisher paths). Responses are read by shape rather
than by provider, because every supported API puts its facts in one of a few places:

    Anthropic      model, usage{input_tokens, output_tokens, cache_*_input_tokens}
                   SSE: message_start.message{model, usage}, message_delta.usage
    OpenAI chat    model, usage{prompt_tokens, completion_tokens, prompt_tokens_details}
    OpenAI resp.   model, usage{input_tokens, output_tokens, input_tokens_details}
                   SSE: response.created / response.completed carry .response{...}
    Gemini         modelVersion, usageMetadata{promptTokenCount, candidatesTokenCount, ...}

Streams are folded event by event, keeping the last non-null value of each field, which
gives cumulative Anthropic output_tokens and Gemini's last usageMetadata. Token names follow
the event contract (LlmApi): input/prompt -> prompt_tokens, output/candidates ->
completion_tokens, cache reads/cached -> cache_read_tokens, cache creation ->
cache_creation_tokens. Nothing here raises: malformed JSON gives whatever could be read.
"""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import unquote

import orjson

from libobs.tls.message import HttpMessage, SseEvent, parse_sse

__all__ = ["SseEvent", "parse_sse", "request_facts", "response_facts"]

_OPENAI_PATH = re.compile(r"/(?:chat/)?completions$|/responses$")
_AZURE_DEPLOYMENT = re.compile(r"/openai/deployments/([^/]+)/")
# Gemini (and Vertex AI: .../publishers/{google,anthropic}/models/<model>:<verb>)
_MODEL_VERB = re.compile(
    r"/models/([^/:]+):(generateContent|streamGenerateContent|rawPredict|streamRawPredict)"
)

# Contract field -> where each API keeps it inside its usage object, first match wins.
_USAGE_PATHS: dict[str, tuple[tuple[str, ...], ...]] = {
    "prompt_tokens": (("input_tokens",), ("prompt_tokens",), ("promptTokenCount",)),
    "completion_tokens": (("output_tokens",), ("completion_tokens",), ("candidatesTokenCount",)),
    "cache_read_tokens": (
        ("cache_read_input_tokens",),
        ("prompt_tokens_details", "cached_tokens"),
        ("input_tokens_details", "cached_tokens"),
        ("cachedContentTokenCount",),
    ),
    "cache_creation_tokens": (("cache_creation_input_tokens",),),
}
_RESPONSE_FIELDS = ("model", *_USAGE_PATHS)

# For request bodies over max_body, which no longer parse: top-level keys come early.
_TRUNCATED_SCAN = 64 << 10
_MODEL_FIELD = re.compile(rb'"model"\s*:\s*"([^"\\]{1,256})"')
_STREAM_TRUE = re.compile(rb'"stream"\s*:\s*true\b')


def _route(path: str) -> str:
    """The path without query (a Gemini ?key= must never reach output) or fragment."""
    return unquote(path.split("?", 1)[0].split("#", 1)[0])


def other_request(msg: HttpMessage) -> dict[str, Any] | None:
    """{"method", "path"} of a request that is not an LLM API call (request_facts gave None):
    an agent's settings or telemetry request, kept apart from its model calls."""
    if not msg.is_request or not msg.method or msg.path is None:
        return None
    if msg.headers.get("upgrade"):
        return None  # a WebSocket's opening: its messages may well be model calls
    return {"method": msg.method, "path": _route(msg.path)}


def _json(data: bytes | str) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return None


def request_facts(msg: HttpMessage) -> dict[str, Any] | None:
    """{"model", "stream", "path"} for a request to an LLM API, None for anything else."""
    if not msg.is_request or msg.method != "POST" or not msg.path:
        return None
    route = _route(msg.path)
    model, stream = _request_body(msg)
    if m := _MODEL_VERB.search(route):
        if not route.endswith(m.group(2)):
            return None
        model = m.group(1)
        stream = m.group(2).startswith("stream") or "alt=sse" in msg.path or stream
    elif route.endswith("/v1/messages"):
        pass  # Anthropic: model and stream from the body
    elif _OPENAI_PATH.search(route):
        if model is None and (dep := _AZURE_DEPLOYMENT.search(route)):
            model = dep.group(1)  # Azure names the deployment in the path
    else:
        return None
    return {"model": model, "stream": stream, "path": route}


def _request_body(msg: HttpMessage) -> tuple[str | None, bool]:
    """Model and stream flag from a request body; regexes stand in if it was cut short."""
    if msg.undecoded:
        return None, False
    body = _json(msg.body)
    if isinstance(body, dict):
        model = body.get("model")
        return (model if isinstance(model, str) else None), body.get("stream") is True
    if not msg.truncated:
        return None, False
    head = msg.body[:_TRUNCATED_SCAN]
    found = _MODEL_FIELD.search(head)
    model = found.group(1).decode("utf-8", "replace") if found else None
    return model, _STREAM_TRUE.search(head) is not None


def response_facts(msg: HttpMessage, request: dict[str, Any] | None) -> dict[str, Any] | None:
    """Model, token usage and stream of an LLM API response.

    With `request` (request_facts of the matching request) a dict is always returned, its
    unknown fields None (an error response has no usage); without it, only when the body
    yielded a model or a token count. The request's model fills in a missing one.
    """
    if msg.is_request:
        return None
    objects, streamed = _response_objects(msg)
    facts: dict[str, Any] = dict.fromkeys(_RESPONSE_FIELDS)
    for obj in objects:
        _fold(obj, facts)
    if request is None and all(v is None for v in facts.values()):
        return None
    if facts["model"] is None and request is not None:
        facts["model"] = request.get("model")
    facts["stream"] = streamed or bool(request and request.get("stream"))
    return facts


def _response_objects(msg: HttpMessage) -> tuple[list[dict[str, Any]], bool]:
    """The JSON objects a response carries, and whether it was a stream of them."""
    if msg.undecoded:
        return [], msg.is_sse
    body = msg.body.lstrip()
    if msg.is_sse or body.startswith((b"data:", b"event:")):
        events = msg.sse or parse_sse(msg.body.decode("utf-8", "replace"))
        return _sse_objects(events), True
    value = _json(body)
    if isinstance(value, dict):
        return [value], False
    if isinstance(value, list):
        return [v for v in value if isinstance(v, dict)], True
    if body.startswith(b"["):  # a streamed JSON array cut short: read its whole elements
        return _array_prefix(body.decode("utf-8", "replace")), True
    return [], False


def _sse_objects(events: list[SseEvent]) -> list[dict[str, Any]]:
    objects = []
    for event in events:
        if event.data.strip() == "[DONE]":
            continue
        value = _json(event.data)
        if isinstance(value, dict):
            objects.append(value)
    return objects


def _array_prefix(text: str) -> list[dict[str, Any]]:
    """The complete objects at the start of a truncated JSON array."""
    decoder = json.JSONDecoder()
    objects: list[dict[str, Any]] = []
    pos = 1
    while True:
        while pos < len(text) and text[pos] in " \t\r\n,":
            pos += 1
        try:
            value, pos = decoder.raw_decode(text, pos)
        except (ValueError, RecursionError):
            return objects
        if isinstance(value, dict):
            objects.append(value)


def _fold(obj: dict[str, Any], facts: dict[str, Any]) -> None:
    """Update facts with the last non-null model and usage values found in obj."""
    for carrier in (obj, obj.get("message"), obj.get("response")):
        if not isinstance(carrier, dict):
            continue
        model = carrier.get("model", carrier.get("modelVersion"))
        if isinstance(model, str) and model:
            facts["model"] = model
        usage = carrier.get("usage", carrier.get("usageMetadata"))
        if isinstance(usage, dict):
            for name, paths in _USAGE_PATHS.items():
                value = _first_count(usage, paths)
                if value is not None:
                    facts[name] = value


def _first_count(usage: dict[str, Any], paths: tuple[tuple[str, ...], ...]) -> int | None:
    for path in paths:
        value: Any = usage
        for key in path:
            value = value.get(key) if isinstance(value, dict) else None
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None
