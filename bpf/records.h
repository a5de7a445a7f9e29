/* Records every obs BPF program shares with user space: the header each ring record starts
 * with, every record kind (one number space for all programs), and path slots.
 *
 * This header is the single source of these layouts: libobs/kernel/layout.py reads it (and
 * each bpf/<signal>.h) to unpack records, and tests/unit/test_layouts.py compiles it with gcc
 * to check every offset. It is plain C with bcc's fixed-width types and no includes of the
 * kernel's: keep it that way (struct, enum and #define only).
 */
#ifndef OBS_RECORDS_H
#define OBS_RECORDS_H

enum obs_kind {
    K_EXEC = 1,         /* exec.h */
    K_EXIT = 2,
    K_SECURITY = 3,
    K_FILE_OPEN = 4,
    K_FILE_DELETE = 5,
    K_FILE_FOLD = 6,    /* the rest of a FileAccess fold slot's count (exec.h) */
    K_CONNECT = 8,      /* net.h */
    K_HELLO = 9,
    K_DNS = 10,
    K_SEND = 11,
    K_DATA = 12,
    K_STATE = 13,
    K_DENIED = 16,      /* enforce.h */
    K_GUARD_DNS = 17,
    K_SSL = 20,         /* ssl.h */
};
#define OBS_KINDS 32    /* the lost counters, per kind: every kind is below this */

/* Every ring record except net.h's tcp_rec starts with this header. */
struct obs_hdr {
    u32 kind;
    u32 pid;      /* tgid */
    u32 tid;
    u32 ppid;
    u32 uid;
    u32 len;      /* bytes of variable payload that follow the fixed part */
    u32 pgid;     /* process group: a shell job / an agent and the tools it spawned */
    u32 pad;
    u64 ts;       /* CLOCK_MONOTONIC ns */
    u64 cgroup_id;
    u64 start_bt; /* the process's start, ns since boot (task->group_leader->start_boottime) */
    char comm[16];
};

/* Paths are walked from dentries into PATH_SLOT-byte slots, leaf first (common.h). */
#define PATH_SLOT 256
#ifndef PATH_DEPTH
#define PATH_DEPTH 40
#endif
#define PATH_BYTES (PATH_SLOT * PATH_DEPTH)

#endif /* OBS_RECORDS_H */
