"""LLM API facts from realistic provider exchanges, reassembled from chunks split anywhere."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from libobs.tls.http1 import HttpStream
from libobs.tls.llmapi import SseEvent, parse_sse, request_facts, response_facts
from libobs.tls.message import HttpMessage
from tests.unit.test_parse_http import cuts_for, feed_all, request_bytes, response_bytes, split


def sse(*events: tuple[str | None, Any], sep: str = "\n") -> bytes:
    """An event stream; data that is not a str is JSON-encoded."""
    out = ""
    for name, data in events:
        text = data if isinstance(data, str) else json.dumps(data)
        out += (f"event: {name}{sep}" if name else "") + f"data: {text}{sep}{sep}"
    return out.encode()


def js(value: Any) -> bytes:
    return json.dumps(value).encode()


@dataclass(frozen=True)
class Case:
    name: str
    path: str
    request: bytes
    response: bytes
    content_type: str
    want_request: dict[str, Any]
    want_response: dict[str, Any]
    headers: tuple[tuple[str, str], ...] = ()


def facts(model: str | None, prompt: int | None, completion: int | None, cache_read: int | None,
          cache_creation: int | None, stream: bool) -> dict[str, Any]:
    return {"model": model, "prompt_tokens": prompt, "completion_tokens": completion,
            "cache_read_tokens": cache_read, "cache_creation_tokens": cache_creation,
            "stream": stream}


ANTHROPIC_HEADERS = (("x-api-key", "sk-ant-api03-" + "a" * 40), ("anthropic-version", "2023-06-01"))

ANTHROPIC_JSON = Case(
    "anthropic-json", "/v1/messages",
    js({"model": "claude-sonnet-4-20250514", "max_tokens": 1024,
        "messages": [{"role": "user", "content": "Hello, Claude"}]}),
    js({"id": "msg_01XFDUDYJgAACzvnptvVoYEL", "type": "message", "role": "assistant",
        "model": "claude-sonnet-4-20250514",
        "content": [{"type": "text", "text": "Hi! My name is Claude."}],
        "stop_reason": "end_turn", "stop_sequence": None,
        "usage": {"input_tokens": 12, "cache_creation_input_tokens": 0,
                  "cache_read_input_tokens": 2048, "output_tokens": 6}}),
    "application/json",
    {"model": "claude-sonnet-4-20250514", "stream": False, "path": "/v1/messages"},
    facts("claude-sonnet-4-20250514", 12, 6, 2048, 0, False),
    ANTHROPIC_HEADERS,
)

ANTHROPIC_SSE = Case(
    "anthropic-sse", "/v1/messages?beta=true",
    js({"model": "claude-opus-4-1-20250805", "max_tokens": 64000, "stream": True,
        "messages": [{"role": "user", "content": "Write a haiku"}]}),
    sse(
        ("message_start", {"type": "message_start", "message": {
            "id": "msg_1nZdL29xx5MUA1yADyHTEsnR8uuvGzszyY", "type": "message", "role": "assistant",
            "content": [], "model": "claude-opus-4-1-20250805", "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": 25, "cache_creation_input_tokens": 1500,
                      "cache_read_input_tokens": 0, "output_tokens": 1}}}),
        ("content_block_start", {"type": "content_block_start", "index": 0,
                                 "content_block": {"type": "text", "text": ""}}),
        ("ping", {"type": "ping"}),
        ("content_block_delta", {"type": "content_block_delta", "index": 0,
                                 "delta": {"type": "text_delta", "text": "Autumn moonlight—"}}),
        ("content_block_delta", {"type": "content_block_delta", "index": 0,
                                 "delta": {"type": "text_delta", "text": "\na worm digs silently"}}),
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        ("message_delta", {"type": "message_delta", "delta": {"stop_reason": None},
                           "usage": {"output_tokens": 40}}),
        # newer API: cumulative usage, input fields repeated (some null); the last value wins
        ("message_delta", {"type": "message_delta",
                           "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                           "usage": {"input_tokens": 25, "cache_creation_input_tokens": None,
                                     "cache_read_input_tokens": 0, "output_tokens": 87}}),
        ("message_stop", {"type": "message_stop"}),
    ),
    "text/event-stream; charset=utf-8",
    {"model": "claude-opus-4-1-20250805", "stream": True, "path": "/v1/messages"},
    facts("claude-opus-4-1-20250805", 25, 87, 0, 1500, True),
    ANTHROPIC_HEADERS,
)

OPENAI_HEADERS = (("Authorization", "Bearer sk-proj-" + "b" * 48),)

OPENAI_CHAT_JSON = Case(
    "openai-chat-json", "/v1/chat/completions",
    js({"model": "gpt-4o", "messages": [{"role": "user", "content": "Say this is a test"}]}),
    js({"id": "chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG", "object": "chat.completion",
        "created": 1741570283, "model": "gpt-4o-2024-08-06",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "This is a test.",
                                             "refusal": None, "annotations": []},
                     "logprobs": None, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 1117, "completion_tokens": 46, "total_tokens": 1163,
                  "prompt_tokens_details": {"cached_tokens": 1024, "audio_tokens": 0},
                  "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                                                "accepted_prediction_tokens": 0,
                                                "rejected_prediction_tokens": 0}},
        "service_tier": "default", "system_fingerprint": "fp_fc9f1d7035"}),
    "application/json",
    {"model": "gpt-4o", "stream": False, "path": "/v1/chat/completions"},
    facts("gpt-4o-2024-08-06", 1117, 46, 1024, None, False),
    OPENAI_HEADERS,
)


def _chat_chunk(delta: dict[str, Any], finish: str | None = None,
                usage: dict[str, Any] | None = None, choices: bool = True) -> dict[str, Any]:
    return {"id": "chatcmpl-7", "object": "chat.completion.chunk", "created": 1694268190,
            "model": "gpt-4o-mini-2024-07-18", "system_fingerprint": "fp_44709d6fcb",
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]
            if choices else [], "usage": usage}


OPENAI_CHAT_SSE = Case(
    "openai-chat-sse", "/v1/chat/completions",
    js({"model": "gpt-4o-mini", "stream": True, "stream_options": {"include_usage": True},
        "messages": [{"role": "user", "content": "Hello!"}]}),
    sse(
        (None, _chat_chunk({"role": "assistant", "content": "", "refusal": None})),
        (None, _chat_chunk({"content": "Hello"})),
        (None, _chat_chunk({"content": " there!"})),
        (None, _chat_chunk({}, finish="stop")),
        (None, _chat_chunk({}, choices=False, usage={
            "prompt_tokens": 9, "completion_tokens": 12, "total_tokens": 21,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0}})),
        (None, "[DONE]"),
    ),
    "text/event-stream; charset=utf-8",
    {"model": "gpt-4o-mini", "stream": True, "path": "/v1/chat/completions"},
    facts("gpt-4o-mini-2024-07-18", 9, 12, 0, None, True),
    OPENAI_HEADERS,
)

_RESPONSE_USAGE = {"input_tokens": 36, "input_tokens_details": {"cached_tokens": 12},
                   "output_tokens": 87, "output_tokens_details": {"reasoning_tokens": 0},
                   "total_tokens": 123}

OPENAI_RESPONSES_JSON = Case(
    "openai-responses-json", "/v1/responses",
    js({"model": "gpt-4.1", "input": "Tell me a three sentence bedtime story about a unicorn."}),
    js({"id": "resp_67ccd2bed1ec8190b14f964abc054267", "object": "response",
        "created_at": 1741476542, "status": "completed", "error": None,
        "model": "gpt-4.1-2025-04-14",
        "output": [{"type": "message", "id": "msg_67ccd2bf17f0", "status": "completed",
                    "role": "assistant",
                    "content": [{"type": "output_text", "text": "In a peaceful grove...",
                                 "annotations": []}]}],
        "usage": _RESPONSE_USAGE}),
    "application/json",
    {"model": "gpt-4.1", "stream": False, "path": "/v1/responses"},
    facts("gpt-4.1-2025-04-14", 36, 87, 12, None, False),
    OPENAI_HEADERS,
)

_RESP_BASE = {"id": "resp_68a1", "object": "response", "created_at": 1755000000,
              "model": "o4-mini-2025-04-16", "output": []}

OPENAI_RESPONSES_SSE = Case(
    "openai-responses-sse", "/v1/responses",
    js({"model": "o4-mini", "stream": True, "input": "Hi"}),
    sse(
        ("response.created", {"type": "response.created", "sequence_number": 0,
                              "response": {**_RESP_BASE, "status": "in_progress", "usage": None}}),
        ("response.output_text.delta", {"type": "response.output_text.delta",
                                        "sequence_number": 4, "item_id": "msg_1",
                                        "output_index": 1, "content_index": 0, "delta": "Hi"}),
        ("response.completed", {"type": "response.completed", "sequence_number": 9,
                                "response": {**_RESP_BASE, "status": "completed", "usage": {
                                    "input_tokens": 120,
                                    "input_tokens_details": {"cached_tokens": 64},
                                    "output_tokens": 300,
                                    "output_tokens_details": {"reasoning_tokens": 256},
                                    "total_tokens": 420}}}),
    ),
    "text/event-stream; charset=utf-8",
    {"model": "o4-mini", "stream": True, "path": "/v1/responses"},
    facts("o4-mini-2025-04-16", 120, 300, 64, None, True),
    OPENAI_HEADERS,
)

GEMINI_HEADERS = (("x-goog-api-key", "AIza" + "c" * 35),)
_GEMINI_REQ = js({"contents": [{"role": "user", "parts": [{"text": "Explain how AI works"}]}]})


def _gemini_chunk(text: str, usage: dict[str, int], finish: bool = False) -> dict[str, Any]:
    candidate: dict[str, Any] = {"content": {"parts": [{"text": text}], "role": "model"},
                                 "index": 0}
    if finish:
        candidate["finishReason"] = "STOP"
    return {"candidates": [candidate], "usageMetadata": usage,
            "modelVersion": "gemini-2.5-flash", "responseId": "Cj4yaNzeB7ayqtsP0b6qiQE"}


_GEMINI_STREAM = [
    _gemini_chunk("AI learns", {"promptTokenCount": 8, "totalTokenCount": 8,
                                "cachedContentTokenCount": 4}),
    _gemini_chunk(" patterns", {"promptTokenCount": 8, "candidatesTokenCount": 3,
                                "totalTokenCount": 11, "cachedContentTokenCount": 4}),
    _gemini_chunk(" from data.", {"promptTokenCount": 8, "candidatesTokenCount": 31,
                                  "totalTokenCount": 71, "cachedContentTokenCount": 4,
                                  "thoughtsTokenCount": 32}, finish=True),
]

GEMINI_JSON = Case(
    "gemini-json", "/v1beta/models/gemini-2.5-flash:generateContent",
    _GEMINI_REQ,
    json.dumps(_gemini_chunk("AI learns patterns from data.", {
        "promptTokenCount": 8, "candidatesTokenCount": 20, "totalTokenCount": 60,
        "cachedContentTokenCount": 4, "thoughtsTokenCount": 32}, finish=True), indent=2).encode(),
    "application/json; charset=UTF-8",
    {"model": "gemini-2.5-flash", "stream": False,
     "path": "/v1beta/models/gemini-2.5-flash:generateContent"},
    facts("gemini-2.5-flash", 8, 20, 4, None, False),
    GEMINI_HEADERS,
)

GEMINI_SSE = Case(
    "gemini-sse", "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
    _GEMINI_REQ,
    sse(*((None, chunk) for chunk in _GEMINI_STREAM), sep="\r\n"),
    "text/event-stream",
    {"model": "gemini-2.5-flash", "stream": True,
     "path": "/v1beta/models/gemini-2.5-flash:streamGenerateContent"},
    facts("gemini-2.5-flash", 8, 31, 4, None, True),
    GEMINI_HEADERS,
)

GEMINI_ARRAY = Case(
    "gemini-json-array", "/v1beta/models/gemini-2.5-flash:streamGenerateContent",
    _GEMINI_REQ,
    # The non-SSE stream: one JSON array whose elements arrive one by one.
    ("[" + "\r\n,\r\n".join(json.dumps(c, indent=2) for c in _GEMINI_STREAM) + "]").encode(),
    "application/json; charset=UTF-8",
    {"model": "gemini-2.5-flash", "stream": True,
     "path": "/v1beta/models/gemini-2.5-flash:streamGenerateContent"},
    facts("gemini-2.5-flash", 8, 31, 4, None, True),
    GEMINI_HEADERS,
)

CASES = [ANTHROPIC_JSON, ANTHROPIC_SSE, OPENAI_CHAT_JSON, OPENAI_CHAT_SSE,
         OPENAI_RESPONSES_JSON, OPENAI_RESPONSES_SSE, GEMINI_JSON, GEMINI_SSE, GEMINI_ARRAY]


def wires(case: Case, use_chunked: bool, gz: bool) -> tuple[bytes, bytes]:
    req = request_bytes(case.path, case.request, case.headers, use_chunked=use_chunked, gz=gz)
    resp = response_bytes(case.response, case.content_type, use_chunked=use_chunked, gz=gz)
    return req, resp


def exchange(chunks: list[tuple[bool, bytes]]) -> list[HttpMessage]:
    stream = HttpStream()
    msgs = feed_all(stream, chunks)
    assert stream.dead(True) is None and stream.dead(False) is None
    return msgs


def check(case: Case, req: HttpMessage, resp: HttpMessage) -> None:
    got_request = request_facts(req)
    assert got_request == case.want_request
    assert response_facts(resp, got_request) == case.want_response


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
@pytest.mark.parametrize("use_chunked", [False, True], ids=["length", "chunked"])
@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gzip"])
def test_provider_exchange(case: Case, use_chunked: bool, gz: bool) -> None:
    req_wire, resp_wire = wires(case, use_chunked, gz)
    req, resp = exchange([(False, req_wire), (True, resp_wire)])
    assert req.body == case.request and resp.body == case.response
    check(case, req, resp)


@settings(max_examples=150, deadline=None)
@given(case=st.sampled_from(CASES), use_chunked=st.booleans(), gz=st.booleans(), data=st.data())
def test_provider_exchange_split_anywhere(case: Case, use_chunked: bool, gz: bool,
                                          data: st.DataObject) -> None:
    req_wire, resp_wire = wires(case, use_chunked, gz)
    whole = exchange([(False, req_wire), (True, resp_wire)])
    chunks = [(False, p) for p in split(req_wire, data.draw(cuts_for(req_wire)))]
    chunks += [(True, p) for p in split(resp_wire, data.draw(cuts_for(resp_wire)))]
    pieces = exchange(chunks)
    assert pieces == whole
    assert [m.wire_len for m in pieces] == [len(req_wire), len(resp_wire)]
    check(case, *pieces)


def test_two_exchanges_on_one_keep_alive_stream() -> None:
    first_req, first_resp = wires(ANTHROPIC_SSE, use_chunked=True, gz=False)
    second_req, second_resp = wires(OPENAI_CHAT_JSON, use_chunked=False, gz=True)
    req1, resp1, req2, resp2 = exchange(
        [(False, first_req), (True, first_resp), (False, second_req), (True, second_resp)])
    check(ANTHROPIC_SSE, req1, resp1)
    check(OPENAI_CHAT_JSON, req2, resp2)


def test_pipelined_requests_pair_with_responses_in_order() -> None:
    req_a, resp_a = wires(GEMINI_JSON, False, False)
    req_b, resp_b = wires(OPENAI_RESPONSES_SSE, True, True)
    req1, req2, resp1, resp2 = exchange([(False, req_a + req_b), (True, resp_a + resp_b)])
    check(GEMINI_JSON, req1, resp1)
    check(OPENAI_RESPONSES_SSE, req2, resp2)


# --- request recognition ----------------------------------------------------------------------


def post(path: str, body: Any = None, method: str = "POST") -> HttpMessage:
    return HttpMessage(is_request=True, method=method, path=path,
                       body=js(body) if body is not None else b"")


@pytest.mark.parametrize("path, body, want", [
    ("/v1/messages", {"model": "claude-3-5-haiku-latest"}, ("claude-3-5-haiku-latest", False)),
    ("/anthropic/v1/messages?beta=true", {"model": "m", "stream": True}, ("m", True)),
    ("/openai/v1/chat/completions", {"model": "llama-3.3-70b"}, ("llama-3.3-70b", False)),
    ("/api/v1/chat/completions", {"model": "x/y", "stream": True}, ("x/y", True)),
    ("/chat/completions", {"model": "deepseek-chat"}, ("deepseek-chat", False)),
    ("/v1/completions", {"model": "gpt-3.5-turbo-instruct"}, ("gpt-3.5-turbo-instruct", False)),
    ("/openai/deployments/prod-gpt4o/chat/completions?api-version=2024-10-21", {"messages": []},
     ("prod-gpt4o", False)),
    ("/openai/deployments/prod-gpt4o/chat/completions?api-version=2024-10-21",
     {"model": "gpt-4o", "stream": True}, ("gpt-4o", True)),
    ("/openai/responses?api-version=2025-03-01-preview", {"model": "o3"}, ("o3", False)),
    ("/v1beta/models/gemini-2.0-flash:generateContent?key=AIzaXYZ", {}, ("gemini-2.0-flash", False)),
    ("/v1/models/gemini-1.5-pro:streamGenerateContent", {}, ("gemini-1.5-pro", True)),
    ("/v1beta/models/gemini-2.0-flash%3AstreamGenerateContent?alt=sse", {},
     ("gemini-2.0-flash", True)),
    ("/v1/projects/p/locations/us-central1/publishers/google/models/gemini-2.5-pro:generateContent",
     {}, ("gemini-2.5-pro", False)),
    ("/v1/projects/p/locations/us-east5/publishers/anthropic/models/claude-sonnet-4@20250514"
     ":streamRawPredict", {"stream": True}, ("claude-sonnet-4@20250514", True)),
])
def test_request_paths(path: str, body: Any, want: tuple[str, bool]) -> None:
    got = request_facts(post(path, body))
    assert got is not None
    assert (got["model"], got["stream"]) == want
    assert "?" not in got["path"] and "key=" not in got["path"]


@pytest.mark.parametrize("msg", [
    post("/v1/models"),
    post("/v1/messages/count_tokens", {"model": "m"}),
    post("/v1/messages/batches", {"model": "m"}),
    post("/v1/responses/resp_123/cancel"),
    post("/v1/embeddings", {"model": "text-embedding-3-small"}),
    post("/v1beta/models/gemini-2.0-flash:countTokens", {}),
    post("/v1/messages", {"model": "m"}, method="GET"),
    post("/index.html"),
    HttpMessage(is_request=False, status=200),
])
def test_not_llm_requests(msg: HttpMessage) -> None:
    assert request_facts(msg) is None


def test_request_with_bad_json_or_truncated_body() -> None:
    assert request_facts(post("/v1/messages", None)) == {
        "model": None, "stream": False, "path": "/v1/messages"}
    cut = HttpMessage(is_request=True, method="POST", path="/v1/chat/completions",
                      body=b'{"model": "gpt-5", "stream": true, "messages": [{"role": "us',
                      truncated=True)
    assert request_facts(cut) == {"model": "gpt-5", "stream": True, "path": "/v1/chat/completions"}


# --- response edge cases ----------------------------------------------------------------------


def response(body: bytes, content_type: str = "application/json", **kw: Any) -> HttpMessage:
    return HttpMessage(is_request=False, status=200, headers={"content-type": content_type},
                       body=body, **kw)


def test_response_without_request_is_read_by_shape() -> None:
    got = response_facts(response(ANTHROPIC_JSON.response), None)
    assert got == ANTHROPIC_JSON.want_response
    # SSE body on a message built by hand (no .sse list): parsed from the body
    got = response_facts(response(GEMINI_SSE.response, "text/event-stream"), None)
    assert got == GEMINI_SSE.want_response


def test_error_response_reports_request_model_only() -> None:
    req = {"model": "gpt-4o", "stream": True, "path": "/v1/chat/completions"}
    err = response(js({"error": {"message": "Rate limit", "type": "requests", "code": None}}))
    assert response_facts(err, req) == facts("gpt-4o", None, None, None, None, True)
    assert response_facts(err, None) is None


@pytest.mark.parametrize("body", [b"", b"{", b"not json", b"[1, 2", b"\xff\xfe", b"null",
                                  b'{"usage": {"input_tokens": "12", "output_tokens": true}}',
                                  b'{"usage": [], "model": 5}', b"[" * 100000])
def test_malformed_bodies_never_raise(body: bytes) -> None:
    assert response_facts(response(body), None) is None
    assert response_facts(response(body, "text/event-stream"), None) is None


def test_truncated_json_array_keeps_complete_elements() -> None:
    cut = GEMINI_ARRAY.response[: GEMINI_ARRAY.response.rindex(b"{")]
    got = response_facts(response(cut), None)
    assert got == facts("gemini-2.5-flash", 8, 3, 4, None, True)


def test_undecoded_body_gives_request_facts_only() -> None:
    req = {"model": "claude-x", "stream": False, "path": "/v1/messages"}
    msg = response(b"\x0b\x02\x80", undecoded=True)
    assert response_facts(msg, req) == facts("claude-x", None, None, None, None, False)


def test_cut_short_sse_still_reports_what_arrived() -> None:
    req_wire, resp_wire = wires(ANTHROPIC_SSE, use_chunked=True, gz=False)
    stream = HttpStream()
    [req] = stream.feed(False, req_wire, 1)
    stop = resp_wire.index(b"event: message_delta")
    assert stream.feed(True, resp_wire[:stop], 2) == []
    [resp] = stream.close()
    assert not resp.complete
    got = response_facts(resp, request_facts(req))
    assert got == facts("claude-opus-4-1-20250805", 25, 1, 0, 1500, True)


@given(st.binary(max_size=500), st.sampled_from(["application/json", "text/event-stream", ""]))
def test_random_response_bodies_never_raise(body: bytes, content_type: str) -> None:
    response_facts(response(body, content_type), None)
    request_facts(HttpMessage(is_request=True, method="POST", path="/v1/messages", body=body))


def test_parse_sse_is_exported_here() -> None:
    assert parse_sse("event: a\ndata: 1\n\n") == [SseEvent("a", "1")]
