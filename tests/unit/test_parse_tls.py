"""TLS ClientHello parsing: real hellos from Python's ssl, hand-built big and split ones."""

from __future__ import annotations

import ssl

import pytest
from hypothesis import given
from hypothesis import strategies as st

from libobs.net.clienthello import is_client_hello, parse_sni


def real_hello(server_hostname: str) -> bytes:
    """The bytes OpenSSL writes first when connecting: a genuine ClientHello record."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    conn = ssl.create_default_context().wrap_bio(
        incoming, outgoing, server_hostname=server_hostname
    )
    with pytest.raises(ssl.SSLWantReadError):
        conn.do_handshake()
    return outgoing.read()


def vec(width: int, body: bytes) -> bytes:
    return len(body).to_bytes(width, "big") + body


def ext(ext_type: int, body: bytes) -> bytes:
    return ext_type.to_bytes(2, "big") + vec(2, body)


def sni_ext(name: bytes, name_type: int = 0) -> bytes:
    return ext(0, vec(2, bytes([name_type]) + vec(2, name)))


def hello_message(extensions: bytes) -> bytes:
    """A ClientHello handshake message (type + 3-byte length + body)."""
    body = (
        b"\x03\x03"
        + bytes(range(32))  # random
        + vec(1, bytes(32))  # legacy_session_id
        + vec(2, b"\x13\x01\x13\x02\x13\x03")  # cipher_suites
        + vec(1, b"\x00")  # compression: null
        + vec(2, extensions)
    )
    return b"\x01" + vec(3, body)


def records(message: bytes, sizes: list[int] | None = None, version: int = 0x0301) -> bytes:
    """Wrap a handshake message in TLS records, fragmenting at the given sizes."""
    out, pos = b"", 0
    for size in [*(sizes or []), len(message)]:
        fragment = message[pos : pos + size]
        if fragment:
            out += b"\x16" + version.to_bytes(2, "big") + vec(2, fragment)
        pos += len(fragment)
    return out


def big_hello(name: bytes = b"api.anthropic.com") -> bytes:
    """Post-quantum sized: X25519MLKEM768 key_share and padding before server_name."""
    key_share = ext(51, vec(2, b"\x11\xec" + vec(2, bytes(1216))))
    supported_versions = ext(43, vec(1, b"\x03\x04\x03\x03"))
    padding = ext(21, bytes(300))
    return hello_message(supported_versions + key_share + padding + sni_ext(name))


def end_of(name: bytes, data: bytes) -> int:
    """Offset just past `name` in `data`: any prefix at least this long holds the whole SNI."""
    return data.index(name) + len(name)


# -- real hellos ---------------------------------------------------------------


def test_real_hello_from_openssl() -> None:
    data = real_hello("api.anthropic.com")
    assert is_client_hello(data)
    assert parse_sni(data) == "api.anthropic.com"


def test_real_hello_name_is_lowercased() -> None:
    assert parse_sni(real_hello("API.OpenAI.com")) == "api.openai.com"


def test_real_hello_without_sni() -> None:
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    conn = ctx.wrap_bio(incoming, outgoing)  # no server_hostname: no server_name extension
    with pytest.raises(ssl.SSLWantReadError):
        conn.do_handshake()
    data = outgoing.read()
    assert is_client_hello(data)
    assert parse_sni(data) is None


def test_every_truncation_of_real_hello() -> None:
    data = real_hello("generativelanguage.googleapis.com")
    end = end_of(b"generativelanguage.googleapis.com", data)
    for n in range(len(data) + 1):
        expected = "generativelanguage.googleapis.com" if n >= end else None
        assert parse_sni(data[:n]) == expected, n


# -- large and fragmented hellos ----------------------------------------------


def test_big_hello_sni_after_byte_512() -> None:
    data = records(big_hello())
    assert len(data) > 1536
    assert data.index(b"api.anthropic.com") > 1200
    assert parse_sni(data) == "api.anthropic.com"


def test_every_truncation_of_big_hello() -> None:
    data = records(big_hello())
    end = end_of(b"api.anthropic.com", data)
    for n in range(len(data) + 1):
        assert parse_sni(data[:n]) == ("api.anthropic.com" if n >= end else None), n


@pytest.mark.parametrize("sizes", [[700], [3], [100, 100, 100], [1, 1, 1, 1, 1], [1250]])
def test_hello_split_across_records(sizes: list[int]) -> None:
    data = records(big_hello(), sizes)
    assert data.count(b"\x16\x03\x01") >= len(sizes) + 1
    assert parse_sni(data) == "api.anthropic.com"


def test_hello_in_one_byte_records() -> None:
    message = big_hello(b"api.openai.com")
    assert parse_sni(records(message, [1] * len(message))) == "api.openai.com"


def test_split_record_truncated_before_sni_is_none() -> None:
    data = records(big_hello(), [600])
    assert parse_sni(data[: data.index(b"api.anthropic.com")]) is None


def test_data_after_the_hello_is_ignored() -> None:
    data = records(big_hello()) + b"\x17\x03\x03\x00\x05hello"
    assert parse_sni(data) == "api.anthropic.com"


@pytest.mark.parametrize("version", [0x0301, 0x0302, 0x0303, 0x0304])
def test_record_versions(version: int) -> None:
    data = records(hello_message(sni_ext(b"api.groq.com")), version=version)
    assert parse_sni(data) == "api.groq.com"


def test_fragment_of_another_content_type_stops_reassembly() -> None:
    message = big_hello()
    first = records(message[:600])
    rest = records(message[600:])
    assert parse_sni(first + b"\x17" + rest[1:]) is None


# -- the server_name extension ---------------------------------------------------


def test_sni_first_host_name_entry_wins() -> None:
    body = vec(2, b"\x00" + vec(2, b"one.example") + b"\x00" + vec(2, b"two.example"))
    assert parse_sni(records(hello_message(ext(0, body)))) == "one.example"


def test_sni_skips_non_host_name_types() -> None:
    body = vec(2, b"\x07" + vec(2, b"junk") + b"\x00" + vec(2, b"api.x.ai"))
    assert parse_sni(records(hello_message(ext(0, body)))) == "api.x.ai"


def test_trailing_dot_is_dropped() -> None:
    assert parse_sni(records(hello_message(sni_ext(b"api.mistral.ai.")))) == "api.mistral.ai"


@pytest.mark.parametrize(
    "name",
    [
        b"",
        b".",
        "bücher.de".encode(),
        b"a" * 254,
        b"has space.com",
        b"evil.com\x00.good.com",
        b"a..b",
        b".leading.dot",
        b"a/b",
        b"x" * 64 + b".com",
    ],
)
def test_invalid_hostnames_are_rejected(name: bytes) -> None:
    assert parse_sni(records(hello_message(sni_ext(name)))) is None


def test_longest_valid_hostname() -> None:
    name = b".".join([b"a" * 63] * 3 + [b"b" * 61])  # 253 characters
    assert parse_sni(records(hello_message(sni_ext(name)))) == name.decode()


def test_underscore_allowed() -> None:
    assert (
        parse_sni(records(hello_message(sni_ext(b"my_host.Example.com")))) == "my_host.example.com"
    )


# -- not a ClientHello -------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x16",
        b"GET / HTTP/1.1\r\nHost: api.openai.com\r\n\r\n",
        b"\x16\x03\x01\x00\x00",  # empty record
        b"\x16\x02\x00\x00\x04\x01\x00\x00\x00",  # not TLS 1.x
        b"\x16\x03\x05\x00\x04\x01\x00\x00\x00",  # unknown minor version
    ],
)
def test_not_a_hello(data: bytes) -> None:
    assert parse_sni(data) is None


def test_server_hello_is_not_a_client_hello() -> None:
    data = records(b"\x02" + hello_message(sni_ext(b"api.x.ai"))[1:])
    assert not is_client_hello(data)
    assert parse_sni(data) is None


def test_is_client_hello_cheap_check() -> None:
    assert is_client_hello(b"\x16\x03\x01\x02\x00\x01")
    assert not is_client_hello(b"\x16\x03\x01\x02\x00")
    assert not is_client_hello(b"\x17\x03\x01\x02\x00\x01")
    assert not is_client_hello(b"\x16\x02\x01\x02\x00\x01")


def test_oversized_record_length_is_rejected() -> None:
    data = records(big_hello())
    assert parse_sni(b"\x16\x03\x01\x40\x01" + data[5:]) is None  # 2^14 + 1


# -- property tests ------------------------------------------------------------


@given(st.binary(max_size=4096))
def test_random_bytes_never_raise(data: bytes) -> None:
    result = parse_sni(data)
    assert result is None or isinstance(result, str)
    is_client_hello(data)


@given(st.binary(max_size=600))
def test_random_bytes_after_a_hello_header_never_raise(tail: bytes) -> None:
    result = parse_sni(b"\x16\x03\x01" + vec(2, b"\x01" + vec(3, tail)))
    assert result is None or isinstance(result, str)


REAL = real_hello("api.anthropic.com")
BIG = records(big_hello(), [700])


@given(st.sampled_from([REAL, BIG]), st.data())
def test_mutated_hellos_never_raise(data: bytes, draw: st.DataObject) -> None:
    mutated = bytearray(data)
    for _ in range(draw.draw(st.integers(1, 8))):
        pos = draw.draw(st.integers(0, len(mutated) - 1))
        mutated[pos] = draw.draw(st.integers(0, 255))
    cut = draw.draw(st.integers(0, len(mutated)))
    result = parse_sni(bytes(mutated[:cut]))
    assert result is None or (isinstance(result, str) and result == result.lower())


@given(st.sampled_from([REAL, BIG]), st.integers(0, 5000))
def test_truncated_hellos_give_none_or_the_name(data: bytes, cut: int) -> None:
    assert parse_sni(data[:cut]) in (None, "api.anthropic.com")
