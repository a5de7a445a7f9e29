"""Deny-files: parse, read safely, and watch for changes (contract: "Deny-files").

Format, for both kinds: one entry per line; blank lines ignored; ``#`` starts a comment at the
start of a line or after whitespace (so ``# note`` and ``1.2.3.4  # note`` are comments, while a
path such as ``/srv/a#b`` keeps its ``#``). Surrounding whitespace is stripped.

- egress: an IPv4 address, an IPv6 address (no ``%zone``), or a hostname (lowercased, trailing
  dot dropped, IDN converted to its ``xn--`` form; matched exactly, not as a domain suffix).
  CIDR ranges are rejected rather than half-supported: the kernel side matches exact addresses.
- file/exec: an absolute path, normalised lexically (``//``, ``.``, ``..``, trailing ``/``). A
  rule covers the path itself and everything beneath it, component-wise: ``/etc/secret`` covers
  ``/etc/secret/key`` but not ``/etc/secretary``. ``/`` alone is rejected (it would deny
  everything, the guard's own machine included).

The parsers are total: any text in, rules plus ``LineError`` s out, and every line with content
lands in exactly one of the two.
"""

from __future__ import annotations

import ipaddress
import os
import re
import stat
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Generic, Literal, TypeVar

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

MAX_BYTES = 4 * 1024 * 1024  # a deny-file is a short list; anything bigger is a mistake
_COMMENT = re.compile(r"(?:^|\s)#.*", re.DOTALL)
_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?")
_BAD_HOST = "not an IP address or hostname"


class DenyFileError(ValueError):
    """A deny-file that cannot be used; the message is one line, fit for a log."""


@dataclass(frozen=True)
class LineError:
    lineno: int
    line: str
    reason: str


def line_errors_text(source: str, errors: list[LineError], limit: int = 5,
                     shown: int = 80) -> list[str]:
    """Stderr lines for skipped deny-file lines: the first ``limit`` (each line cut to ``shown``
    characters and repr-quoted, so control bytes are visible), then one line counting the rest.
    A binary file would otherwise be one diagnostic per newline byte."""
    out = []
    for e in errors[:limit]:
        line = repr(e.line[:shown]) + ("..." if len(e.line) > shown else "")
        out.append(f"{source}:{e.lineno}: {e.reason}, line skipped: {line}")
    if len(errors) > limit:
        out.append(f"{source}: {len(errors) - limit} more bad line(s) skipped")
    return out


@dataclass(frozen=True)
class EgressRule:
    lineno: int
    line: str
    kind: Literal["ip", "host"]
    value: IPAddress | str


@dataclass(frozen=True)
class PathRule:
    lineno: int
    line: str
    path: bytes  # normalised, absolute, no trailing slash


def _entries(text: str) -> Iterator[tuple[int, str, str]]:
    """(line number, stripped line, content without comment) for each line with content."""
    # split("\n"), not splitlines(): line numbers must agree with what an editor shows.
    for lineno, raw in enumerate(text.split("\n"), 1):
        content = _COMMENT.sub("", raw).strip()
        if content:
            yield lineno, raw.strip(), content


def parse_egress(text: str) -> tuple[list[EgressRule], list[LineError]]:
    rules: list[EgressRule] = []
    errors: list[LineError] = []
    for lineno, line, content in _entries(text):
        try:
            kind, value = _egress_value(content)
        except ValueError as e:
            errors.append(LineError(lineno, line, str(e)))
        else:
            rules.append(EgressRule(lineno, line, kind, value))
    return rules, errors


def _egress_value(content: str) -> tuple[Literal["ip", "host"], IPAddress | str]:
    if len(content.split()) > 1:
        raise ValueError("expected one address or hostname per line")
    if "/" in content:
        raise ValueError("CIDR ranges are not supported; list addresses one per line")
    try:
        ip = ipaddress.ip_address(content)
    except ValueError:
        return "host", normalise_host(content)
    if isinstance(ip, ipaddress.IPv6Address) and ip.scope_id:
        raise ValueError("scoped IPv6 addresses (%zone) are not supported")
    return "ip", ip


def normalise_host(name: str) -> str:
    """Lowercase, drop the trailing dot, IDN to ASCII; ValueError if not a hostname."""
    if "*" in name:
        raise ValueError("wildcards are not supported; list each hostname")
    host = name.lower().removesuffix(".")
    if not host.isascii():
        try:
            host = host.encode("idna").decode("ascii")
        except UnicodeError:
            raise ValueError(_BAD_HOST) from None
    labels = host.split(".")
    if len(host) > 253 or not all(_LABEL.fullmatch(label) for label in labels):
        raise ValueError(_BAD_HOST)
    if labels[-1].isdigit():  # 1.2.3 or 010.0.0.1: a mistyped address, not a name
        raise ValueError("not a valid IP address")
    return host


def parse_paths(text: str) -> tuple[list[PathRule], list[LineError]]:
    rules: list[PathRule] = []
    errors: list[LineError] = []
    for lineno, line, content in _entries(text):
        try:
            rules.append(PathRule(lineno, line, _path_value(content)))
        except ValueError as e:
            errors.append(LineError(lineno, line, str(e)))
    return rules, errors


def _path_value(content: str) -> bytes:
    if "\x00" in content:
        raise ValueError("path contains a NUL byte")
    if "\ufffd" in content:  # read_denyfile's stand-in for bytes that were not UTF-8
        raise ValueError("path is not valid UTF-8")
    if not content.startswith("/"):
        raise ValueError("not an absolute path")
    try:
        path = _normalise(os.fsencode(content))
    except UnicodeError:
        raise ValueError("path is not valid UTF-8") from None
    if path == b"/":
        raise ValueError("refusing to deny the whole filesystem ('/')")
    return path


def _normalise(path: bytes) -> bytes:
    # normpath keeps a leading "//" (POSIX leaves it implementation-defined); Linux does not.
    return b"/" + os.path.normpath(path).lstrip(b"/")


class PathIndex:
    """Path rules indexed for the hot path: one dict lookup per component of the queried path."""

    def __init__(self, rules: Iterable[PathRule]) -> None:
        self._by_path: dict[bytes, PathRule] = {}
        for rule in rules:
            self._by_path.setdefault(rule.path, rule)

    def __len__(self) -> int:
        return len(self._by_path)

    def match(self, path: bytes | str) -> PathRule | None:
        """The most specific rule covering ``path`` (itself or an ancestor), else None."""
        try:
            p = os.fsencode(path)
        except UnicodeError:
            return None
        if not p.startswith(b"/") or b"\x00" in p:
            return None
        p = _normalise(p)
        while True:
            rule = self._by_path.get(p)
            if rule is not None or p == b"/":
                return rule
            p = os.path.dirname(p)


def match_path(rules: Iterable[PathRule], path: bytes | str) -> PathRule | None:
    return PathIndex(rules).match(path)


def read_denyfile(path: str | os.PathLike[str], *, trusted_uid: int = 0) -> str:
    """Read a deny-file that only ``trusted_uid`` (root) can change; DenyFileError otherwise.

    Both the file and its directory (the directory of the name given and, if that is a
    symlink, of its target) must be owned by ``trusted_uid`` and not group/other-writable;
    sticky world-writable directories such as /tmp are refused too. Bytes that are not UTF-8
    become U+FFFD, so the bad line is reported by the parser instead of failing the file.
    """
    name = os.fspath(path)
    try:
        # O_NONBLOCK: a FIFO planted under this name must not hang the guard.
        fd = os.open(name, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except OSError as e:
        raise DenyFileError(f"cannot read deny-file {name}: {e.strerror}") from e
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise DenyFileError(f"deny-file {name} refused: not a regular file")
        _check_owner(f"deny-file {name}", st, trusted_uid)
        for d in {os.path.dirname(os.path.abspath(name)), os.path.dirname(os.path.realpath(name))}:
            _check_owner(f"deny-file {name} directory {d}", os.stat(d), trusted_uid)
        data = _read_all(fd)
    except OSError as e:
        raise DenyFileError(f"cannot read deny-file {name}: {e.strerror}") from e
    finally:
        os.close(fd)
    if len(data) > MAX_BYTES:
        raise DenyFileError(f"deny-file {name} refused: larger than {MAX_BYTES} bytes")
    return data.decode("utf-8", "replace")


def _check_owner(what: str, st: os.stat_result, trusted_uid: int) -> None:
    if st.st_uid != trusted_uid:
        raise DenyFileError(f"{what} refused: owned by uid {st.st_uid}, not {trusted_uid}")
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        mode = stat.S_IMODE(st.st_mode)
        raise DenyFileError(f"{what} refused: writable by group or others (mode {mode:#o})")


def _read_all(fd: int) -> bytes:
    chunks = []
    size = 0
    while size <= MAX_BYTES:
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


R = TypeVar("R")
# A file modified this close to our last read may have changed again within the same
# timestamp tick (coarse clocks, 2 s on FAT), so its unchanged stat proves nothing yet.
_RACY_NS = 2_000_000_000


@dataclass(frozen=True)
class Update(Generic[R]):
    """A re-read deny-file; with ``error`` set the caller keeps its previous policy."""

    rules: list[R]
    errors: list[LineError]
    error: str | None = None


def _file_key(path: str) -> tuple[int, ...]:
    st = os.stat(path)
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class DenyFileWatcher(Generic[R]):
    """Re-reads a deny-file when it changes; the caller calls ``poll()`` from its own loop.

    A change is noticed by stat (device, inode, size, mtime, ctime), which also catches
    editors that write a new file and rename it over the old one.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        parse: Callable[[str], tuple[list[R], list[LineError]]],
        interval: float = 0.5,
        *,
        trusted_uid: int = 0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not 0 <= interval <= 1:
            raise ValueError("interval must be within 0..1 s so a change applies within 2 s")
        self.path = os.fspath(path)
        self.interval = interval
        self._parse = parse
        self._trusted_uid = trusted_uid
        self._clock = clock
        self._next_check = float("-inf")
        self._key: tuple[int, ...] | None = None
        self._text: str | None = None
        self._read_at_ns = 0
        self._last_error: str | None = None

    def poll(self) -> Update[R] | None:
        """An Update when the file changed (or first read, or newly failed), else None."""
        now = self._clock()
        if now < self._next_check:
            return None
        self._next_check = now + self.interval
        try:
            key = _file_key(self.path)
            if key == self._key and not self._racy(key):
                return None
            read_at_ns = time.time_ns()
            text = read_denyfile(self.path, trusted_uid=self._trusted_uid)
        except DenyFileError as e:
            return self._failed(str(e))
        except OSError as e:
            return self._failed(f"cannot read deny-file {self.path}: {e.strerror}")
        changed = key != self._key or text != self._text
        self._key, self._text, self._read_at_ns = key, text, read_at_ns
        self._last_error = None
        if not changed:
            return None
        rules, errors = self._parse(text)
        return Update(rules, errors)

    def _racy(self, key: tuple[int, ...]) -> bool:
        mtime_ns = key[3]
        return mtime_ns + _RACY_NS >= self._read_at_ns

    def _failed(self, message: str) -> Update[R] | None:
        # The key stays that of the last good read, so any later change is read again.
        if message == self._last_error:
            return None  # already reported; don't repeat it every interval
        self._last_error = message
        return Update([], [], error=message)
