"""DNS parsing: messages built with dnslib, hand-made hostile ones, random bytes."""

from __future__ import annotations

import struct

import pytest
from dnslib import AAAA, CNAME, MX, QTYPE, RR, A, DNSRecord
from hypothesis import given
from hypothesis import strategies as st

from libobs.net.dns import DnsAnswer, DnsQuery, parse_query, parse_response


def query(name: str = "api.openai.com", qtype: str = "A") -> DNSRecord:
    msg = DNSRecord.question(name, qtype)
    msg.header.id = 0x1234  # fixed, so tests are deterministic
    return msg


def chain_response() -> DNSRecord:
    """api.openai.com -> CNAME -> CNAME -> two A records, compressed by dnslib."""
    reply = query().reply()
    reply.add_answer(
        RR("api.openai.com", QTYPE.CNAME, rdata=CNAME("api.openai.com.cdn.cloudflare.net"))
    )
    reply.add_answer(
        RR("api.openai.com.cdn.cloudflare.net", QTYPE.CNAME, rdata=CNAME("edge.Cloudflare.net."))
    )
    reply.add_answer(RR("edge.cloudflare.net", QTYPE.A, rdata=A("162.159.140.245")))
    reply.add_answer(RR("edge.cloudflare.net", QTYPE.A, rdata=A("172.66.0.243")))
    return reply


CHAIN = chain_response().pack()
CHAIN_ANSWERS = [
    "api.openai.com.cdn.cloudflare.net",
    "edge.cloudflare.net",
    "162.159.140.245",
    "172.66.0.243",
]


def tcp(message: bytes) -> bytes:
    return len(message).to_bytes(2, "big") + message


def header(ident: int, flags: int, qd: int = 1, an: int = 0) -> bytes:
    return struct.pack("!HHHHHH", ident, flags, qd, an, 0, 0)


# -- queries -------------------------------------------------------------------


def test_query_a() -> None:
    msg = query("API.Anthropic.com", "A")
    assert parse_query(msg.pack()) == DnsQuery(msg.header.id, "api.anthropic.com", "A")


@pytest.mark.parametrize("qtype", ["A", "AAAA", "CNAME", "HTTPS", "TXT", "MX"])
def test_query_types(qtype: str) -> None:
    result = parse_query(query("example.com", qtype).pack())
    assert result is not None and result.qtype == qtype


def test_unknown_qtype_is_numeric() -> None:
    msg = header(7, 0x0100) + b"\x07example\x03com\x00" + struct.pack("!HH", 65534, 1)
    assert parse_query(msg) == DnsQuery(7, "example.com", "TYPE65534")


def test_query_over_tcp() -> None:
    msg = query("api.x.ai", "AAAA")
    assert parse_query(tcp(msg.pack()), tcp=True) == DnsQuery(msg.header.id, "api.x.ai", "AAAA")


def test_tcp_flag_matters() -> None:
    assert parse_query(query().pack(), tcp=True) is None  # id read as length, header shifted


def test_tcp_length_shorter_than_header() -> None:
    assert parse_query(b"\x00\x0b" + query().pack(), tcp=True) is None
    assert parse_query(b"\x00", tcp=True) is None


def test_tcp_takes_only_the_first_message() -> None:
    first, second = query("one.example").pack(), query("two.example").pack()
    assert parse_query(tcp(first) + tcp(second), tcp=True) == DnsQuery(0x1234, "one.example", "A")


def test_response_is_not_a_query() -> None:
    assert parse_query(CHAIN) is None


def test_query_without_question() -> None:
    assert parse_query(header(1, 0x0100, qd=0)) is None


def test_root_query() -> None:
    msg = header(9, 0) + b"\x00" + struct.pack("!HH", 2, 1)
    assert parse_query(msg) == DnsQuery(9, ".", "NS")


def test_odd_label_bytes_are_escaped() -> None:
    msg = header(3, 0) + b"\x04a.b\xff\x03com\x00" + struct.pack("!HH", 1, 1)
    assert parse_query(msg) == DnsQuery(3, "a\\046b\\255.com", "A")


def test_every_truncation_of_a_query() -> None:
    data = query("api.deepseek.com", "A").pack()
    for n in range(len(data)):
        assert parse_query(data[:n]) is None, n
    assert parse_query(data) is not None


# -- responses -------------------------------------------------------------------


def test_response_cname_chain() -> None:
    assert parse_response(CHAIN) == DnsAnswer(0x1234, "api.openai.com", "A", CHAIN_ANSWERS)


def test_response_over_tcp() -> None:
    result = parse_response(tcp(CHAIN), tcp=True)
    assert result is not None and result.answers == CHAIN_ANSWERS


def test_response_aaaa() -> None:
    reply = query("api.anthropic.com", "AAAA").reply()
    reply.add_answer(RR("api.anthropic.com", QTYPE.AAAA, rdata=AAAA("2607:6bc0::10")))
    result = parse_response(reply.pack())
    assert result == DnsAnswer(reply.header.id, "api.anthropic.com", "AAAA", ["2607:6bc0::10"])


def test_other_record_types_are_skipped() -> None:
    reply = query("example.com", "MX").reply()
    reply.add_answer(RR("example.com", QTYPE.MX, rdata=MX("mail.example.com")))
    reply.add_answer(RR("example.com", QTYPE.A, rdata=A("192.0.2.1")))
    result = parse_response(reply.pack())
    assert result is not None and result.answers == ["192.0.2.1"]


def test_nxdomain_has_no_answers() -> None:
    reply = query("nope.example").reply()
    reply.header.rcode = 3
    assert parse_response(reply.pack()) == DnsAnswer(reply.header.id, "nope.example", "A", [])


def test_query_is_not_a_response() -> None:
    assert parse_response(query().pack()) is None


def test_truncated_response_keeps_complete_answers() -> None:
    question_end = len(query().pack())
    for n in range(len(CHAIN)):
        result = parse_response(CHAIN[:n])
        if n < question_end:
            assert result is None, n
        else:
            assert result is not None, n
            assert result.answers == CHAIN_ANSWERS[: len(result.answers)], n
    assert parse_response(CHAIN[:-1]).answers == CHAIN_ANSWERS[:3]  # type: ignore[union-attr]


def test_bad_rdlength_for_a_is_skipped() -> None:
    msg = (
        header(5, 0x8180, an=2)
        + b"\x01x\x00\x00\x01\x00\x01"
        + b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x00\x3c\x00\x03\x01\x02\x03"
        + b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x00\x3c\x00\x04\x0a\x00\x00\x01"
    )
    assert parse_response(msg) == DnsAnswer(5, "x", "A", ["10.0.0.1"])


# -- hostile compression -------------------------------------------------------


def test_pointer_to_itself_in_question() -> None:
    msg = header(1, 0x8180) + b"\xc0\x0c" + struct.pack("!HH", 1, 1)
    assert parse_response(msg) is None
    assert parse_query(header(1, 0) + b"\xc0\x0c\x00\x01\x00\x01") is None


def test_two_pointer_cycle() -> None:
    # offset 12: label "a" then pointer to 17; offset 17: pointer back to 12.
    msg = header(1, 0) + b"\x01a\xc0\x11" + b"\x00" + b"\xc0\x0c" + b"\x00\x01\x00\x01"
    assert parse_query(msg) is None


@pytest.mark.timeout(5)
def test_cycle_in_answers_does_not_hang() -> None:
    # the first answer (offset 19) has an owner name that points to itself
    answer = b"\xc0\x13\x00\x05\x00\x01\x00\x00\x00\x3c\x00\x02\xc0\x13"
    msg = header(2, 0x8180, an=0xFFFF) + b"\x01x\x00\x00\x01\x00\x01" + answer * 200
    assert parse_response(msg) == DnsAnswer(2, "x", "A", [])


def test_pointer_past_end() -> None:
    assert parse_query(header(1, 0) + b"\xc0\xff\x00\x01\x00\x01") is None


def test_reserved_label_type() -> None:
    assert parse_query(header(1, 0) + b"\x41a\x00\x00\x01\x00\x01") is None


def test_name_longer_than_255_is_rejected() -> None:
    name = b"\x3f" + b"a" * 63
    msg = header(1, 0) + name * 5 + b"\x00\x00\x01\x00\x01"
    assert parse_query(msg) is None
    ok = header(1, 0) + name * 3 + b"\x3d" + b"a" * 61 + b"\x00\x00\x01\x00\x01"
    assert parse_query(ok) is not None


# -- property tests ------------------------------------------------------------


@given(st.binary(max_size=600), st.booleans())
def test_random_bytes_never_raise(data: bytes, over_tcp: bool) -> None:
    assert parse_query(data, over_tcp) is None or isinstance(parse_query(data, over_tcp), DnsQuery)
    result = parse_response(data, over_tcp)
    assert result is None or isinstance(result, DnsAnswer)


@given(st.binary(max_size=300))
def test_random_bodies_after_a_valid_header_never_raise(body: bytes) -> None:
    parse_query(header(1, 0, qd=1, an=3) + body)
    result = parse_response(header(1, 0x8180, qd=2, an=0xFFFF) + body)
    assert result is None or all(isinstance(a, str) for a in result.answers)


@given(st.data())
def test_mutated_responses_never_raise(draw: st.DataObject) -> None:
    mutated = bytearray(CHAIN)
    for _ in range(draw.draw(st.integers(1, 6))):
        mutated[draw.draw(st.integers(0, len(mutated) - 1))] = draw.draw(st.integers(0, 255))
    result = parse_response(bytes(mutated))
    assert result is None or isinstance(result, DnsAnswer)
