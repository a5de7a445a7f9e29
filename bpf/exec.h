/* obs-exec's records (bpf/exec.bpf.c → libobs/exec/decode.py): one definition for both sides. */
#ifndef OBS_EXEC_H
#define OBS_EXEC_H
#include "records.h"

#ifndef MAX_ARGV
#define MAX_ARGV 131072 /* power of two, set by --max-argv */
#endif
#define FNAME_BUF 4096

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

/* FileAccess (K_FILE_OPEN) and FileDelete */
struct file_rec {
    struct obs_hdr h;
    u32 flags;
    s32 dfd;          /* FileDelete: the dirfd the name is relative to (-100 = cwd) */
    u32 slots;        /* path slots used (FileAccess: the opened file; FileDelete: base dir) */
    u32 name_len;     /* FileDelete: bytes of the raw pathname in name[] */
    u8 complete;
    u8 op;            /* FileDelete: 0 unlink(at), 1 rmdir, 2 unlinkat(AT_REMOVEDIR) */
    u8 pad[6];
    char name[4096];
    char path[PATH_BYTES];
};

#endif /* OBS_EXEC_H */
