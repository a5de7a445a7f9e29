"""Credential redaction: secrets go, every other byte stays."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from libobs.tls import redact as R
from libobs.tls.redact import redact

OPENAI_KEY = b"sk-proj-" + b"Ab3_-xYz" * 20
ANTHROPIC_KEY = b"sk-ant-api03-" + b"Qw9-Er7_Ty" * 9 + b"-AA"
GOOGLE_KEY = b"AIzaSyD" + b"x1-_Z" * 6 + b"ab"
assert len(GOOGLE_KEY) == 4 + 35

REQUEST = (
    b"POST /v1/chat/completions HTTP/1.1\r\n"
    b"Host: api.openai.com\r\n"
    b"Authorization: Bearer " + OPENAI_KEY + b"\r\n"
    b"x-api-key: " + ANTHROPIC_KEY + b"\r\n"
    b"Content-Type: application/json\r\n"
    b"Content-Length: 32\r\n\r\n"
    b'{"model":"gpt-4o","task-id":"sk-"}'
)


def test_openai_bearer_and_anthropic_key_removed_rest_identical() -> None:
    assert redact(REQUEST) == (
        b"POST /v1/chat/completions HTTP/1.1\r\n"
        b"Host: api.openai.com\r\n"
        b"Authorization: Bearer [REDACTED]\r\n"
        b"x-api-key: [REDACTED]\r\n"
        b"Content-Type: application/json\r\n"
        b"Content-Length: 32\r\n\r\n"
        b'{"model":"gpt-4o","task-id":"sk-"}'
    )


@pytest.mark.parametrize("line, want", [
    (b"authorization: Basic dXNlcjpwYXNz", b"authorization: Basic [REDACTED]"),
    (b"AUTHORIZATION:token-without-scheme", b"AUTHORIZATION:[REDACTED]"),
    (b"Proxy-Authorization: Bearer abc def", b"Proxy-Authorization: Bearer [REDACTED]"),
    (b"Api-Key: 0123456789abcdef", b"Api-Key: [REDACTED]"),
    (b"X-Goog-Api-Key: " + GOOGLE_KEY, b"X-Goog-Api-Key: [REDACTED]"),
    (b"Authorization: Bearer", b"Authorization: [REDACTED]"),
    (b"Authorization: ", b"Authorization: "),  # nothing to hide
    (b"X-Authorization-Hint: public", b"X-Authorization-Hint: public"),  # not the header
])
def test_credential_headers(line: bytes, want: bytes) -> None:
    assert redact(b"GET / HTTP/1.1\r\n" + line + b"\r\nHost: h\r\n\r\n") == (
        b"GET / HTTP/1.1\r\n" + want + b"\r\nHost: h\r\n\r\n")


def test_header_at_chunk_start_and_bare_lf() -> None:
    assert redact(b"x-api-key: secret\nnext: 1") == b"x-api-key: [REDACTED]\nnext: 1"


@pytest.mark.parametrize("text, want", [
    (b'{"api_key": "' + OPENAI_KEY + b'"}', b'{"api_key": "[REDACTED]"}'),
    (b"export ANTHROPIC_API_KEY=" + ANTHROPIC_KEY + b"\n", b"export ANTHROPIC_API_KEY=[REDACTED]\n"),
    (b"key " + b"sk-" + b"a" * 16 + b".", b"key [REDACTED]."),
    (b"sk-" + b"a" * 15, b"sk-" + b"a" * 15),  # too short to be a key
    (b"task-" + b"a" * 30, b"task-" + b"a" * 30),  # a word ending in "sk-"
    (b"use-sk-" + b"a" * 30, b"use-sk-" + b"a" * 30),
    (b"google=" + GOOGLE_KEY + b";", b"google=[REDACTED];"),
    (b"AIza" + b"x" * 34 + b"!", b"AIza" + b"x" * 34 + b"!"),  # one short
])
def test_keys_anywhere(text: bytes, want: bytes) -> None:
    assert redact(text) == want


def test_gemini_key_query_parameter() -> None:
    line = (b"POST /v1beta/models/gemini-2.0-flash:streamGenerateContent?alt=sse&key=my-key_123"
            b" HTTP/1.1\r\n")
    assert redact(line) == (b"POST /v1beta/models/gemini-2.0-flash:streamGenerateContent"
                            b"?alt=sse&key=[REDACTED] HTTP/1.1\r\n")
    url = b"https://generativelanguage.googleapis.com/v1/models/g:generateContent?key=" + GOOGLE_KEY
    assert redact(url + b"&x=1") == url[: url.index(b"key=") + 4] + b"[REDACTED]&x=1"
    assert redact(b"?monkey=banana&keys=1") == b"?monkey=banana&keys=1"


def test_not_utf8_is_fine_and_untouched() -> None:
    blob = bytes(range(256)) * 4
    assert redact(blob) == blob
    assert redact(b"\xff\xfeAuthorization: \xfa\xfb\r\n") == b"\xff\xfeAuthorization: \xfa\xfb\r\n"
    assert redact(b"\xff\nAuthorization: \xfa\xfb\r\n") == b"\xff\nAuthorization: [REDACTED]\r\n"


def test_adjacent_keys_redacted_in_one_pass() -> None:
    data = GOOGLE_KEY + b"sk-" + b"z" * 20
    once = redact(data)
    assert once == b"[REDACTED][REDACTED]"
    assert redact(once) == once


PIECES = [b"Authorization: ", b"Bearer ", b"x-api-key:", b"\r\n", b"\n", b"\r", b" ", b"sk-",
          b"sk-ant-", b"AIza", b"?key=", b"&key=", b"a" * 16, b"Z9_-" * 5, b"[REDACTED]", b"-",
          b"api-key: ", b"task", b"\xff", b"=", b"&", b"x" * 35]


@given(st.lists(st.one_of(st.sampled_from(PIECES), st.binary(max_size=8)), max_size=30))
def test_idempotent_on_key_like_soup(parts: list[bytes]) -> None:
    data = b"".join(parts)
    once = redact(data)
    assert redact(once) == once


@given(st.binary(max_size=2000))
def test_random_bytes_never_raise_and_idempotent(data: bytes) -> None:
    once = redact(data)
    assert redact(once) == once
    if b"-" not in data and b"=" not in data and b":" not in data and b"AIza" not in data:
        assert once == data


def every_rule(data: bytes) -> bytes:
    """redact without the substring checks that skip rules: the checks may only save time."""
    data = R._HEADER.sub(R._header_value, data)
    data = R._GOOGLE_KEY.sub(R.REDACTED, data)
    data = R._KEY_PARAM.sub(rb"\1" + R.REDACTED, data)
    return R._SK_KEY.sub(R._sk_key, data)


@given(st.lists(st.one_of(st.sampled_from(PIECES + [b"KEY=", b"Api-Key: ", b"AUTHORIZATION:"]),
                          st.binary(max_size=8)), max_size=30))
def test_checks_skip_only_rules_that_match_nothing(parts: list[bytes]) -> None:
    data = b"".join(parts)
    assert redact(data) == every_rule(data)
