/* obs-exec's records (bpf/exec.bpf.c → libobs/exec/decode.py): one definition for both sides. */
#ifndef OBS_EXEC_H
#define OBS_EXEC_H
#include "records.h"

#ifndef MAX_ARGV
#define MAX_ARGV 131072 /* power of two, set by --max-argv */
#endif
#define FNAME_BUF 4096
#ifndef FOLD_NS
#define FOLD_NS 0       /* ns of the FileAccess fold window, set by --fold-window; 0: no folding */
#endif

/* ToolExec */
struct exec_rec {
    struct obs_hdr h;
    u32 filename_len;
    u32 cwd_slots;
    u32 argv_len;
    u8 argv_truncated;
    u8 cwd_complete;
    u8 pad[2];
    char filename[FNAME_BUF];
    char cwd[PATH_BYTES];
    char argv[MAX_ARGV];
};

/* ProcessExit */
struct exit_rec {
    struct obs_hdr h;
    u32 exit_code;   /* task_struct.exit_code: status << 8 | core << 7 | signal */
    u32 pad;
    u64 start_ns;    /* task_struct.start_time (CLOCK_MONOTONIC) of the exiting thread's leader */
};

/* SecurityAction: sec_rec.action */
#define SEC_SETUID 1
#define SEC_SETREUID 2
#define SEC_SETRESUID 3
#define SEC_PTRACE 4
#define SEC_LISTEN 5

struct sec_rec {
    struct obs_hdr h;
    u32 action;
    s32 ret;
    s64 a0, a1, a2;
    u16 family;
    u16 port;       /* host order */
    u8 addr[16];
    u32 pad;
};

/* FileAccess (K_FILE_OPEN): only the path follows the fixed part, so a record is as long as
 * its path (a FileDelete record carries a 4 KiB name before it). */
struct open_rec {
    struct obs_hdr h;
    u32 flags;
    u32 slots;        /* path slots used */
    u32 opens;        /* opens of this file by this thread counted in fold slot `gen`, so far */
    u8 complete;
    u8 pad[3];
    u64 gen;          /* the fold slot (its first open's ts), 0 when this open was not folded */
    char path[PATH_BYTES];
};

/* Folding (FOLD_NS > 0): a thread's repeated write-opens of one file count in a slot; the first
 * open of a slot and the first after each FOLD_NS window send an open_rec, user space reads the
 * slots for the opens in between, and a slot's rest goes out as a fold_rec when the thread opens
 * another file, execs or exits. Every open is counted in exactly one record or slot read. */
struct fold_slot {
    u64 dentry;       /* which file: dentry, inode and mount of the opened struct path */
    u64 inode;
    u64 mnt;
    u64 gen;          /* ts of the slot's first open: names the slot across records */
    u64 last_ts;      /* ts of its latest open */
    u64 emit_ts;      /* ts of its latest open_rec */
    u32 flags;
    u32 opens;        /* opens counted in the slot, cumulative (only the owning thread writes) */
    u32 sent;         /* opens at its latest open_rec */
    u32 pad;
};

/* K_FILE_FOLD: a slot's final count, when its thread moves on (another file, exec, exit). */
struct fold_rec {
    struct obs_hdr h;
    u32 flags;
    u32 opens;        /* the slot's cumulative opens */
    u64 gen;
    u64 last_ts;      /* ts of the slot's latest open: the event's ts */
};

/* FileDelete */
struct file_rec {
    struct obs_hdr h;
    u32 flags;
    s32 dfd;          /* the dirfd the name is relative to (-100 = cwd) */
    u32 slots;        /* path slots used (the base dir) */
    u32 name_len;     /* bytes of the raw pathname in name[] */
    u8 complete;
    u8 op;            /* 0 unlink(at), 1 rmdir, 2 unlinkat(AT_REMOVEDIR) */
    u8 pad[6];
    char name[4096];
    char path[PATH_BYTES];
};

#endif /* OBS_EXEC_H */
