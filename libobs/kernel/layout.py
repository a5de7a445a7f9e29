"""Record layouts read from the C headers the BPF programs include: one source for both sides.

Each record that crosses the ring buffer (and each map key or value user space writes) is
defined once, in `bpf/<signal>.h`; this module parses the small C subset those headers use —
`#define NAME EXPR`, `enum NAME { K = N, ... };`, `struct NAME { TYPE a, b[N]; struct X c; };`
with bcc's fixed-width types — and lays structs out by the C rules (natural alignment, the
struct's size rounded to its largest member). tests/unit/test_layouts.py compiles every header
with gcc and checks each offset and size against this module.
"""

from __future__ import annotations

import ast
import contextlib
import operator
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any

from libobs.kernel.source import source_text

_SCALARS = {"u8": "B", "u16": "H", "u32": "I", "u64": "Q",
            "s8": "b", "s16": "h", "s32": "i", "s64": "q", "char": "c"}
_COMMENT = re.compile(r"/\*.*?\*/|//[^\n]*", re.S)
_DEFINE = re.compile(r"^\s*#\s*define\s+([A-Z_][A-Z0-9_]*)[ \t]+([^\n]+)$", re.M)
_ENUM = re.compile(r"\benum\s+(\w+)\s*\{([^}]*)\}\s*;")
_STRUCT = re.compile(r"\bstruct\s+(\w+)\s*\{([^}]*)\}\s*;")
_MEMBER = re.compile(r"^(struct\s+\w+|\w+)\s+(.+)$")
_DECL = re.compile(r"^(\w+)\s*(?:\[([^\]]+)\])?$")
_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
        ast.FloorDiv: operator.floordiv, ast.Div: operator.floordiv,
        ast.LShift: operator.lshift, ast.RShift: operator.rshift}


END = "$end"   # unpacker(..., upto=END): to the end of the struct


class LayoutError(ValueError):
    """A header uses C this parser does not know, or names an undefined constant."""


@dataclass(frozen=True)
class Field:
    name: str      # dotted for members of nested structs: "peer.addr"
    offset: int
    size: int
    code: str      # struct module code: a scalar ("I"), or "Ns" for an array of N bytes


@dataclass(frozen=True)
class Layout:
    name: str
    size: int
    align: int
    fields: tuple[Field, ...]   # leaves, in offset order

    def field(self, name: str) -> Field:
        for f in self.fields:
            if f.name == name:
                return f
        raise KeyError(f"struct {self.name} has no member {name}")

    def offset(self, name: str) -> int:
        """Offset of a leaf or of a nested struct (its first leaf)."""
        for f in self.fields:
            if f.name == name or f.name.startswith(name + "."):
                return f.offset
        raise KeyError(f"struct {self.name} has no member {name}")

    def unpacker(self, *names: str, upto: str | None = None) -> Unpacker:
        """A struct.Struct over the named leaves (a nested struct stands for all its leaves),
        with padding for what lies between them; `at(raw)` reads at the first one. With
        `upto` (a member, or END), padding runs on to it: packing then makes whole records."""
        leaves = [f for n in names for f in self.fields
                  if f.name == n or f.name.startswith(n + ".")]
        if len(leaves) < len(names):
            missing = [n for n in names if not any(f.name == n or f.name.startswith(n + ".")
                                                   for f in self.fields)]
            raise KeyError(f"struct {self.name} has no member {missing}")
        start, fmt, at = leaves[0].offset, "<", leaves[0].offset
        for f in leaves:
            if f.offset < at:
                raise LayoutError(f"struct {self.name}: {f.name} is out of order")
            fmt += _pad(f.offset - at) + f.code
            at = f.offset + f.size
        if upto is not None:
            fmt += _pad((self.size if upto == END else self.offset(upto)) - at)
        return Unpacker(fmt, start)


def _pad(n: int) -> str:
    return f"{n}x" if n else ""


class Unpacker(struct.Struct):
    """struct.Struct that knows where in the record its first field is."""

    def __init__(self, fmt: str, offset: int) -> None:
        super().__init__(fmt)
        self.offset = offset

    def at(self, raw: bytes | bytearray | memoryview) -> tuple[Any, ...]:
        return self.unpack_from(raw, self.offset)


@dataclass(frozen=True)
class Header:
    """What one header defines, with the -D values it was read with."""
    constants: Mapping[str, int]
    enums: Mapping[str, int]
    structs: Mapping[str, Layout]

    def __getitem__(self, name: str) -> Layout:
        return self.structs[name]


def _eval(expr: str, env: Mapping[str, int]) -> int:
    def ev(node: ast.AST) -> int:
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return node.value
        if isinstance(node, ast.Name) and node.id in env:
            return env[node.id]
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            return int(_OPS[type(node.op)](ev(node.left), ev(node.right)))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return -ev(node.operand)
        raise LayoutError(f"cannot evaluate {expr!r}")
    text = re.sub(r"\b(0[xX][0-9a-fA-F]+|\d+)[uUlL]*\b", r"\1", expr.strip())
    try:
        return ev(ast.parse(text, mode="eval"))
    except SyntaxError:
        raise LayoutError(f"cannot evaluate {expr!r}") from None


def parse(text: str, defines: Mapping[str, int] | None = None) -> Header:
    """Constants, enums and struct layouts of one header's text (includes already inlined).
    `defines` are the -D values the program is compiled with: they win over #define defaults,
    as they do in C behind #ifndef."""
    text = _COMMENT.sub("", text)
    env: dict[str, int] = dict(defines or {})
    for name, expr in _DEFINE.findall(text):
        if name not in env:
            # not a constant (a string, say): no layout uses it
            with contextlib.suppress(LayoutError):
                env[name] = _eval(expr, env)
    enums: dict[str, int] = {}
    for _name, body in _ENUM.findall(text):
        for item in filter(None, (i.strip() for i in body.split(","))):
            key, _, value = item.partition("=")
            enums[key.strip()] = _eval(value, env | enums) if value else len(enums)
    env |= enums
    structs: dict[str, Layout] = {}
    for name, body in _STRUCT.findall(text):
        structs[name] = _layout(name, body, env, structs)
    return Header(env, enums, structs)


def _layout(name: str, body: str, env: Mapping[str, int], known: Mapping[str, Layout]) -> Layout:
    fields: list[Field] = []
    at, align = 0, 1
    for member in filter(None, (m.strip() for m in body.split(";"))):
        m = _MEMBER.match(" ".join(member.split()))
        if not m:
            raise LayoutError(f"struct {name}: cannot read {member!r}")
        ctype, decls = m.groups()
        for decl in (d.strip() for d in decls.split(",")):
            d = _DECL.match(decl)
            if not d:
                raise LayoutError(f"struct {name}: cannot read {decl!r}")
            mname, count_expr = d.groups()
            count = _eval(count_expr, env) if count_expr else 1
            if ctype.startswith("struct "):
                inner = known.get(ctype.split()[1])
                if inner is None:
                    raise LayoutError(f"struct {name}: {ctype} is not defined before it")
                if count_expr:
                    raise LayoutError(f"struct {name}: arrays of structs are not supported")
                at = -(-at // inner.align) * inner.align
                fields += [Field(f"{mname}.{f.name}", at + f.offset, f.size, f.code)
                           for f in inner.fields]
                at, align = at + inner.size, max(align, inner.align)
                continue
            if ctype not in _SCALARS:
                raise LayoutError(f"struct {name}: unknown type {ctype}")
            size = struct.calcsize(_SCALARS[ctype])
            at = -(-at // size) * size
            code = f"{size * count}s" if count_expr or ctype == "char" else _SCALARS[ctype]
            fields.append(Field(mname, at, size * count, code))
            at, align = at + size * count, max(align, size)
    return Layout(name, -(-at // align) * align, align, tuple(fields))


def read(header: str, defines: Mapping[str, int] | None = None) -> Header:
    """bpf/<header> with the headers it includes (by "name.h"), parsed."""
    return _read(header, tuple(sorted((defines or {}).items())))


@cache
def _read(header: str, defines: tuple[tuple[str, int], ...]) -> Header:
    return parse(source_text(header), dict(defines))
