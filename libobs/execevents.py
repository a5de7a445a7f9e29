"""Records of bpf/exec.bpf.c → ToolExec, ProcessExit, SecurityAction, FileAccess, FileDelete.

Offsets below mirror the structs in bpf/exec.bpf.c (checked by tests/kernel/test_records.py).
"""

from __future__ import annotations

import errno
import ipaddress
import os
import struct
from collections import OrderedDict
from typing import Any

from libobs.events import Clock, duration, text
from libobs.identity import Identities
from libobs.records import PATH_SLOT, Hdr, comm, cstring, hdr, join_slots, split_argv

K_EXEC, K_EXIT, K_SECURITY, K_FILE_OPEN, K_FILE_DELETE = 1, 2, 3, 4, 5
PATH_DEPTH = 40                      # bpf/common.h
PATH_BYTES = PATH_SLOT * PATH_DEPTH
FNAME_BUF = 4096

EXEC_FIXED = struct.Struct("<3I2B2x")            # filename_len, cwd_slots, argv_len, trunc, complete
EXEC_FILENAME = 72 + EXEC_FIXED.size              # 88
EXEC_CWD = EXEC_FILENAME + FNAME_BUF
EXEC_ARGV = EXEC_CWD + PATH_BYTES
EXIT = struct.Struct("<IIQ")                      # exit_code, pad, start_ns
SEC = struct.Struct("<Iiqqq HH16s I")             # action, ret, a0-a2, family, port, addr, pad
FILE_FIXED = struct.Struct("<IiII BB6x")          # flags, dfd, slots, name_len, complete, op
FILE_BUF = 72 + FILE_FIXED.size                   # 96: FileAccess path slots start here;
FILE_NAME = FILE_BUF                              # FileDelete: the name here,
FILE_BASE = FILE_BUF + FNAME_BUF                  # then its base directory's slots

SEC_SETUID, SEC_SETREUID, SEC_SETRESUID, SEC_PTRACE, SEC_LISTEN = 1, 2, 3, 4, 5
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
        self._dispatch = {K_EXEC: self._exec, K_EXIT: self._exit, K_SECURITY: self._security,
                          K_FILE_OPEN: self._file_open, K_FILE_DELETE: self._file_delete}

    def __call__(self, raw: bytes) -> list[dict[str, Any]]:
        h = hdr(raw)
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
        fname_len, cwd_slots, argv_len, trunc, complete = EXEC_FIXED.unpack_from(raw, 72)
        filename = bytes(raw[EXEC_FILENAME:EXEC_FILENAME + min(fname_len, FNAME_BUF)])
        cwd = join_slots(raw, EXEC_CWD, min(cwd_slots, PATH_DEPTH), bool(complete))
        argv = split_argv(bytes(raw[EXEC_ARGV:EXEC_ARGV + argv_len]))
        return "ToolExec", {
            "pid": h.pid, "ppid": h.ppid, "uid": h.uid, "comm": comm(h),
            "filename": text(filename), "argv": [text(a) for a in argv],
            "argv_truncated": bool(trunc), "cwd": text(cwd),
        }

    def _exit(self, h: Hdr, raw: bytes) -> tuple[str, dict[str, Any]]:
        code, _pad, start_ns = EXIT.unpack_from(raw, 72)
        exit_code, sig, core = exit_status(code)
        return "ProcessExit", {
            "pid": h.pid, "ppid": h.ppid, "comm": comm(h), "exit_code": exit_code,
            "signal": sig, "core_dumped": core,
            "duration": duration(h.ts - start_ns if start_ns else 0),
        }

    def _security(self, h: Hdr, raw: bytes) -> tuple[str, dict[str, Any]] | None:
        action, ret, a0, a1, a2, family, port, addr, _ = SEC.unpack_from(raw, 72)
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

    def _file_open(self, h: Hdr, raw: bytes) -> tuple[str, dict[str, Any]]:
        flags, _dfd, slots, _nlen, complete, _op = FILE_FIXED.unpack_from(raw, 72)
        # Agents write the same files again and again: decode each distinct path once.
        key = raw[FILE_BUF - 8:FILE_BUF + min(slots, PATH_DEPTH) * PATH_SLOT]
        path = self._paths.get(key)
        if path is None:
            path = text(join_slots(raw, FILE_BUF, min(slots, PATH_DEPTH), bool(complete)))
            if len(self._paths) >= 1024:  # keys are raw slots (~1 KiB): keep this small
                self._paths.clear()
            self._paths[key] = path
        return "FileAccess", {"pid": h.pid, "path": path, "write": True, "flags": flags}

    def _file_delete(self, h: Hdr, raw: bytes) -> tuple[str, dict[str, Any]]:
        _flags, _dfd, slots, name_len, complete, _op = FILE_FIXED.unpack_from(raw, 72)
        name = cstring(raw, FILE_NAME, min(name_len + 1, FNAME_BUF))
        if name.startswith(b"/"):
            path = name
        else:
            base = join_slots(raw, FILE_BASE, min(slots, PATH_DEPTH), bool(complete))
            path = os.path.join(base, name)
        return "FileDelete", {"pid": h.pid, "path": text(os.path.normpath(path))}
