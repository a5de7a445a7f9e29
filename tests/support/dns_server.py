"""A local DNS server for tests (dnslib, UDP and TCP on <addr>:53), and a way to point real
resolver clients at it without touching the host: run them in a private mount namespace whose
/etc/resolv.conf is a bind-mounted file naming the test server.

    with dns_server({"api.openai.com": ["127.0.0.9", "::1"]}) as dns:
        subprocess.run(dns.command(["getent", "ahosts", "api.openai.com"]))

glibc's getaddrinfo() then sends the A and AAAA queries together with sendmmsg() on a
connected UDP socket (or over TCP with `use_vc=True`, resolv.conf's `options use-vc`).
"""

from __future__ import annotations

import contextlib
import random
import socket
import socketserver
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

QUIET = "-recv,-send,-request,-reply,-truncated,-error,-data"


@dataclass
class Zone:
    """Names → addresses (A for IPv4, AAAA for IPv6) and names → CNAME targets."""

    addresses: dict[str, list[str]]
    cnames: dict[str, str] = field(default_factory=dict)
    queries: list[tuple[str, str]] = field(default_factory=list)  # (name, qtype) as received

    def resolve(self, request: Any, handler: Any) -> Any:
        from dnslib import AAAA, CNAME, QTYPE, RR, A

        reply = request.reply()
        name = str(request.q.qname).rstrip(".").lower()
        qtype = QTYPE[request.q.qtype]
        self.queries.append((name, qtype))
        owner = name
        for _ in range(8):  # follow CNAMEs inside the zone
            target = self.cnames.get(owner)
            if target is None:
                break
            reply.add_answer(RR(owner, QTYPE.CNAME, rdata=CNAME(target), ttl=60))
            owner = target
        for addr in self.addresses.get(owner, []):
            if ":" in addr and qtype in ("AAAA", "ANY"):
                reply.add_answer(RR(owner, QTYPE.AAAA, rdata=AAAA(addr), ttl=60))
            elif ":" not in addr and qtype in ("A", "ANY"):
                reply.add_answer(RR(owner, QTYPE.A, rdata=A(addr), ttl=60))
        return reply


@dataclass
class DnsServer:
    addr: str
    zone: Zone
    resolv_conf: Path
    tcp_resolv_conf: Path

    def command(self, argv: list[str], use_vc: bool = False) -> list[str]:
        """argv run with /etc/resolv.conf pointing at this server (a private mount namespace)."""
        conf = self.tcp_resolv_conf if use_vc else self.resolv_conf
        script = 'mount --bind "$0" /etc/resolv.conf && exec "$@"'
        return ["unshare", "-m", "--propagation", "private", "sh", "-c", script, str(conf), *argv]


def _free_address() -> str:
    """A 127.53.x.y address whose port 53 (UDP and TCP) is free: other suites run in parallel."""
    for _ in range(50):
        addr = f"127.53.{random.randint(0, 255)}.{random.randint(1, 254)}"
        ok = True
        for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
            with socket.socket(socket.AF_INET, kind) as s:
                try:
                    s.bind((addr, 53))
                except OSError:
                    ok = False
        if ok:
            return addr
    raise RuntimeError("no free 127.53.x.y:53")


class _TcpHandler(socketserver.BaseRequestHandler):
    """DNS over TCP, several queries per connection (glibc's use-vc pipelines A and AAAA;
    dnslib's own TCP handler answers one and closes)."""

    def handle(self) -> None:
        from dnslib import DNSRecord

        sock: socket.socket = self.request
        buf = b""
        while True:
            while len(buf) < 2 or len(buf) < 2 + int.from_bytes(buf[:2], "big"):
                chunk = sock.recv(65536)
                if not chunk:
                    return
                buf += chunk
            size = int.from_bytes(buf[:2], "big")
            msg, buf = buf[2:2 + size], buf[2 + size:]
            reply = self.server.zone.resolve(DNSRecord.parse(msg), None).pack()  # type: ignore[attr-defined]
            sock.sendall(len(reply).to_bytes(2, "big") + reply)


class _TcpServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


@contextlib.contextmanager
def dns_server(addresses: dict[str, list[str]], cnames: dict[str, str] | None = None,
               addr: str | None = None) -> Iterator[DnsServer]:
    from dnslib.server import DNSLogger
    from dnslib.server import DNSServer as LibServer

    zone = Zone({k.lower(): v for k, v in addresses.items()},
                {k.lower(): v.lower() for k, v in (cnames or {}).items()})
    addr = addr or _free_address()
    udp = LibServer(zone, address=addr, port=53, logger=DNSLogger(QUIET, False)).server
    tcp = _TcpServer((addr, 53), _TcpHandler)
    tcp.zone = zone  # type: ignore[attr-defined]
    for server in (udp, tcp):
        threading.Thread(target=server.serve_forever, daemon=True).start()
    tmp = Path(tempfile.mkdtemp(prefix="obs-dns-"))
    conf, tcp_conf = tmp / "resolv.conf", tmp / "resolv-tcp.conf"
    conf.write_text(f"nameserver {addr}\noptions timeout:2 attempts:1\n")
    tcp_conf.write_text(f"nameserver {addr}\noptions timeout:2 attempts:1 use-vc\n")
    try:
        yield DnsServer(addr, zone, conf, tcp_conf)
    finally:
        for server in (udp, tcp):
            server.shutdown()
            server.server_close()
