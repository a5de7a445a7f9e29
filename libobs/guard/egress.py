"""obs-enforce's kernel interface: map keys and values, rule ids, map plans, and the records the
kernel sends back (Denied events, DNS replies). Layouts come from bpf/enforce.h."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from libobs.events import Clock, envelope
from libobs.guard.policy import IPAddress
from libobs.identity import Identities
from libobs.kernel import layout
from libobs.kernel.records import HDR, KIND, hdr
from libobs.net.dns import DnsAnswer, parse_response

GUARD = "obs-enforce"
DNS_PORT = 53


# ---- records and map entries: bpf/enforce.h ----------------------------------------------
_H = layout.read("enforce.h")
K_DENIED, K_GUARD_DNS = KIND["K_DENIED"], KIND["K_GUARD_DNS"]
RULE_UNCLASSIFIED = _H.constants["RULE_UNCLASSIFIED"]
UNCLASSIFIED = "policy:deny-unclassified"
HDR_SIZE = HDR.size
KEY = _H["addr_key"].unpacker("family", "addr")
VAL = _H["rule_val"].unpacker("rule", "port", "pad")
DENIED = _H["denied_rec"].unpacker("addr", "rule", "port", "hook", "proto")
DNS_HEAD = _H["dns_rec"].unpacker("src", "pad")
DNS_DATA = _H["dns_rec"].offset("data")
NAME_LEN = _H.constants["NAME_LEN"]
NAME_VAL = _H["name_val"].unpacker("rule", "allow", upto=layout.END)
TRUSTED = b"\x01"                          # value in the servers map
TABLES = ("deny", "allow", "names", "servers")
PROTOCOLS = {6: "tcp", 17: "udp"}

Key = tuple[int, bytes]  # (4 | 6, 16 address bytes; IPv4 in the first 4)


def key_of(ip: IPAddress) -> Key:
    """The map key of an address; ::ffff:a.b.c.d is keyed as a.b.c.d, as the kernel does."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if isinstance(ip, ipaddress.IPv4Address):
        return 4, ip.packed + bytes(12)
    return 6, ip.packed


def key_ip(key: Key) -> IPAddress:
    family, addr = key
    if family == 4:
        return ipaddress.IPv4Address(addr[:4])
    return ipaddress.IPv6Address(addr[:16])


def key_bytes(key: Key) -> bytes:
    return KEY.pack(*key)


def wire_name(host: str) -> bytes | None:
    """The names-map key of a normalised hostname: DNS wire format, zero-padded; None if it
    does not fit (such names are matched in user space only)."""
    if not host.isascii():
        return None
    labels = [label.encode("ascii") for label in host.split(".") if label]
    wire = b"".join(bytes([len(lb)]) + lb for lb in labels) + b"\0"
    if any(len(lb) > 63 for lb in labels) or len(wire) > NAME_LEN:
        return None
    return wire.ljust(NAME_LEN, b"\0")


def target(key: Key, port: int) -> str:
    """``ip:port`` as the contract writes it; IPv6 in brackets."""
    ip = key_ip(key)
    return f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}"


@dataclass(frozen=True)
class Rule:
    text: str                     # the deny-file line or policy, as Denied.rule reports it
    provider: str | None = None   # the provider an address belongs to, for the envelope


@dataclass(frozen=True)
class Entry:
    rule: Rule
    port: int = 0                 # 0: any port


class RuleIds:
    """Rule text ↔ the u32 the kernel stores. Ids are never reused within a run, so a record
    written just before a reload still names the rule that refused it."""

    def __init__(self) -> None:
        self._ids: dict[Rule, int] = {Rule(UNCLASSIFIED): RULE_UNCLASSIFIED}
        self._rules: dict[int, Rule] = {RULE_UNCLASSIFIED: Rule(UNCLASSIFIED)}

    def id(self, rule: Rule) -> int:
        rid = self._ids.get(rule)
        if rid is None:
            rid = self._ids[rule] = len(self._ids) + 1
            self._rules[rid] = rule
        return rid

    def rule(self, rid: int) -> Rule:
        return self._rules.get(rid) or Rule(f"rule #{rid} (unknown)")


def plan_maps(
    lines: Iterable[tuple[IPAddress, Rule]],
    unapproved: Iterable[tuple[IPAddress, Rule]],
    approved: Iterable[tuple[IPAddress, Rule]],
    servers: Iterable[tuple[IPAddress, Rule]],
    allow_mode: bool,
) -> tuple[dict[Key, Entry], dict[Key, Entry]]:
    """The deny and allow map contents, by the precedence in the module docstring. Approved
    addresses are in the allow map in both modes: there the kernel's DNS learning sees that
    it must not deny them; only in allow mode do they decide a connect()."""
    deny: dict[Key, Entry] = {}
    for ip, rule in lines:
        deny.setdefault(key_of(ip), Entry(rule))
    allow: dict[Key, Entry] = {}
    for ip, rule in approved:
        allow.setdefault(key_of(ip), Entry(rule))
    for ip, rule in unapproved:
        k = key_of(ip)
        if k not in allow:
            deny.setdefault(k, Entry(rule))
    if allow_mode:
        for ip, rule in servers:
            allow.setdefault(key_of(ip), Entry(rule, DNS_PORT))
    return deny, allow


def plan_names(lines: Iterable[tuple[str, Rule]], providers: Iterable[tuple[str, Rule, bool]],
               allow_mode: bool) -> dict[bytes, tuple[Rule, bool]]:
    """names-map contents: wire name -> (rule, answers go to allow). Deny-file hostnames
    first; approved providers' names only in allow mode (elsewhere allowing is the default)."""
    out: dict[bytes, tuple[Rule, bool]] = {}
    for host, rule in lines:
        if (key := wire_name(host)) is not None:
            out.setdefault(key, (rule, False))
    for host, rule, approved in providers:
        if (key := wire_name(host)) is not None and (allow_mode or not approved):
            out.setdefault(key, (rule, approved))
    return out


def diff(current: Mapping[bytes, bytes], desired: Mapping[bytes, bytes]
         ) -> tuple[dict[bytes, bytes], list[bytes]]:
    """(entries to write, keys to delete) turning ``current`` into ``desired``."""
    upserts = {k: v for k, v in desired.items() if current.get(k) != v}
    return upserts, [k for k in current if k not in desired]


# ---- records from the kernel ---------------------------------------------------------------
@dataclass(frozen=True)
class DnsReply:
    server: IPAddress
    answer: DnsAnswer


def decode_dns(raw: bytes) -> DnsReply | None:
    """A DNS reply copied by the ingress program, or None if it does not parse."""
    if len(raw) < DNS_DATA:
        return None
    family, addr, _ = DNS_HEAD.unpack_from(raw, HDR_SIZE)
    length = hdr(raw).len
    answer = parse_response(raw[DNS_DATA:DNS_DATA + length])
    if answer is None or family not in (4, 6):
        return None
    return DnsReply(key_ip((family, addr)), answer)


def denied_fields(raw: bytes, rule: Rule) -> dict[str, Any]:
    """The ``Denied`` event body of a denied_rec."""
    family, addr, _rid, port, _hook, proto = DENIED.unpack_from(raw, HDR_SIZE)
    return {"pid": hdr(raw).pid, "action": "egress", "target": target((family, addr), port),
            "rule": rule.text, "guard": GUARD, "protocol": PROTOCOLS.get(proto, str(proto))}


class Decoder:
    """Ring-buffer records → Denied events; DNS replies go to ``on_dns`` (no event)."""

    def __init__(self, clock: Clock, host: str, ids: RuleIds,
                 on_dns: Callable[[DnsReply], None], identities: Identities | None = None):
        self.clock, self.host, self.ids, self.on_dns = clock, host, ids, on_dns
        self.identities = identities or Identities()

    def __call__(self, raw: bytes) -> Iterator[dict[str, Any]]:
        if len(raw) < HDR_SIZE:
            return
        h = hdr(raw)
        if h.kind == K_GUARD_DNS:
            reply = decode_dns(raw)
            if reply is not None:
                self.on_dns(reply)
        elif h.kind == K_DENIED and len(raw) >= HDR_SIZE + DENIED.size:
            rule = self.ids.rule(DENIED.unpack_from(raw, HDR_SIZE)[2])
            identity, process = self.identities.of(h)
            yield envelope("Denied", denied_fields(raw, rule), ts=self.clock.wall(h.ts),
                           host=self.host, identity=identity, process=process,
                           provider=rule.provider)
