"""Egress policies: what obs-enforce asks before letting a connection through.

obs-enforce asks ``egress`` and gets a ``Verdict``; a denial becomes a ``Denied`` event whose
``rule`` is ``Verdict.rule`` and whose ``guard`` is ``Verdict.guard``. (obs-fileguard matches
paths itself, by inode: libobs/guard/fileguard.py.)

- ``DenyListPolicy``: the deny-files. Hostname rules are resolved (A and AAAA) when the policy
  is built, so the kernel can block their addresses; ``ip_rules()`` is what goes into the map.
- ``ProviderPolicy``: only the listed LLM providers may be reached, classified by hostname
  (SNI, DNS) through ``libobs.providers``; DNS answers fed to ``learn()`` let a bare
  connect(ip) be attributed to the hostname that resolved to it.
"""

from __future__ import annotations

import ipaddress
import socket
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

from libobs.guard.denyfile import EgressRule, LineError, normalise_host

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str], Iterable[IPAddress]]
DEFAULT_GUARD = "obs-enforce"


@dataclass(frozen=True)
class Verdict:
    allow: bool
    rule: str | None  # the deny-file line or policy description that decided, if any
    guard: str


class ProviderRules(Protocol):
    """The part of ``libobs.providers.Rules`` a ProviderPolicy uses."""

    def classify(self, host: str) -> str | None: ...

    def hostnames(self, provider: str) -> list[str]: ...

    def providers(self) -> list[str]: ...


def resolve(host: str) -> list[IPAddress]:
    """A and AAAA records of ``host`` via getaddrinfo; OSError if it does not resolve."""
    infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    seen: dict[IPAddress, None] = {}
    for _family, _type, _proto, _canon, sockaddr in infos:
        # IPv6 sockaddr text may carry a %zone for link-local answers; the address is before it.
        seen.setdefault(ipaddress.ip_address(str(sockaddr[0]).split("%")[0]), None)
    return list(seen)


def _host_key(host: str) -> str | None:
    try:
        return normalise_host(host)
    except ValueError:
        return None


class DenyListPolicy:
    """Deny what the egress deny-file lists; allow everything else."""

    def __init__(
        self,
        egress: Iterable[EgressRule] = (),
        *,
        resolver: Resolver = resolve,
        guard: str = DEFAULT_GUARD,
    ) -> None:
        self.guard = guard
        self._ips: dict[IPAddress, str] = {}
        self._hosts: dict[str, str] = {}
        self.resolve_errors: list[LineError] = []
        rules = list(egress)
        for rule in rules:  # literal addresses first, so they name themselves in ip_rules()
            if rule.kind == "ip" and not isinstance(rule.value, str):
                self._ips.setdefault(rule.value, rule.line)
        for rule in rules:
            if rule.kind == "host" and isinstance(rule.value, str):
                self._hosts.setdefault(rule.value, rule.line)
                self._add_resolved(rule, resolver)

    def _add_resolved(self, rule: EgressRule, resolver: Resolver) -> None:
        try:
            addresses = list(resolver(str(rule.value)))
        except (OSError, UnicodeError) as e:
            # The name still matches by SNI/DNS; only its addresses are unknown for now.
            self.resolve_errors.append(LineError(rule.lineno, rule.line, f"cannot resolve: {e}"))
            return
        for ip in addresses:
            self._ips.setdefault(ip, rule.line)

    def ip_rules(self) -> set[tuple[IPAddress, str]]:
        """Every address to block in the kernel, with the deny-file line it came from."""
        return set(self._ips.items())

    def _deny(self, line: str | None) -> Verdict:
        return Verdict(allow=line is None, rule=line, guard=self.guard)

    def egress(self, ip: IPAddress, port: int, host: str | None) -> Verdict:
        line = self._ips.get(ip)
        if line is None and host is not None:
            key = _host_key(host)
            line = self._hosts.get(key) if key else None
        return self._deny(line)


class ProviderPolicy:
    """Allow egress only to the allowed LLM providers (and, optionally, to unclassified hosts)."""

    def __init__(
        self,
        allow: Iterable[str],
        deny_unclassified: bool,
        rules: ProviderRules,
        *,
        guard: str = DEFAULT_GUARD,
        max_learned: int = 65536,
    ) -> None:
        known = {name.casefold(): name for name in rules.providers()}
        unknown = sorted(a for a in allow if a.casefold() not in known)
        if unknown:
            # A typo here would silently deny the provider the user meant to allow.
            raise ValueError(
                f"unknown provider(s) {', '.join(unknown)}; "
                f"known: {', '.join(sorted(known.values()))}"
            )
        self.allowed = frozenset(known[a.casefold()] for a in allow)
        self.deny_unclassified = deny_unclassified
        self.guard = guard
        self._rules = rules
        self._max_learned = max_learned
        self._learned: OrderedDict[IPAddress, str] = OrderedDict()

    def learn(self, host: str, addresses: Iterable[IPAddress | str]) -> None:
        """Remember that ``host`` resolved to ``addresses`` (non-address answers are skipped)."""
        key = _host_key(host)
        if key is None:
            return
        for addr in addresses:
            try:
                ip = addr if not isinstance(addr, str) else ipaddress.ip_address(addr)
            except ValueError:
                continue  # a CNAME target or other non-address answer
            self._learned[ip] = key
            self._learned.move_to_end(ip)
        while len(self._learned) > self._max_learned:
            self._learned.popitem(last=False)

    def host_for(self, ip: IPAddress) -> str | None:
        host = self._learned.get(ip)
        if host is not None:
            self._learned.move_to_end(ip)
        return host

    def egress(self, ip: IPAddress, port: int, host: str | None) -> Verdict:
        key = _host_key(host) if host else None
        key = key or self.host_for(ip)
        provider = self._rules.classify(key) if key else None
        if provider is None:
            if self.deny_unclassified:
                return Verdict(False, "policy:deny-unclassified", self.guard)
            return Verdict(True, None, self.guard)
        if provider in self.allowed:
            return Verdict(True, f"provider:{provider} allowed", self.guard)
        return Verdict(False, f"provider:{provider} not allowed", self.guard)

    def unapproved_hostnames(self) -> list[str]:
        """Hostnames of every known provider that is not allowed, to resolve up front."""
        names: dict[str, None] = {}
        for provider in self._rules.providers():
            if provider not in self.allowed:
                names.update(dict.fromkeys(self._rules.hostnames(provider)))
        return list(names)
