"""What this kernel and host can do, checked before anything is compiled.

Each check returns a one-line reason (str) when something is missing, or None; tools print the
reason and exit non-zero instead of failing later inside clang or bcc.
"""

from __future__ import annotations

import functools
import hashlib
import os
import platform
import re
from pathlib import Path

from libobs.kernel import btf, cache

TRACEFS_CANDIDATES = (Path("/sys/kernel/tracing"), Path("/sys/kernel/debug/tracing"))
CGROUP2_CANDIDATES = (Path("/sys/fs/cgroup/unified"), Path("/sys/fs/cgroup"))
SETUP_HINT = "run deploy/setup-host.sh (or `nox -s setup`) as root"
BOOT_ID = Path("/proc/sys/kernel/random/boot_id")  # new at every boot

# Every kernel struct member the BPF programs read, as -D constants.
STRUCT_FIELDS = {
    "OFF_TASK_REAL_PARENT": "task_struct.real_parent",
    "OFF_TASK_GROUP_LEADER": "task_struct.group_leader",
    "OFF_TASK_TGID": "task_struct.tgid",
    "OFF_TASK_MM": "task_struct.mm",
    "OFF_TASK_FS": "task_struct.fs",
    "OFF_TASK_FILES": "task_struct.files",
    "OFF_TASK_EXIT_CODE": "task_struct.exit_code",
    "OFF_TASK_START_TIME": "task_struct.start_time",
    "OFF_TASK_START_BOOTTIME": "task_struct.start_boottime",
    "OFF_TASK_SIGNAL": "task_struct.signal",
    "OFF_SIGNAL_PIDS": "signal_struct.pids",
    "OFF_PID_NUMBERS": "pid.numbers",
    "OFF_UPID_NR": "upid.nr",
    "OFF_MM_ARG_START": "mm_struct.arg_start",
    "OFF_MM_ARG_END": "mm_struct.arg_end",
    "OFF_FS_PWD": "fs_struct.pwd",
    "OFF_PATH_MNT": "path.mnt",
    "OFF_PATH_DENTRY": "path.dentry",
    "OFF_DENTRY_D_PARENT": "dentry.d_parent",
    "OFF_DENTRY_D_NAME": "dentry.d_name",
    "OFF_QSTR_NAME": "qstr.name",
    "OFF_VFSMOUNT_MNT_ROOT": "vfsmount.mnt_root",
    "OFF_MOUNT_MNT": "mount.mnt",
    "OFF_MOUNT_MNT_PARENT": "mount.mnt_parent",
    "OFF_MOUNT_MNT_MOUNTPOINT": "mount.mnt_mountpoint",
    "OFF_FILES_FDT": "files_struct.fdt",
    "OFF_FDTABLE_MAX_FDS": "fdtable.max_fds",
    "OFF_FDTABLE_FD": "fdtable.fd",
    "OFF_FILE_F_PATH": "file.f_path",
    "OFF_FILE_F_INODE": "file.f_inode",
    # the registers a syscall was entered with (bpf/exec.bpf.c reads an open's flags at exit)
    "OFF_PT_REGS_SI": "pt_regs.si",
    "OFF_PT_REGS_DX": "pt_regs.dx",
    "OFF_FILE_PRIVATE_DATA": "file.private_data",
    "OFF_SOCKET_SK": "socket.sk",
    # struct sock starts with struct sock_common (__sk_common): these are offsets into sock.
    "OFF_SKC_FAMILY": "sock_common.skc_family",
    "OFF_SKC_NUM": "sock_common.skc_num",
    "OFF_SKC_DPORT": "sock_common.skc_dport",
    "OFF_SKC_RCV_SADDR": "sock_common.skc_rcv_saddr",
    "OFF_SKC_DADDR": "sock_common.skc_daddr",
    "OFF_SKC_V6_RCV_SADDR": "sock_common.skc_v6_rcv_saddr",
    "OFF_SKC_V6_DADDR": "sock_common.skc_v6_daddr",
    # bpf/net.bpf.c: socket type and TCP state, send sequence, received segments' control block
    "OFF_SOCKET_TYPE": "socket.type",
    "OFF_SKC_STATE": "sock_common.skc_state",
    "OFF_TCP_WRITE_SEQ": "tcp_sock.write_seq",
    "OFF_SKB_CB": "sk_buff.cb",
    "OFF_TCB_SEQ": "tcp_skb_cb.seq",
    "OFF_TCB_ACK_SEQ": "tcp_skb_cb.ack_seq",
    "OFF_TCB_END_SEQ": "tcp_skb_cb.end_seq",
    "OFF_TCB_TCP_FLAGS": "tcp_skb_cb.tcp_flags",
}


def tracefs() -> Path | None:
    for p in TRACEFS_CANDIDATES:
        if (p / "events").is_dir():
            return p
    return None


def tracepoint_exists(category: str, name: str) -> bool:
    root = tracefs()
    return root is not None and (root / "events" / category / name / "id").exists()


def missing_tracepoints(names: list[str]) -> list[str]:
    """Of "category:name" strings, those this kernel lacks."""
    return [n for n in names if not tracepoint_exists(*n.split(":", 1))]


def check_root() -> str | None:
    if os.geteuid() != 0:
        return "must run as root (loading BPF programs needs CAP_BPF and CAP_PERFMON)"
    return None


def check_bcc() -> str | None:
    try:
        import bcc  # noqa: F401
    except ImportError:
        return f"bcc is not importable from this Python (Debian python3-bpfcc): {SETUP_HINT}"
    return None


def check_headers() -> str | None:
    mods = Path("/lib/modules") / platform.release()
    try:
        if (mods / "build" / "include" / "generated" / "autoconf.h").exists() and any(
                (mods / d / "include" / "linux" / "kconfig.h").exists()
                for d in ("build", "source")):
            return None
        if Path("/sys/kernel/kheaders.tar.xz").exists():
            return None
    except PermissionError:  # e.g. systemd's ProtectKernelModules= hides /lib/modules
        return f"cannot read the kernel headers under {mods} (permission denied)"
    return f"no kernel headers for {platform.release()} (bcc cannot compile): {SETUP_HINT}"


def check_tracefs() -> str | None:
    if tracefs() is None:
        return f"tracefs is not mounted (mount -t tracefs nodev /sys/kernel/tracing): {SETUP_HINT}"
    return None


def check_btf() -> str | None:
    if not btf.VMLINUX.exists():
        return "kernel BTF (/sys/kernel/btf/vmlinux) is missing; obs needs CONFIG_DEBUG_INFO_BTF"
    return None


def preflight(tracepoints: list[str] = ()) -> str | None:  # type: ignore[assignment]
    """The first reason this host cannot run a tracepoint tool, or None."""
    for check in (check_root, check_bcc, check_headers, check_tracefs, check_btf):
        reason = check()
        if reason:
            return reason
    missing = missing_tracepoints(list(tracepoints))
    if missing:
        return f"this kernel lacks the tracepoint(s) {', '.join(missing)}"
    return None


@functools.cache
def btf_digest() -> str:
    """The running kernel's BTF, hashed: names what was computed from its types. Reading and
    hashing its 5 MB took 7 ms of every start; the kernel's BTF cannot change while it runs,
    so the digest is kept per boot (named by the boot's random id) in the start-up cache."""
    try:
        boot = BOOT_ID.read_text().strip()
    except OSError:
        boot = ""
    name = cache.key("btf-digest", boot, str(btf.VMLINUX))
    hit = cache.load_json("boot", name) if boot else None
    if isinstance(hit, str) and re.fullmatch(r"[0-9a-f]{64}", hit):
        return hit
    digest = hashlib.sha256(btf.VMLINUX.read_bytes()).hexdigest()
    if boot:
        cache.store_json("boot", name, digest, keep=4)
    return digest


@functools.cache
def struct_offsets() -> dict[str, int]:
    """STRUCT_FIELDS' offsets in the running kernel. Parsing BTF took 0.2 s of every start: the
    result is cached, named by the BTF blob's hash (libobs/kernel/cache.py)."""
    name = cache.key("btf-offsets", btf_digest(), STRUCT_FIELDS)
    value = cache.cached_json("btf", name,
                              lambda: btf.offsets(btf.VMLINUX.read_bytes(), STRUCT_FIELDS))
    if not isinstance(value, dict) or set(value) != set(STRUCT_FIELDS) or not all(
            isinstance(v, int) for v in value.values()):
        value = btf.offsets(btf.VMLINUX.read_bytes(), STRUCT_FIELDS)  # malformed: recomputed
    return value


def kernel_identity() -> dict[str, object]:
    """What a compiled program depends on besides its source and flags: the running kernel
    (release, build, BTF) and the headers bcc compiles against (bcc rewrites kernel struct
    reads at compile time, and takes LINUX_VERSION_CODE and the config from those headers)."""
    u = os.uname()
    headers: list[list[object]] = []
    mods = Path("/lib/modules") / u.release
    for p in (mods / "build", mods / "source", Path("/sys/kernel/kheaders.tar.xz")):
        headers.append([str(p), os.path.realpath(p)])
        for rel in ("include/generated/autoconf.h", "include/generated/utsrelease.h",
                    "include/generated/uapi/linux/version.h", "Makefile", ""):
            try:
                st = (p / rel).stat() if rel else p.stat()
            except OSError:
                continue
            headers.append([rel, st.st_size, st.st_mtime_ns])
    return {"release": u.release, "build": u.version, "machine": u.machine,
            "btf": btf_digest(), "headers": headers}


def possible_cpus() -> int:
    """Number of possible CPU ids (the highest id + 1), for per-CPU scratch slots."""
    try:
        text = Path("/sys/devices/system/cpu/possible").read_text().strip()
        last = max(int(part.split("-")[-1]) for part in text.split(","))
        return last + 1
    except (OSError, ValueError):
        return os.cpu_count() or 1


def cgroup2_root() -> Path | None:
    for p in CGROUP2_CANDIDATES:
        if (p / "cgroup.controllers").exists():
            return p
    return None
