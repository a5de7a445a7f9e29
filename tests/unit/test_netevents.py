"""Records of bpf/net.bpf.c decoded, and the Egress / Dns / LlmCall decoders fed with packed
records (no root): the hold-until-ClientHello policy, the DNS join and timeout."""

from __future__ import annotations

import ipaddress
import socket
import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from libobs.events import Clock
from libobs.kernel.records import HDR
from libobs.net.decode import (
    CONN,
    K_CONNECT,
    K_DATA,
    K_DNS,
    K_HELLO,
    K_SEND,
    K_STATE,
    PAYLOAD,
    PAYLOAD_DATA,
    TCP,
    Connect,
    NetDecoder,
    Payload,
    TcpRec,
    decode,
    peer,
)
from libobs.net.llmcalls import LlmCallDecoder
from libobs.providers import load_rules
from tests.unit.test_parse_tls import real_hello as build_client_hello

MS = 1_000_000
RULES = load_rules()
PID = 4242


class FakeIds:
    def of(self, h):
        return ({"agent": "a", "task": str(h.pid), "session": None},
                {"pid": h.pid, "ppid": h.ppid, "comm": "c", "uid": 0, "cgroup_id": 1,
                 "container_id": None, "pod_uid": None})


def hdr(kind: int, ts: int, pid: int = PID) -> bytes:
    return HDR.pack(kind, pid, pid, 1, 0, 0, pid, 0, ts, 1, 0, b"agent")


def sockaddr(addr: str, port: int) -> tuple[bytes, int, int]:
    ip = ipaddress.ip_address(addr)
    raw_port = struct.unpack("<H", struct.pack(">H", port))[0]
    family = socket.AF_INET if ip.version == 4 else socket.AF_INET6
    return ip.packed.ljust(16, b"\0"), family, raw_port


def connect_rec(ts: int, sk: int, addr: str, port: int, tcp: bool = True, state: int = 1,
                fd: int = 5) -> bytes:
    a, family, p = sockaddr(addr, port)
    return hdr(K_CONNECT, ts) + CONN.pack(fd, 0, sk, a, family, p, 1 if tcp else 2, state, )


def payload_rec(kind: int, ts: int, sk: int, data: bytes, out: bool = True, tcp: bool = False,
                addr: str = "127.0.0.53", port: int = 53, fd: int = 5, pid: int = PID) -> bytes:
    a, family, p = sockaddr(addr, port)
    return (hdr(kind, ts, pid)
            + PAYLOAD.pack(fd, len(data), sk, len(data), 0 if out else 1, 1 if tcp else 2, a,
                           family, p) + data)


def tcp_rec(kind: int, ts: int, sk: int, length: int, seq: int = 0, ack: int = 0,
            head: bytes | None = None, ts_start: int = 0) -> bytes:
    return TCP.pack(kind, length, ts, sk, ts_start, seq, ack, 1 if head else 0,
                    (head or b"").ljust(16, b"\0"))


def net(**kw) -> NetDecoder:
    return NetDecoder(Clock(0), "h", RULES, identities=FakeIds(), **kw)  # type: ignore[arg-type]


def run(dec, *records):
    return [e for r in records for e in dec(r)]


def test_layouts_match_the_c_structs():
    assert HDR.size == 72 and CONN.offset == PAYLOAD.offset == 72 and TCP.offset == 0
    assert CONN.size == 48 and PAYLOAD_DATA == 120 and TCP.size == 64


def test_peer_formats_v4_v6_and_mapped():
    assert peer(2, bytes([10, 0, 0, 1]) + bytes(12), 0xBB01) == peer(
        10, ipaddress.IPv6Address("::ffff:10.0.0.1").packed, 0xBB01)
    p = peer(10, ipaddress.IPv6Address("::1").packed, 0xBB01)
    assert p is not None and (p.addr, p.port, p.family) == ("::1", 443, "ipv6")
    assert peer(1, bytes(16), 0) is None


def test_decode_round_trip():
    c = decode(connect_rec(5, 0xAB, "::1", 443))
    assert isinstance(c, Connect) and c.peer.addr == "::1" and c.peer.port == 443
    assert c.proto == "tcp" and c.sk == 0xAB and c.h.pid == PID
    p = decode(payload_rec(K_HELLO, 6, 0xAB, b"\x16\x03\x01", addr="1.2.3.4", port=443))
    assert isinstance(p, Payload) and p.data == b"\x16\x03\x01" and p.outgoing
    t = decode(tcp_rec(K_SEND, 7, 0xAB, 100, seq=5, head=b"\x17\x03\x03"))
    assert isinstance(t, TcpRec) and t.head is not None and t.head[:3] == b"\x17\x03\x03"
    assert decode(b"") is None and decode(b"\x63\0\0\0" + bytes(100)) is None


@settings(max_examples=300)
@given(st.binary(max_size=300))
def test_decode_is_total(raw):
    decode(raw)
    for kind in (K_CONNECT, K_HELLO, K_DNS, K_SEND):  # truncated records of every kind
        decode(kind.to_bytes(4, "little") + raw)


def test_egress_waits_for_the_client_hello():
    dec = net()
    hello = build_client_hello("api.openai.com")
    assert run(dec, connect_rec(10 * MS, 1, "127.0.0.9", 443)) == []
    [e] = run(dec, payload_rec(K_HELLO, 11 * MS, 1, hello, tcp=True, addr="127.0.0.9", port=443))
    assert e["event"]["Egress"] == {"pid": PID, "peer": "127.0.0.9", "port": 443,
                                    "family": "ipv4", "sni": "api.openai.com", "proto": "tcp"}
    assert e["provider"] == "OpenAi" and e["ts"] == 10 * MS
    assert list(dec.tick(float("inf"))) == []


def test_egress_without_write_after_hold_or_close():
    dec = net(hold=0.3)
    run(dec, connect_rec(10 * MS, 1, "10.0.0.1", 80), connect_rec(100 * MS, 2, "10.0.0.2", 80))
    assert list(dec.tick(0.309)) == []
    [e] = list(dec.tick(0.311))
    assert e["event"]["Egress"]["peer"] == "10.0.0.1" and e["event"]["Egress"]["sni"] is None
    [e] = run(dec, tcp_rec(K_STATE, 20 * MS, 2, 7, seq=1))  # closed before any write
    assert e["event"]["Egress"]["peer"] == "10.0.0.2"


def test_egress_in_progress_waits_for_established():
    dec = net(hold=0.3)
    run(dec, connect_rec(10 * MS, 1, "10.0.0.1", 443, state=2))  # SYN_SENT
    assert list(dec.tick(5.0)) == []
    run(dec, tcp_rec(K_STATE, 5000 * MS, 1, 1, seq=2))
    assert list(dec.tick(5.2)) == []
    [e] = run(dec, payload_rec(K_HELLO, 5250 * MS, 1, build_client_hello("x.example"),
                               tcp=True))
    assert e["event"]["Egress"]["sni"] == "x.example" and e["provider"] is None


def test_udp_egress_at_once_and_port_zero_skipped():
    dec = net()
    [e] = run(dec, connect_rec(1, 3, "127.0.0.53", 53, tcp=False))
    assert e["event"]["Egress"]["proto"] == "udp"
    assert run(dec, connect_rec(1, 4, "127.0.0.1", 0, tcp=False)) == []


def dns_query(ident: int, name: str, qtype: int = 1) -> bytes:
    q = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
    return struct.pack(">6H", ident, 0x0100, 1, 0, 0, 0) + q + struct.pack(">2H", qtype, 1)


def dns_answer(ident: int, name: str, addr: str) -> bytes:
    q = dns_query(ident, name)
    head = struct.pack(">6H", ident, 0x8180, 1, 1, 0, 0)
    rr = b"\xc0\x0c" + struct.pack(">HHIH", 1, 1, 60, 4) + ipaddress.IPv4Address(addr).packed
    return head + q[12:] + rr


def test_dns_join_and_timeout():
    dec = net(dns_timeout=2.0)
    out = run(dec, payload_rec(K_DNS, 1 * MS, 0, dns_query(7, "api.anthropic.com")),
              payload_rec(K_DNS, 1 * MS, 0, dns_query(8, "api.anthropic.com", 28)),
              payload_rec(K_DNS, 2 * MS, 0, dns_answer(7, "api.anthropic.com", "1.2.3.4"),
                          out=False))
    [e] = out
    assert e["event"]["Dns"] == {"pid": PID, "query": "api.anthropic.com", "qtype": "A",
                                 "server": "127.0.0.53", "answers": ["1.2.3.4"], "proto": "udp"}
    assert e["provider"] == "Anthropic"
    assert list(dec.tick(1.0)) == []
    [late] = list(dec.tick(2.002))
    assert late["event"]["Dns"]["qtype"] == "AAAA" and late["event"]["Dns"]["answers"] is None


def test_dns_reply_of_another_process_or_name_is_not_joined():
    dec = net()
    run(dec, payload_rec(K_DNS, 1, 0, dns_query(7, "a.example")))
    assert run(dec, payload_rec(K_DNS, 2, 0, dns_answer(7, "a.example", "1.1.1.1"), out=False,
                                pid=PID + 1)) == []
    assert run(dec, payload_rec(K_DNS, 2, 0, dns_answer(7, "b.example", "1.1.1.1"),
                                out=False)) == []
    assert len(list(dec.tick(float("inf")))) == 1


def test_dns_over_tcp_reassembled():
    dec = net()
    q1, q2 = dns_query(1, "t.example"), dns_query(2, "t.example", 28)
    framed = len(q1).to_bytes(2, "big") + q1 + len(q2).to_bytes(2, "big") + q2
    a1 = dns_answer(1, "t.example", "9.9.9.9")
    out = run(dec, payload_rec(K_DNS, 1, 9, framed, tcp=True),
              payload_rec(K_DNS, 2, 9, len(a1).to_bytes(2, "big"), out=False, tcp=True),
              payload_rec(K_DNS, 3, 9, a1, out=False, tcp=True))
    [e] = out
    assert e["event"]["Dns"]["answers"] == ["9.9.9.9"] and e["event"]["Dns"]["proto"] == "tcp"


HELLO_HEAD = bytes.fromhex("160301020001") + bytes(10)
FIN_HEAD = bytes.fromhex("1403030001011703030045") + bytes(5)
APP_HEAD = bytes.fromhex("1703030100") + bytes(11)


def llm(all_tls: bool = False) -> tuple[LlmCallDecoder, list[int]]:
    untracked: list[int] = []
    dec = LlmCallDecoder(Clock(0), "h", RULES, untracked.append, all_tls=all_tls, idle=1.0,
                         identities=FakeIds())  # type: ignore[arg-type]
    return dec, untracked


def llm_connection(dec, sk: int, sni: str, t0: int = 0) -> list[dict]:
    hello = build_client_hello(sni)
    return run(
        dec, connect_rec(t0, sk, "127.0.0.1", 443),
        payload_rec(K_HELLO, t0 + 1, sk, hello, tcp=True, addr="127.0.0.1", port=443),
        tcp_rec(K_SEND, t0 + 2, sk, 517, seq=1517, head=HELLO_HEAD),
        tcp_rec(K_DATA, t0 + MS, sk, 900, seq=5000, ack=1517),
        tcp_rec(K_SEND, t0 + 2 * MS, sk, 80, seq=1597, head=FIN_HEAD),
        tcp_rec(K_SEND, t0 + 3 * MS, sk, 200, seq=1797, head=APP_HEAD, ts_start=t0 + 3 * MS - 5),
        tcp_rec(K_DATA, t0 + 300 * MS, sk, 1000, seq=5900, ack=1797),
        tcp_rec(K_DATA, t0 + 400 * MS, sk, 500, seq=6900, ack=1797),
        tcp_rec(K_STATE, t0 + 500 * MS, sk, 4, seq=1),
    )


def test_llm_call_for_a_provider():
    dec, untracked = llm()
    [e] = llm_connection(dec, 0x10, "api.anthropic.com")
    f = e["event"]["LlmCall"]
    assert f == {"pid": PID, "sni": "api.anthropic.com", "peer": "127.0.0.1", "port": 443,
                 "req_bytes": 200, "resp_bytes": 1500,
                 "latency": {"secs": 0, "nanos": 397 * MS + 5},
                 "ttft": {"secs": 0, "nanos": 297 * MS}, "exchange": 1}
    assert e["provider"] == "Anthropic" and e["ts"] == 3 * MS - 5 and untracked == []
    assert dec.tracked == {}


def test_other_tls_untracked_unless_all_tls():
    dec, untracked = llm()
    assert llm_connection(dec, 0x11, "example.com") == [] and untracked == [0x11]
    dec, untracked = llm(all_tls=True)
    [e] = llm_connection(dec, 0x11, "example.com")
    assert e["provider"] is None and e["event"]["LlmCall"]["sni"] == "example.com"


def test_plaintext_untracked():
    dec, untracked = llm(all_tls=True)
    run(dec, connect_rec(0, 0x12, "127.0.0.1", 80),
        payload_rec(K_HELLO, 1, 0x12, b"GET / HTTP/1.1\r\n\r\n", tcp=True))
    assert untracked == [0x12] and dec.tracked == {}


def test_llm_idle_flush_and_exit_flush():
    dec, _ = llm()
    run(dec, connect_rec(0, 0x13, "127.0.0.1", 443),
        payload_rec(K_HELLO, 1, 0x13, build_client_hello("api.openai.com"), tcp=True),
        tcp_rec(K_SEND, 2, 0x13, 517, seq=1517, head=HELLO_HEAD),
        tcp_rec(K_DATA, MS, 0x13, 900, seq=5000, ack=1517),
        tcp_rec(K_SEND, 2 * MS, 0x13, 80, seq=1597, head=FIN_HEAD),
        tcp_rec(K_SEND, 3 * MS, 0x13, 200, seq=1797, head=APP_HEAD),
        tcp_rec(K_DATA, 100 * MS, 0x13, 1000, seq=5900, ack=1797))
    assert list(dec.tick(0.5)) == []
    [e] = list(dec.tick(1.2))
    assert e["event"]["LlmCall"]["resp_bytes"] == 1000
    run(dec, tcp_rec(K_SEND, 1300 * MS, 0x13, 200, seq=1997, head=APP_HEAD),
        tcp_rec(K_DATA, 1400 * MS, 0x13, 10, seq=6900, ack=1997))
    [e] = list(dec.tick(float("inf")))
    assert e["event"]["LlmCall"]["exchange"] == 2
