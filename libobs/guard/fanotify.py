"""A small ctypes layer over fanotify(7) permission events.

No binding ships with Python. PyPI's ``pyfanotify`` (0.3.0, 2024) refuses permission events
("PERM events are not supported yet") and has no way to answer them, so this is hand-written:
``fanotify_init``/``fanotify_mark`` through libc, reads and responses through ``os.read`` and
``os.write`` on the group fd.

Typical use (a guard)::

    fan = init(FAN_CLASS_CONTENT | FAN_CLOEXEC, EVENT_F_FLAGS)
    mark_inode(fan, b"/etc/shadow", FAN_OPEN_PERM)
    for ev in read_events(fan):
        answer_and_close(fan, ev, allow=decide(fd_path(ev.fd)))

Which mark to use -- measured on Linux 6.18 (tests/kernel/test_fanotify.py checks the
starred points):

- (*) Inode marks (``FAN_MARK_INODE``, the default) on a file cost a permission event only for
  opens of that inode, through any path, hard link or bind mount. Marking a directory with
  ``FAN_EVENT_ON_CHILD`` adds events for opens of its *direct* children only: a file in a
  sub-directory of the marked directory produces no event. Cheap, but it cannot express
  "a listed directory denies everything beneath it" (nor cover files created later deeper).
- (*) Subtree denial therefore needs a filesystem mark (``FAN_MARK_FILESYSTEM``): it sees every
  open on that filesystem, and the listener resolves each event fd with ``fd_path`` and does a
  path-prefix check (``libobs.guard.denyfile.PathIndex``). The price is a round trip to the listener
  for *every* open on that filesystem by every process. A mount mark (``FAN_MARK_MOUNT``) only
  sees opens through that one mount: the same files opened through a bind mount produce no
  event, so it is not a guard. A path check is a check on a *name*: the same file reached
  through a bind mount or a hard link has another name, so listed files are best also
  inode-marked; a listed directory can only be name-checked.
- (*) The listener is not exempt from its own marks: an open by any thread of the listening
  process produces an event with the listener's own pid, so the thread that answers must never
  open files on a marked filesystem itself (a lazy ``import`` would deadlock it); other threads
  may, because the answering thread answers them.
- Seen on CPython 3.11: ``subprocess`` spawns with vfork(2), and the spawning thread stays
  suspended -- holding the GIL -- until the child's execve returns; if that execve waits on this
  process's own listener thread, the process deadlocks. Spawn marked binaries from another
  process, or set ``subprocess._USE_VFORK = False``.
- (*) An exec produces ``FAN_OPEN_EXEC_PERM`` and then a separate ``FAN_OPEN_PERM`` for the same
  file; denying the first makes execve(2) fail with EPERM. Running the file through the dynamic
  loader (``ld.so ./prog``) produces only ``FAN_OPEN_PERM``, so an exec guard that must be
  airtight denies plain opens of the listed binaries too.
- (*) If the group fd is closed with events still unanswered, the kernel allows them: a guard
  that dies fails open, it never wedges the machine.
- (*) Ignore masks are per group: an inode mark whose ignore mask holds ``FAN_OPEN_PERM``
  silences that inode's events from the *same* group's filesystem mark (``ignore`` on an
  event fd: no second event for that inode), and the same group's own inode mark on it too
  -- but never another group's marks. ``FAN_MARK_FLUSH`` without a mark-type flag removes a
  group's inode marks (ignore marks included) and keeps its filesystem marks.
- (*) A directory's plain ignore mask (``FAN_MARK_IGNORED_MASK``) silences the directory's own
  opens only. A ``FAN_MARK_IGNORE`` mask with ``FAN_EVENT_ON_CHILD`` (``ignore_children``)
  silences the opens of the files directly in it, not those of the directory itself, its
  sub-directories or deeper files. A file renamed or hard-linked from it into another directory is not its child under
  the new name: opens through that name are events again. A directory renamed elsewhere
  keeps its mark, children and all.
- (*) Without ``FAN_MARK_IGNORED_SURV_MODIFY`` the kernel quietly adds *no* ignore mask while
  the inode is open for writing (the answered opener's own ``O_WRONLY`` open included) and
  clears it at the next write.
- (*) With two groups, a permission event goes to one group after the other, and a denial by
  the first ends the open: the second group gets no event for it.
- The event's ``pid`` is the thread-group id of the opener (no ``FAN_REPORT_TID``), and
  ``fd_path`` gives the resolved path (symlinks followed, " (deleted)" appended when the file
  was unlinked), so deny rules should be compared against resolved paths.

Errors surface as ``OSError`` with the C errno and a message naming the call.
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct
from dataclasses import dataclass

# fanotify_init flags (linux/fanotify.h)
FAN_CLOEXEC = 0x00000001
FAN_NONBLOCK = 0x00000002
FAN_CLASS_NOTIF = 0x00000000
FAN_CLASS_CONTENT = 0x00000004
FAN_CLASS_PRE_CONTENT = 0x00000008
FAN_UNLIMITED_QUEUE = 0x00000010
FAN_UNLIMITED_MARKS = 0x00000020
FAN_ENABLE_AUDIT = 0x00000040

# event mask bits
FAN_ACCESS = 0x00000001
FAN_MODIFY = 0x00000002
FAN_OPEN = 0x00000020
FAN_OPEN_EXEC = 0x00001000
FAN_Q_OVERFLOW = 0x00004000
FAN_OPEN_PERM = 0x00010000
FAN_ACCESS_PERM = 0x00020000
FAN_OPEN_EXEC_PERM = 0x00040000
FAN_EVENT_ON_CHILD = 0x08000000
FAN_ONDIR = 0x40000000
PERM_EVENTS = FAN_OPEN_PERM | FAN_ACCESS_PERM | FAN_OPEN_EXEC_PERM

# fanotify_mark flags
FAN_MARK_ADD = 0x00000001
FAN_MARK_REMOVE = 0x00000002
FAN_MARK_DONT_FOLLOW = 0x00000004
FAN_MARK_ONLYDIR = 0x00000008
FAN_MARK_IGNORED_MASK = 0x00000020
FAN_MARK_IGNORED_SURV_MODIFY = 0x00000040
FAN_MARK_FLUSH = 0x00000080
FAN_MARK_IGNORE = 0x00000400  # 6.0+: an ignore mask whose FAN_ONDIR/FAN_EVENT_ON_CHILD count
FAN_MARK_INODE = 0x00000000
FAN_MARK_MOUNT = 0x00000010
FAN_MARK_FILESYSTEM = 0x00000100

# responses
FAN_ALLOW = 0x01
FAN_DENY = 0x02
FAN_AUDIT = 0x10

FAN_NOFD = -1
FANOTIFY_METADATA_VERSION = 3
AT_FDCWD = -100

# How the kernel opens the fd it hands us for each event: read-only, never inherited.
EVENT_F_FLAGS = os.O_RDONLY | os.O_LARGEFILE | os.O_CLOEXEC

# struct fanotify_event_metadata: u32 event_len, u8 vers, u8 reserved, u16 metadata_len,
# u64 mask, s32 fd, s32 pid -- 24 bytes, naturally aligned, so "=" (no padding) matches.
_METADATA = struct.Struct("=IBBHQii")
# struct fanotify_response: s32 fd, u32 response
_RESPONSE = struct.Struct("=iI")

_libc = ctypes.CDLL(None, use_errno=True)
_fanotify_init = _libc.fanotify_init
_fanotify_init.argtypes = [ctypes.c_uint, ctypes.c_uint]
_fanotify_init.restype = ctypes.c_int
_fanotify_mark = _libc.fanotify_mark
_fanotify_mark.argtypes = [
    ctypes.c_int,
    ctypes.c_uint,
    ctypes.c_uint64,
    ctypes.c_int,
    ctypes.c_char_p,
]
_fanotify_mark.restype = ctypes.c_int


@dataclass(frozen=True)
class Event:
    """One fanotify event. ``fd`` is owned by the caller (``FAN_NOFD`` on queue overflow)."""

    mask: int
    fd: int
    pid: int

    @property
    def is_perm(self) -> bool:
        return bool(self.mask & PERM_EVENTS)


def _errno_error(call: str) -> OSError:
    err = ctypes.get_errno()
    hint = {
        errno.EPERM: " (needs CAP_SYS_ADMIN)",
        errno.EINVAL: " (flag or mask not supported by this kernel?)",
        errno.ENOSYS: " (kernel built without fanotify)",
    }.get(err, "")
    return OSError(err, f"{call} failed: {os.strerror(err)}{hint}")


def init(flags: int, event_f_flags: int = EVENT_F_FLAGS) -> int:
    """fanotify_init(2): create a notification group, return its fd."""
    fd = _fanotify_init(flags, event_f_flags)
    if fd < 0:
        raise _errno_error(f"fanotify_init(flags={flags:#x}, event_f_flags={event_f_flags:#x})")
    return fd


def init_failure(e: OSError) -> str:
    """What a failed ``init`` means for the user, in the words the other tools use."""
    if e.errno == errno.EPERM:
        return "must run as root (fanotify permission events need CAP_SYS_ADMIN)"
    if e.errno == errno.ENOSYS:
        return "this kernel has no fanotify (CONFIG_FANOTIFY)"
    if e.errno == errno.EINVAL:
        return ("this kernel has no fanotify permission events "
                "(CONFIG_FANOTIFY_ACCESS_PERMISSIONS)")
    return f"cannot start fanotify: {e.strerror}"


def mark(
    fd: int, flags: int, mask: int, dirfd: int = AT_FDCWD, path: str | bytes | None = None
) -> None:
    """fanotify_mark(2). ``path=None`` marks ``dirfd`` itself."""
    cpath = None if path is None else os.fsencode(path)
    if _fanotify_mark(fd, flags, mask, dirfd, cpath) < 0:
        raise _errno_error(f"fanotify_mark(flags={flags:#x}, mask={mask:#x}, path={cpath!r})")


def mark_inode(fd: int, path: str | bytes, mask: int, *, children: bool = False) -> None:
    """Mark one file (or directory; ``children`` adds its direct children, not deeper)."""
    mark(
        fd,
        FAN_MARK_ADD | FAN_MARK_INODE,
        mask | (FAN_EVENT_ON_CHILD if children else 0),
        AT_FDCWD,
        path,
    )


def mark_filesystem(fd: int, path: str | bytes, mask: int) -> None:
    """Mark the whole filesystem holding ``path``: every open on it becomes an event."""
    mark(fd, FAN_MARK_ADD | FAN_MARK_FILESYSTEM, mask, AT_FDCWD, path)


def ignore(fd: int, target_fd: int, mask: int, *, survive_modify: bool = True) -> None:
    """Add ``mask`` to the ignore mask of the inode behind ``target_fd`` (an event's fd, or an
    O_PATH fd): the group's marks then send no such event for that inode (module docstring)."""
    flags = (FAN_MARK_ADD | FAN_MARK_INODE | FAN_MARK_IGNORED_MASK
             | (FAN_MARK_IGNORED_SURV_MODIFY if survive_modify else 0))
    mark(fd, flags, mask, target_fd, None)


def ignore_children(fd: int, dir_fd: int, mask: int) -> None:
    """Ignore ``mask`` events on the direct children of the directory behind ``dir_fd`` (not
    on the directory itself, nor on sub-directories: no ``FAN_ONDIR``). The kernel wants
    ``FAN_MARK_IGNORED_SURV_MODIFY`` with ``FAN_MARK_IGNORE`` on a directory. ``dir_fd`` may
    be an O_PATH fd (which fanotify_mark's own dirfd refuses): it is marked through its
    /proc/self/fd link."""
    flags = FAN_MARK_ADD | FAN_MARK_INODE | FAN_MARK_IGNORE | FAN_MARK_IGNORED_SURV_MODIFY
    mark(fd, flags, mask | FAN_EVENT_ON_CHILD, AT_FDCWD, f"/proc/self/fd/{dir_fd}")


def flush_inode_marks(fd: int) -> None:
    """Remove every inode mark of the group (ignore marks included); filesystem and mount
    marks stay."""
    mark(fd, FAN_MARK_FLUSH | FAN_MARK_INODE, 0)


def parse_events(buf: bytes) -> list[Event]:
    """Decode the events of one read(2). Raises OSError(EPROTO) on an ABI mismatch."""
    events: list[Event] = []
    off = 0
    while len(buf) - off >= _METADATA.size:
        event_len, vers, _, metadata_len, mask, fd, pid = _METADATA.unpack_from(buf, off)
        if vers != FANOTIFY_METADATA_VERSION or metadata_len < _METADATA.size:
            _close_all(events)
            raise OSError(
                errno.EPROTO,
                f"fanotify metadata version {vers} "
                f"(len {metadata_len}), expected {FANOTIFY_METADATA_VERSION}",
            )
        if event_len < metadata_len or off + event_len > len(buf):
            _close_all(events)
            raise OSError(errno.EPROTO, f"fanotify event_len {event_len} out of bounds")
        # Info records after the metadata (FAN_REPORT_*) are skipped via event_len.
        events.append(Event(mask=mask, fd=fd, pid=pid))
        off += event_len
    if off != len(buf):
        _close_all(events)
        raise OSError(errno.EPROTO, f"fanotify read has {len(buf) - off} trailing bytes")
    return events


def _close_all(events: list[Event]) -> None:
    for ev in events:
        if ev.fd >= 0:
            os.close(ev.fd)


def read_events(fd: int, bufsize: int = 64 * 1024) -> list[Event]:
    """Read and decode pending events; [] when a FAN_NONBLOCK group has none."""
    try:
        buf = os.read(fd, bufsize)
    except BlockingIOError:
        return []
    except OSError as e:
        raise OSError(e.errno, f"read from fanotify fd {fd} failed: {e.strerror}") from e
    return parse_events(buf)


def respond(fd: int, event_fd: int, allow: bool, *, audit: bool = False) -> None:
    """Answer a permission event: the blocked open proceeds or fails with EPERM."""
    response = (FAN_ALLOW if allow else FAN_DENY) | (FAN_AUDIT if audit else 0)
    try:
        os.write(fd, _RESPONSE.pack(event_fd, response))
    except OSError as e:
        raise OSError(
            e.errno, f"fanotify response for event fd {event_fd} failed: {e.strerror}"
        ) from e


def answer_and_close(fd: int, event: Event, allow: bool) -> None:
    """Answer ``event`` if it is a permission event, and always close its fd."""
    try:
        if event.is_perm and event.fd >= 0:
            respond(fd, event.fd, allow)
    finally:
        if event.fd >= 0:
            os.close(event.fd)


def fd_path(fd: int) -> bytes:
    """The path behind an open fd, as bytes (file names need not be UTF-8)."""
    return os.readlink(f"/proc/self/fd/{fd}".encode())
