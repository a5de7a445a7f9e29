"""docs/events.md read as data, and events checked against it.

`load()` parses every `### Name` section's `| field | type | meaning |` table into
{name: {field: Spec}} ("Envelope", "Summary" and one per event kind). `Contract.check_event`
and `check_summary` raise an AssertionError naming the kind and the field that does not match,
and can record what they saw (`Seen`) so a test can ask whether every documented field, every
null and every absence was witnessed.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

DOC = Path(__file__).resolve().parents[2] / "docs" / "events.md"
_HEADING = re.compile(r"^###\s+(\S+)\s*$")
_ROW = re.compile(r"^\|(.+)\|\s*$")
_BASE = re.compile(r"^(int|number|str|bool|duration|object|\[(?:str|int|object)\]|\{str: int\})$")
_NS = 1_000_000_000


class ContractError(AssertionError):
    """An event that docs/events.md does not allow."""


@dataclass(frozen=True)
class Spec:
    type: str         # the type without "?": int, str, [str], {str: int}, duration, object, ...
    nullable: bool    # "?": the value may be null
    optional: bool    # the meaning opens with "(tools or modes)": absent elsewhere
    meaning: str


def _cell(text: str) -> str:
    return text.strip().strip("`").strip()


def parse(text: str) -> dict[str, dict[str, Spec]]:
    """{section: {field path: Spec}} for every `###` section holding a field table."""
    tables: dict[str, dict[str, Spec]] = {}
    name: str | None = None
    for lineno, line in enumerate(text.splitlines(), 1):
        if m := _HEADING.match(line):
            name = m.group(1)
            continue
        if line.startswith("#"):
            name = None
            continue
        row = _ROW.match(line)
        if name is None or row is None:
            continue
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", row.group(1))]
        if len(cells) != 3:
            raise ValueError(f"docs/events.md:{lineno}: a field row has 3 cells, not {len(cells)}")
        path, typ, meaning = (_cell(c) for c in cells)
        if path == "field" or set(path) <= {"-"}:
            continue  # the table's head and rule
        nullable = typ.endswith("?")
        base = typ.removesuffix("?")
        if not _BASE.match(base):
            raise ValueError(f"docs/events.md:{lineno}: {name}.{path}: unknown type {typ!r}")
        table = tables.setdefault(name, {})
        if path in table:
            raise ValueError(f"docs/events.md:{lineno}: {name}.{path} is listed twice")
        table[path] = Spec(base, nullable, meaning.startswith("("), meaning)
    for name, table in tables.items():  # a nested row needs its parent's object row
        for path in table:
            parent = _parent(path)
            if parent is None:
                continue
            want = "[object]" if parent.endswith("[]") else "object"
            got = table.get(parent.removesuffix("[]"))
            if got is None or got.type != want:
                raise ValueError(f"docs/events.md: {name}.{path}: no `{want}` row for {parent}")
    return tables


def _parent(path: str) -> str | None:
    """"a.b" → "a", "a[].b" → "a[]", "a" → None."""
    head, dot, _ = path.rpartition(".")
    return head if dot else None


@dataclass
class Seen:
    """What checked values showed, per (section, field path)."""

    present: defaultdict[tuple[str, str], int] = field(default_factory=lambda: defaultdict(int))
    valued: defaultdict[tuple[str, str], int] = field(default_factory=lambda: defaultdict(int))
    null: defaultdict[tuple[str, str], int] = field(default_factory=lambda: defaultdict(int))
    absent: defaultdict[tuple[str, str], int] = field(default_factory=lambda: defaultdict(int))


class Contract:
    def __init__(self, tables: dict[str, dict[str, Spec]]):
        self.tables = tables
        self.kinds = frozenset(tables) - {"Envelope", "Summary"}
        # children of each object path, per section: {"": top level, "identity": [...]}
        self._children: dict[str, dict[str, list[str]]] = {}
        for name, table in tables.items():
            kids: dict[str, list[str]] = defaultdict(list)
            for path in table:
                kids[_parent(path) or ""].append(path)
            self._children[name] = dict(kids)

    def check_event(self, ev: Any, seen: Seen | None = None) -> None:
        """An event object as a tool writes it (parsed JSON)."""
        if not isinstance(ev, dict):
            raise ContractError(f"an event is a JSON object, not {type(ev).__name__}")
        inner = ev.get("event")
        if not isinstance(inner, dict) or len(inner) != 1:
            raise ContractError(f"event: has not exactly one kind under `event`: {inner!r}")
        kind = next(iter(inner))
        self._object("Envelope", "", ev, seen, kind)
        if kind not in self.kinds:
            raise ContractError(f"{kind}: a kind not documented in docs/events.md "
                                 f"(add a `### {kind}` table)")
        if ("process" in ev) == (kind == "CollectorHeartbeat"):
            raise ContractError(f"{kind}: `process` is present on every kind but "
                                 f"CollectorHeartbeat (docs/events.md, `### Envelope`)")
        self._object(kind, "", inner[kind], seen, kind)

    def check_summary(self, obj: Any, seen: Seen | None = None) -> None:
        """obs-merge's --summary JSON object."""
        self._object("Summary", "", obj, seen, "Summary")

    # -- the walk ---------------------------------------------------------------------------
    def _object(self, section: str, at: str, value: Any, seen: Seen | None, where: str) -> None:
        if not isinstance(value, dict):
            raise ContractError(f"{where}: {at or 'the body'} is not an object: {value!r}")
        table = self.tables[section]
        kids = self._children[section].get(at, [])
        names = {p.rsplit(".", 1)[-1]: p for p in kids}
        for key in value:
            if key not in names:
                path = f"{at}.{key}" if at else key
                raise ContractError(
                    f"{where}: field `{path}` is emitted but not documented in "
                    f"docs/events.md (add a row to its `### {section}` table)")
        for key, path in names.items():
            spec = table[path]
            if key not in value:
                if not spec.optional:
                    raise ContractError(f"{where}: documented field `{path}` is missing "
                                         f"(docs/events.md, `### {section}`)")
                if seen is not None:
                    seen.absent[(section, path)] += 1
                continue
            if seen is not None:
                seen.present[(section, path)] += 1
            v = value[key]
            if v is None:
                if not spec.nullable:
                    raise ContractError(f"{where}: `{path}` is null but documented as "
                                         f"`{spec.type}`")
                if seen is not None:
                    seen.null[(section, path)] += 1
                continue
            if seen is not None:
                seen.valued[(section, path)] += 1
            if section == "Envelope" and path == "event":
                continue  # the kind's own table checks its body
            self._value(section, path, spec, v, seen, where)

    def _value(self, section: str, path: str, spec: Spec, v: Any, seen: Seen | None,
               where: str) -> None:
        t = spec.type
        if t == "object":
            self._object(section, path, v, seen, where)
            return
        if t == "[object]":
            if not isinstance(v, list):
                raise ContractError(f"{where}: `{path}` is not a list: {v!r}")
            for item in v:
                self._object(section, path + "[]", item, seen, where)
            return
        if not _is(t, v):
            raise ContractError(f"{where}: `{path}` is {_json_type(v)} {v!r}, documented "
                                 f"as `{t}{'?' if spec.nullable else ''}` in docs/events.md")


def _is_int(v: Any) -> bool:
    return type(v) is int


def _is(t: str, v: Any) -> bool:
    if t == "int":
        return _is_int(v)
    if t == "number":
        return _is_int(v) or type(v) is float
    if t == "str":
        return isinstance(v, str)
    if t == "bool":
        return isinstance(v, bool)
    if t == "duration":
        return (isinstance(v, dict) and set(v) == {"secs", "nanos"} and _is_int(v["secs"])
                and _is_int(v["nanos"]) and v["secs"] >= 0 and 0 <= v["nanos"] < _NS)
    if t == "[str]":
        return isinstance(v, list) and all(isinstance(x, str) for x in v)
    if t == "[int]":
        return isinstance(v, list) and all(_is_int(x) for x in v)
    if t == "{str: int}":
        return isinstance(v, dict) and all(isinstance(k, str) and _is_int(x) for k, x in v.items())
    raise ContractError(f"docs/events.md: no check for type {t!r}")


def _json_type(v: Any) -> str:
    for name, typ in (("a bool", bool), ("an int", int), ("a float", float), ("a string", str),
                      ("a list", list), ("an object", dict)):
        if isinstance(v, typ):
            return name
    return type(v).__name__


@cache
def load(path: Path = DOC) -> Contract:
    return Contract(parse(path.read_text(encoding="utf-8")))
