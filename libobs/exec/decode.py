"""Records of bpf/exec.bpf.c → ToolExec, ProcessExit, SecurityAction, FileAccess, FileDelete.

Layouts, kinds and constants come from bpf/exec.h (libobs/kernel/layout.py).
"""

from __future__ import annotations

import errno
import ipaddress
import os
from collections import OrderedDict
from typing import Any

from libobs.events import Clock, duration, text
from libobs.exec.fold import FoldLedger
from libobs.identity import Identities
from libobs.kernel import layout
from libobs.kernel.records import (
    KIND,
    PATH_DEPTH,
    PATH_SLOT,
    Hdr,
    comm,
    cstring,
    hdr,
    join_slots,
    split_argv,
)

_H = layout.read("exec.h")
K_EXEC, K_EXIT, K_SECURITY, K_FILE_OPEN, K_FILE_DELETE, K_FILE_FOLD = (
    KIND[k] for k in ("K_EXEC", "K_EXIT", "K_SECURITY", "K_FILE_OPEN", "K_FILE_DELETE",
                      "K_FILE_FOLD"))
FNAME_BUF = _H.constants["FNAME_BUF"]
EXEC_FIXED = _H["exec_rec"].unpacker("filename_len", "cwd_slots", "argv_len", "argv_truncated",
                                     "cwd_complete")
EXEC_FILENAME, EXEC_CWD, EXEC_ARGV = (_H["exec_rec"].offset(f) for f in ("filename", "cwd", "argv"))
EXIT = _H["exit_rec"].unpacker("exit_code", "pad", "start_ns")
SEC = _H["sec_rec"].unpacker("action", "ret", "a0", "a1", "a2", "family", "port", "addr", "pad")
OPEN_FIXED = _H["open_rec"].unpacker("flags", "slots", "opens", "complete", "gen")
OPEN_PATH = _H["open_rec"].offset("path")
FOLD = _H["fold_rec"].unpacker("flags", "opens", "gen", "last_ts")
FILE_FIXED = _H["file_rec"].unpacker("flags", "dfd", "slots", "name_len", "complete", "op")
FILE_NAME, FILE_PATH = (_H["file_rec"].offset(f) for f in ("name", "path"))
SEC_SETUID, SEC_SETREUID, SEC_SETRESUID, SEC_PTRACE, SEC_LISTEN = (
    _H.constants[k] for k in ("SEC_SETUID", "SEC_SETREUID", "SEC_SETRESUID", "SEC_PTRACE",
                              "SEC_LISTEN"))
_SETUID_NAMES = {SEC_SETUID: "setuid", SEC_SETREUID: "setreuid", SEC_SETRESUID: "setresuid"}
AT_FDCWD = -100


def exit_status(code: int) -> tuple[int | None, int | None, bool]:
    """task_struct.exit_code → (exit_code, signal, core_dumped), as wait(2) encodes it."""
    sig = code & 0x7F
    if sig:
        return None, sig, bool(code & 0x80)
    return (code >> 8) & 0xFF, None, False


def _errno_text(ret: int) -> str:
    """A syscall result as strace shows it: "0", or "-1 EPERM"."""
    return str(ret) if ret >= 0 else f"-1 {errno.errorcode.get(-ret, str(-ret))}"


def _sockaddr(family: int, port: int, addr: bytes) -> str:
    if family == 2:
        return f"{ipaddress.IPv4Address(addr[:4])}:{port}"
    if family == 10:
        return f"[{ipaddress.IPv6Address(addr[:16])}]:{port}"
    return f"?:{port}"


class ExecDecoder:
    """Stateful only where the contract needs it: per-thread duplicates of one privilege change
    (glibc applies setuid() to every thread) are folded into one SecurityAction."""

    def __init__(self, clock: Clock, host: str, identities: Identities | None = None):
        self.clock = clock
        self.host = host
        self.ids = identities or Identities()
        self._recent_sec: OrderedDict[tuple[Any, ...], int] = OrderedDict()
        self.offset = clock.offset_ns
        self._paths: dict[bytes, str] = {}
        self.folds = FoldLedger()
        self._dispatch = {K_EXEC: self._exec, K_EXIT: self._exit, K_SECURITY: self._security,
                          K_FILE_OPEN: self._file_open, K_FILE_DELETE: self._file_delete}

    def __call__(self, raw: bytes) -> list[dict[str, Any]]:
        h = hdr(raw)
        if h.kind == K_FILE_FOLD:
            return self._file_fold(h, raw)
        fn = self._dispatch.get(h.kind)
        fields = fn(h, raw) if fn else None
        if fields is None:
            return []
        kind, body = fields
        identity, process = self.ids.of(h)
        if kind == "ProcessExit" and h.pid == h.pgid:
            self.ids.forget(h.pid)
        return [{"ts": h.ts + self.offset, "host": self.host, "identity": identity,
                 "provider": None, "process": process, "event": {kind: body}}]

    def _exec(self, h: Hdr, raw: bytes) -> tuple[str, dict[str, Any]]:
        fname_len, cwd_slots, argv_len, trunc, complete = EXEC_FIXED.at(raw)
        filename = bytes(raw[EXEC_FILENAME:EXEC_FILENAME + min(fname_len, FNAME_BUF)])
        cwd = join_slots(raw, EXEC_CWD, min(cwd_slots, PATH_DEPTH), bool(complete))
        argv = split_argv(bytes(raw[EXEC_ARGV:EXEC_ARGV + argv_len]))
        return "ToolExec", {
            "pid": h.pid, "ppid": h.ppid, "uid": h.uid, "comm": comm(h),
            "filename": text(filename), "argv": [text(a) for a in argv],
            "argv_truncated": bool(trunc), "cwd": text(cwd),
        }

    def _exit(self, h: Hdr, raw: bytes) -> tuple[str, dict[str, Any]]:
        code, _pad, start_ns = EXIT.at(raw)
        exit_code, sig, core = exit_status(code)
        return "ProcessExit", {
            "pid": h.pid, "ppid": h.ppid, "comm": comm(h), "exit_code": exit_code,
            "signal": sig, "core_dumped": core,
            "duration": duration(h.ts - start_ns if start_ns else 0),
        }

    def _security(self, h: Hdr, raw: bytes) -> tuple[str, dict[str, Any]] | None:
        action, ret, a0, a1, a2, family, port, addr, _ = SEC.at(raw)
        key = (h.pid, action, a0, a1, a2, ret)
        last = self._recent_sec.get(key)
        self._recent_sec[key] = h.ts
        self._recent_sec.move_to_end(key)
        if len(self._recent_sec) > 4096:
            self._recent_sec.popitem(last=False)
        if last is not None and h.ts - last < 1_000_000_000:
            return None  # the same change repeated by another thread of the process
        if action in _SETUID_NAMES:
            args = ", ".join(str(a) for a in (a0, a1, a2)[: action])
            return "SecurityAction", {"pid": h.pid, "kind": "setuid-root",
                                      "detail": f"{_SETUID_NAMES[action]}({args}) = {_errno_text(ret)}"}
        if action == SEC_PTRACE:
            req = "PTRACE_SEIZE" if a0 == 0x4206 else "PTRACE_ATTACH"
            return "SecurityAction", {"pid": h.pid, "kind": "ptrace",
                                      "detail": f"{req} pid {a1} = {_errno_text(ret)}"}
        if action == SEC_LISTEN:
            where = _sockaddr(family, port, addr) if family else f"fd {a0}"
            return "SecurityAction", {"pid": h.pid, "kind": "bind",
                                      "detail": f"listen {where} = {_errno_text(ret)}"}
        return None

    def _file_open(self, h: Hdr, raw: bytes) -> tuple[str, dict[str, Any]] | None:
        flags, slots, opens, complete, gen = OPEN_FIXED.at(raw)
        # Agents write the same files again and again: decode each distinct path once.
        key = raw[OPEN_PATH - 8:OPEN_PATH + min(slots, PATH_DEPTH) * PATH_SLOT]
        path = self._paths.get(key)
        if path is None:
            path = text(join_slots(raw, OPEN_PATH, min(slots, PATH_DEPTH), bool(complete)))
            if len(self._paths) >= 1024:  # keys are raw slots (~1 KiB): keep this small
                self._paths.clear()
            self._paths[key] = path
        if gen:
            identity, process = self.ids.of(h)
            count = self.folds.opened(h.tid, gen, opens, path, flags, h.pid, identity, process)
            if not count:
                return None  # a read of the fold slot already reported these opens
        else:
            count = opens
        return "FileAccess", {"pid": h.pid, "path": path, "write": True, "flags": flags,
                              "count": count}

    def _file_fold(self, h: Hdr, raw: bytes) -> list[dict[str, Any]]:
        _flags, opens, gen, last_ts = FOLD.at(raw)
        hit = self.folds.ended(h.tid, gen, opens)
        if hit is None:
            return []
        slot, count = hit
        return [self._folded(slot, count, last_ts)]

    def fold_events(self, entries: list[tuple[int, int, int, int]]) -> list[dict[str, Any]]:
        """FileAccess events for opens counted in the kernel's fold slots (tid, gen, opens,
        last_ts) and not reported yet."""
        return [self._folded(slot, count, ts) for slot, count, ts in self.folds.read(entries)]

    def _folded(self, slot: Any, count: int, ts: int) -> dict[str, Any]:
        return {"ts": ts + self.offset, "host": self.host, "identity": slot.identity,
                "provider": None, "process": slot.process,
                "event": {"FileAccess": {"pid": slot.pid, "path": slot.path, "write": True,
                                         "flags": slot.flags, "count": count}}}

    def _file_delete(self, h: Hdr, raw: bytes) -> tuple[str, dict[str, Any]]:
        _flags, _dfd, slots, name_len, complete, _op = FILE_FIXED.at(raw)
        name = cstring(raw, FILE_NAME, min(name_len + 1, FNAME_BUF))
        if name.startswith(b"/"):
            path = name
        else:
            base = join_slots(raw, FILE_PATH, min(slots, PATH_DEPTH), bool(complete))
            path = os.path.join(base, name)
        return "FileDelete", {"pid": h.pid, "path": text(os.path.normpath(path))}
