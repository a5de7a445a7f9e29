"""Hostname -> LLM provider classification; the rules are data (providers.toml).

A rule matches a host at a dot boundary: suffix `openai.com` matches `openai.com` and
`api.openai.com` but not `notopenai.com` or `openai.com.evil.net`. A pattern is a suffix
whose labels may contain `*`, which matches within a single label
(`bedrock-runtime.*.amazonaws.com`). Rules from a user file (`--providers FILE`) take
precedence over the packaged ones; within a file the most specific rule wins.
"""

from __future__ import annotations

import functools
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_PACKAGED = Path(__file__).with_name("providers.toml")
_HOST = re.compile(r"[a-z0-9_-]{1,63}(?:\.[a-z0-9_-]{1,63})*")
_PATTERN = re.compile(r"[a-z0-9_*-]{1,63}(?:\.[a-z0-9_*-]{1,63})*")
_RULE_KEYS = {"name", "suffixes", "patterns"}


class ProvidersError(ValueError):
    """A providers file that cannot be used; the message is one line naming the file."""


@dataclass(frozen=True)
class Rule:
    provider: str
    host: str  # literal suffix, or a pattern when it contains "*"
    user: bool  # from the user's file: beats every packaged rule
    regex: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        body = r"\.".join(re.escape(label).replace(r"\*", "[a-z0-9_-]*") for label in self.labels)
        object.__setattr__(self, "regex", re.compile(r"(?:.+\.)?" + body))

    @property
    def labels(self) -> list[str]:
        return self.host.split(".")

    @property
    def is_pattern(self) -> bool:
        return "*" in self.host

    def precedence(self) -> tuple[bool, int, bool]:
        """Sort key: user rules, then more labels, then literal before pattern."""
        return (not self.user, -len(self.labels), self.is_pattern)


@dataclass(frozen=True)
class Rules:
    rules: tuple[Rule, ...]  # as declared: user file first, then the packaged file
    ordered: tuple[Rule, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # sorted() is stable, so equal rules keep file order: the earlier one wins.
        object.__setattr__(self, "ordered", tuple(sorted(self.rules, key=Rule.precedence)))

    def classify(self, host: str | None) -> str | None:
        """The provider serving `host`, or None (also for anything that is not a hostname)."""
        name = normalize_host(host)
        if name is None:
            return None
        for rule in self.ordered:
            if rule.regex.fullmatch(name):
                return rule.provider
        return None

    def hostnames(self, provider: str) -> list[str]:
        """The provider's literal hostnames that still classify as it (for resolving to IPs)."""
        hosts = [r.host for r in self.rules if r.provider == provider and not r.is_pattern]
        return [h for h in dict.fromkeys(hosts) if self.classify(h) == provider]

    def providers(self) -> list[str]:
        return list(dict.fromkeys(r.provider for r in self.rules))


def normalize_host(host: object) -> str | None:
    """Lowercase ASCII hostname without its trailing dot, or None if `host` is not one."""
    if not isinstance(host, str) or not host.isascii():
        return None  # also refuses Unicode (IDNA) names before lower() could fold them
    name = host.lower().removesuffix(".")
    if len(name) > 253 or not _HOST.fullmatch(name):
        return None
    return name


def load_rules(extra: Path | None = None, replace: bool = False) -> Rules:
    """The packaged rules, with a user file's rules taking precedence (or alone if `replace`)."""
    packaged = [] if extra is not None and replace else _read(_PACKAGED, user=False)
    user = [] if extra is None else _read(extra, user=True)
    return Rules(tuple(user + packaged))


@functools.cache
def default_rules() -> Rules:
    return load_rules()


def classify(host: str | None) -> str | None:
    """Classify with the packaged rules."""
    return default_rules().classify(host)


def _read(path: Path, user: bool) -> list[Rule]:
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as e:
        raise ProvidersError(f"{path}: cannot read: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise ProvidersError(f"{path}: not UTF-8 text") from None
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ProvidersError(f"{path}: invalid TOML: {_one_line(e)}") from None
    return _rules(doc, str(path), user)


def _rules(doc: dict[str, Any], origin: str, user: bool) -> list[Rule]:
    unknown = sorted(set(doc) - {"provider"})
    if unknown:
        raise ProvidersError(f"{origin}: unknown key {unknown[0]!r} (expected [[provider]] tables)")
    tables = doc.get("provider", [])
    if not isinstance(tables, list):
        raise ProvidersError(f"{origin}: 'provider' must be an array of tables ([[provider]])")
    rules: list[Rule] = []
    for number, table in enumerate(tables, 1):
        rules += _table_rules(table, f"{origin}: provider #{number}", user)
    return rules


def _table_rules(table: object, where: str, user: bool) -> list[Rule]:
    if not isinstance(table, dict):
        raise ProvidersError(f"{where}: must be a table")
    unknown = sorted(set(table) - _RULE_KEYS)
    if unknown:
        raise ProvidersError(f"{where}: unknown key {unknown[0]!r}")
    name = table.get("name")
    if not isinstance(name, str) or not name.strip():
        raise ProvidersError(f"{where}: 'name' must be a non-empty string")
    suffixes = _strings(table, "suffixes", f"{where} ({name})")
    patterns = _strings(table, "patterns", f"{where} ({name})")
    if not suffixes and not patterns:
        raise ProvidersError(f"{where} ({name}): needs 'suffixes' or 'patterns'")
    for suffix in suffixes:
        if normalize_host(suffix) is None:
            raise ProvidersError(f"{where} ({name}): {suffix!r} is not a hostname suffix")
    for pattern in patterns:
        if not pattern.isascii() or not _PATTERN.fullmatch(pattern.lower().removesuffix(".")):
            raise ProvidersError(f"{where} ({name}): {pattern!r} is not a hostname pattern")
    hosts = [h.lower().removesuffix(".") for h in suffixes + patterns]
    return [Rule(name, host, user) for host in hosts]


def _strings(table: dict[str, Any], key: str, where: str) -> list[str]:
    value = table.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ProvidersError(f"{where}: {key!r} must be a list of strings")
    return value


def _one_line(error: Exception) -> str:
    return " ".join(str(error).split())
