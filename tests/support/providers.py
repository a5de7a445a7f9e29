"""Small provider tables for tests, built with the real classifier (libobs.providers)."""

from __future__ import annotations

from libobs.providers import Rule, Rules


def small_rules(table: dict[str, list[str]]) -> Rules:
    """{provider: [hostname suffixes]} → Rules, in the given order."""
    return Rules(tuple(Rule(p, h, False) for p, hosts in table.items() for h in hosts))
