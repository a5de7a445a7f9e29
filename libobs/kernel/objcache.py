"""Compiled BPF programs kept between runs: on a hit, no clang (1.5-4 s of every start).

bcc cannot load an object file, but what it loads is plain data once compiled: each
function's instructions, and the maps they reference. After a compile, `capture` takes
both — the instructions with every map reference (BPF_LD_IMM64 with src_reg
BPF_PSEUDO_MAP_FD, whose imm is the map's fd in this process) noted as (instruction, map) —
and `CachedBPF` later recreates the maps, puts the new fds into those instructions and
hands the same bytes to BPF_PROG_LOAD. The kernel verifies them as it would bcc's; the
program tags (a hash of the instructions, map fds left out) are the same.

An entry is named by everything the instructions depend on (cache.key): the source text with
its headers, the compile flags (every option is a -D constant), the running kernel and its
BTF, the headers bcc compiled against, and the bcc/LLVM build. bcc rewrites kernel struct
reads at compile time, so the instructions are valid only for that kernel: a different one is
a different key. The entry lives under the root-only start-up cache (cache.py). Anything
unusable — unreadable, malformed, a map or program the kernel refuses — is said once on
stderr and the program is compiled as before.

`CachedBPF` is a bcc BPF object without a module: attach_tracepoint/attach_uprobe/cleanup and
the bcc Table classes (lookups, updates, items(), map_fd) work on it unchanged, since they
only need fds; it loads a function from the cached instructions when bcc would compile-load.
"""

from __future__ import annotations

import atexit
import base64
import ctypes as ct
import json
import os
import re
import struct
from functools import cache as memo
from typing import Any

from libobs.kernel import bpflink, cache, host

FORMAT = 1       # of an entry; part of its key
KEEP = 32        # entries kept (least recently used dropped)
KIND = "bpf"

BPF_MAP_CREATE, BPF_PROG_LOAD = 0, 5
_LD_IMM64 = 0x18
_PSEUDO_MAP_FD = 1
_INSN = struct.Struct("<BBhi")
_AUTOLOAD = {b"tracepoint__": "tracepoint", b"raw_tracepoint__": "raw_tracepoint"}
_NOT_CACHED = (b"kprobe__", b"kretprobe__", b"kfunc__", b"kretfunc__", b"lsm__")


class Uncacheable(Exception):
    """The compiled program uses something a cache entry cannot reproduce."""


class Unusable(Exception):
    """A cache entry that cannot be loaded (malformed, or refused by the kernel)."""


@memo
def _lib() -> Any:
    """libbcc with the prototypes bcc's own bindings leave out (a handle of our own, so bcc's
    declarations are not touched)."""
    lib = ct.CDLL("libbcc.so.0", use_errno=True)
    for fn, res, args in (("bpf_num_tables", ct.c_size_t, [ct.c_void_p]),
                          ("bpf_table_name", ct.c_char_p, [ct.c_void_p, ct.c_size_t]),
                          ("bpf_table_fd_id", ct.c_int, [ct.c_void_p, ct.c_size_t]),
                          ("bpf_table_key_desc_id", ct.c_char_p, [ct.c_void_p, ct.c_size_t]),
                          ("bpf_table_leaf_desc_id", ct.c_char_p, [ct.c_void_p, ct.c_size_t])):
        f = getattr(lib, fn)
        f.restype, f.argtypes = res, args
    return lib


@memo
def toolchain_identity() -> list[Any]:
    """bcc's version and the files of libbcc, libclang and libLLVM this process mapped: a new
    compiler build may emit other instructions."""
    import bcc

    out: list[Any] = [getattr(bcc, "__version__", "?")]
    seen = set()
    with open("/proc/self/maps") as f:
        for line in f:
            path = line.rsplit(None, 1)[-1] if "/" in line else ""
            if path not in seen and re.search(r"/lib(bcc|clang|LLVM)[^/]*\.so", path):
                seen.add(path)
                st = os.stat(path)
                out.append([path, st.st_size, st.st_mtime_ns])
    return sorted(out[1:]) + out[:1]


def entry_key(text: str, flags: list[str]) -> str:
    return cache.key("bpf-object", FORMAT, text.encode(), flags, host.kernel_identity(),
                     toolchain_identity())


def _fdinfo(fd: int) -> dict[str, str]:
    out = {}
    with open(f"/proc/self/fdinfo/{fd}") as f:
        for line in f:
            k, _, v = line.partition(":")
            out[k.strip()] = v.strip()
    return out


def capture(bpf: Any) -> dict[str, Any]:
    """A just-compiled bcc BPF object as an entry: maps as the kernel created them, every
    function's instructions with its map references."""
    from bcc import lib as bcclib

    lib, mod = _lib(), bpf.module
    maps, by_fd = [], {}
    for i in range(lib.bpf_num_tables(mod)):
        name = lib.bpf_table_name(mod, i).decode()
        fd = lib.bpf_table_fd_id(mod, i)
        info = _fdinfo(fd)  # what the kernel was asked for, exactly
        mtype = int(info["map_type"])
        if mtype not in TABLE_TYPES:
            raise Uncacheable(f"map {name} has type {mtype}")
        maps.append({"name": name, "type": mtype, "key_size": int(info["key_size"]),
                     "value_size": int(info["value_size"]),
                     "max_entries": int(info["max_entries"]),
                     "flags": int(info["map_flags"], 16),
                     "key_desc": (lib.bpf_table_key_desc_id(mod, i) or b"").decode(),
                     "leaf_desc": (lib.bpf_table_leaf_desc_id(mod, i) or b"").decode()})
        by_fd[fd] = len(maps) - 1
    funcs = []
    for i in range(bcclib.bpf_num_functions(mod)):
        name = bcclib.bpf_function_name(mod, i)
        if name.startswith(_NOT_CACHED):
            raise Uncacheable(f"function {name.decode()} is attached at compile time")
        code = ct.string_at(bcclib.bpf_function_start(mod, name),
                            bcclib.bpf_function_size(mod, name))
        funcs.append({"name": name.decode(), "insns": base64.b64encode(code).decode(),
                      "maps": map_references(code, by_fd)})
    return {"format": FORMAT, "license": bcclib.bpf_module_license(mod).decode(),
            "kern_version": int(bcclib.bpf_module_kern_version(mod)),
            "maps": maps, "funcs": funcs}


def map_references(code: bytes, by_fd: dict[int, int]) -> list[list[int]]:
    """[instruction index, map index] of every map fd in the instructions. Any other
    64-bit load with a pseudo source (map values, BTF ids, functions) is not relocatable here."""
    if len(code) % 8:
        raise Uncacheable("instructions are not a whole number of 8-byte slots")
    refs, i, n = [], 0, len(code) // 8
    while i < n:
        op, regs, _off, imm = _INSN.unpack_from(code, 8 * i)
        if op == _LD_IMM64:
            src = regs >> 4
            if src == _PSEUDO_MAP_FD:
                if imm not in by_fd:
                    raise Uncacheable(f"instruction {i} loads fd {imm}, which is no map")
                refs.append([i, by_fd[imm]])
            elif src:
                raise Uncacheable(f"instruction {i} is a 64-bit load of kind {src}")
            i += 2
            continue
        i += 1
    return refs


def relocate(code: bytes, refs: list[list[int]], fds: list[int]) -> bytes:
    """The instructions with each map reference pointing at this process's map fd."""
    out = bytearray(code)
    for i, m in refs:
        op, regs, off, _imm = _INSN.unpack_from(out, 8 * i)
        if op != _LD_IMM64 or regs >> 4 != _PSEUDO_MAP_FD:
            raise Unusable(f"instruction {i} is not a map reference")
        _INSN.pack_into(out, 8 * i, op, regs, off, fds[m])
    return bytes(out)


def map_create(spec: dict[str, Any]) -> int:
    name = spec["name"].encode()[:15]
    attr = struct.pack("<IIIIIII16s", spec["type"], spec["key_size"], spec["value_size"],
                       spec["max_entries"], spec["flags"], 0, 0, name)
    return bpflink.call(BPF_MAP_CREATE, attr, f"create map {spec['name']}")


def prog_load(name: bytes, prog_type: int, code: bytes, license: bytes, kern_version: int,
              attach_type: int = -1) -> int:
    """BPF_PROG_LOAD of ready instructions (the name as bcc gives it, for bpftool)."""
    insns = ct.create_string_buffer(code, len(code))
    lic = ct.create_string_buffer(license)
    short = name.rsplit(b"__", 1)[-1][:15]
    attr = struct.pack("<IIQQIIQII16sII", prog_type, len(code) // 8, ct.addressof(insns),
                       ct.addressof(lic), 0, 0, 0, kern_version, 0, short, 0,
                       max(attach_type, 0))
    try:
        return bpflink.call(BPF_PROG_LOAD, attr, f"load program {name.decode()}", size=72)
    finally:
        del insns, lic


def _table_types() -> dict[int, Any]:
    from bcc import table as t
    return {1: t.HashTable, 2: t.Array, 3: t.ProgArray, 5: t.PerCpuHash, 6: t.PerCpuArray,
            9: t.LruHash, 10: t.LruPerCpuHash, 27: t.RingBuf}


TABLE_TYPES = (1, 2, 3, 5, 6, 9, 10, 27)  # the map types CachedBPF gives bcc Tables for


def checked(entry: Any) -> dict[str, Any]:
    """The entry when it has the shape `capture` writes (else Unusable)."""
    try:
        assert entry["format"] == FORMAT and isinstance(entry["license"], str)
        assert isinstance(entry["kern_version"], int)
        for m in entry["maps"]:
            assert m["type"] in TABLE_TYPES and isinstance(m["name"], str)
            assert all(isinstance(m[k], int) for k in
                       ("key_size", "value_size", "max_entries", "flags"))
            assert isinstance(m["key_desc"], str) and isinstance(m["leaf_desc"], str)
        for f in entry["funcs"]:
            assert isinstance(f["name"], str) and isinstance(f["insns"], str)
            assert all(0 <= m < len(entry["maps"]) for _, m in f["maps"])
    except (AssertionError, KeyError, TypeError, ValueError) as e:
        raise Unusable(f"malformed entry ({e!r})") from None
    return entry


def _bpf_class() -> type:
    from bcc import BPF

    class CachedBPF(BPF):  # type: ignore[misc, valid-type]
        """A bcc BPF object built from a cache entry instead of a compile."""

        def __init__(self, entry: dict[str, Any]):  # no super().__init__: that compiles
            # the attributes bcc's BPF.__init__ sets before compiling, which its attach,
            # detach and cleanup methods use
            for attr in ("kprobe_fds", "uprobe_fds", "tracepoint_fds", "raw_tracepoint_fds",
                         "kfunc_entry_fds", "kfunc_exit_fds", "lsm_fds", "perf_buffers",
                         "open_perf_events"):
                setattr(self, attr, {})
            self._ringbuf_manager = None
            self.tracefile = None
            self.debug = 0
            self.funcs: dict[bytes, Any] = {}
            self.tables: dict[Any, Any] = {}
            self.module = None
            self.entry = checked(entry)
            self.map_fds: list[int] = []
            self.code: dict[bytes, bytes] = {}
            try:
                for spec in entry["maps"]:
                    self.map_fds.append(map_create(spec))
                for f in entry["funcs"]:
                    raw = base64.b64decode(f["insns"], validate=True)
                    self.code[f["name"].encode()] = relocate(raw, f["maps"], self.map_fds)
                self._autoload()
            except Exception as e:
                self.cleanup()
                if isinstance(e, Unusable):
                    raise
                raise Unusable(str(e)) from e
            atexit.register(self.cleanup)

        def _autoload(self) -> None:
            """What bcc's _trace_autoload does for the prefixes a cached entry may hold."""
            for name in self.code:
                if name.startswith(b"tracepoint__"):
                    fn = self.load_func(name, BPF.TRACEPOINT)
                    tp = name[len(b"tracepoint__"):].replace(b"__", b":")
                    self.attach_tracepoint(tp=tp, fn_name=fn.name)
                elif name.startswith(b"raw_tracepoint__"):
                    fn = self.load_func(name, BPF.RAW_TRACEPOINT)
                    self.attach_raw_tracepoint(tp=name[len(b"raw_tracepoint__"):],
                                               fn_name=fn.name)

        def load_func(self, func_name: Any, prog_type: int, device: Any = None,
                      attach_type: int = -1) -> Any:
            name = func_name.encode() if isinstance(func_name, str) else func_name
            if name in self.funcs:
                return self.funcs[name]
            if name not in self.code or device is not None:
                raise Exception(f"Unknown program {name!r}")
            fd = prog_load(name, prog_type, self.code[name], self.entry["license"].encode(),
                           self.entry["kern_version"], attach_type)
            fn = BPF.Function(self, name, fd)
            self.funcs[name] = fn
            return fn

        def get_table(self, name: Any, keytype: Any = None, leaftype: Any = None,
                      reducer: Any = None) -> Any:
            bname = name.encode() if isinstance(name, str) else name
            ids = [i for i, m in enumerate(self.entry["maps"]) if m["name"].encode() == bname]
            if not ids:
                raise KeyError(name)
            map_id, spec = ids[0], self.entry["maps"][ids[0]]
            key = keytype or BPF._decode_table_type(json.loads(spec["key_desc"]))
            leaf = leaftype or BPF._decode_table_type(json.loads(spec["leaf_desc"]))
            cls = _table_types()[spec["type"]]
            kwargs = {"reducer": reducer} if spec["type"] in (5, 6) else {}
            t = cls(self, map_id, self.map_fds[map_id], key, leaf, bname, **kwargs)
            # bcc's Table reads these from the module, which a cached object has not
            t.ttype, t.flags, t.max_entries = spec["type"], spec["flags"], spec["max_entries"]
            return t

        def dump_func(self, func_name: Any) -> bytes:
            name = func_name.encode() if isinstance(func_name, str) else func_name
            return self.code[name]

        def close(self) -> None:
            super().close()
            for fd in self.map_fds:
                os.close(fd)
            self.map_fds = []

    return CachedBPF


def load(key: str) -> Any | None:
    """The cached program for `key`, loaded and autoattached; None on a miss or an unusable
    entry (said once on stderr)."""
    entry = cache.load_json(KIND, key)
    if entry is None:
        return None
    try:
        bpf = _bpf_class()(entry)
    except Unusable as e:
        cache.warn(f"not using the cached BPF program {key}: {e}; compiling it")
        return None
    cache.touch(KIND, key)
    return bpf


def store(key: str, bpf: Any) -> None:
    if os.geteuid() != 0:
        return
    try:
        entry = capture(bpf)
    except Uncacheable as e:
        cache.warn(f"this BPF program cannot be kept in the start-up cache: {e}")
        return
    cache.store_json(KIND, key, entry, keep=KEEP)
