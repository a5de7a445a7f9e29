/* obs-exec: process lifecycle, privilege changes and (with FILES) file writes/deletes.
 * Built only on sched:* and syscalls:* tracepoints: no kprobes or fentry on this kernel.
 * Record layouts are mirrored in libobs/records.py (checked by tests/unit/test_records.py).
 */
#include "common.h"

#define K_EXEC 1
#define K_EXIT 2
#define K_SECURITY 3
#define K_FILE_OPEN 4
#define K_FILE_DELETE 5

#ifndef MAX_ARGV
#define MAX_ARGV 131072 /* power of two, set by --max-argv */
#endif
#define FNAME_BUF 4096

/* ---- ToolExec ------------------------------------------------------------------------------ */
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
/* One slot per possible CPU: too large for the stack or a per-CPU map (32 KiB limit). */
BPF_ARRAY(exec_scratch, struct exec_rec, NCPU);

TRACEPOINT_PROBE(sched, sched_process_exec)
{
    if (obs_filtered_out())
        return 0;
    u32 cpu = bpf_get_smp_processor_id();
    struct exec_rec *r = exec_scratch.lookup(&cpu);
    if (!r)
        return 0;
    obs_fill_hdr(&r->h, K_EXEC);
    void *task = (void *)bpf_get_current_task();

    u16 floc = args->data_loc_filename & 0xFFFF;
    int n = bpf_probe_read_kernel_str(r->filename, sizeof(r->filename), (char *)args + floc);
    r->filename_len = n > 0 ? n - 1 : 0;

    r->cwd_slots = obs_cwd(task, r->cwd, &r->cwd_complete);

    void *mm = obs_read_ptr(task, OFF_TASK_MM);
    u64 start = 0, end = 0;
    bpf_probe_read_kernel(&start, sizeof(start), (char *)mm + OFF_MM_ARG_START);
    bpf_probe_read_kernel(&end, sizeof(end), (char *)mm + OFF_MM_ARG_END);
    u64 len = end > start ? end - start : 0;
    r->argv_truncated = 0;
    if (len > MAX_ARGV) {
        len = MAX_ARGV;
        r->argv_truncated = 1;
    }
    len &= (MAX_ARGV << 1) - 1; /* for the verifier: len <= MAX_ARGV already */
    if (len > MAX_ARGV)
        len = MAX_ARGV;
    if (len && bpf_probe_read_user(r->argv, len, (void *)start) != 0)
        len = 0;
    r->argv_len = len;
    u64 size = offsetof(struct exec_rec, argv) + len;
    if (size > sizeof(*r))
        size = sizeof(*r);
    obs_output(r, size);
    return 0;
}

/* ---- ProcessExit: once per process (group_dead is true on its last thread) ----------------- */
struct exit_rec {
    struct obs_hdr h;
    u32 exit_code;   /* task_struct.exit_code: status << 8 | core << 7 | signal */
    u32 pad;
    u64 start_ns;    /* task_struct.start_time (CLOCK_MONOTONIC) of the exiting thread's leader */
};

TRACEPOINT_PROBE(sched, sched_process_exit)
{
    if (!args->group_dead)
        return 0;
    if (obs_filtered_out())
        return 0;
    struct exit_rec r = {};
    obs_fill_hdr(&r.h, K_EXIT);
    void *task = (void *)bpf_get_current_task();
    r.exit_code = obs_read_u32(task, OFF_TASK_EXIT_CODE);
    void *leader = obs_read_ptr(task, OFF_TASK_GROUP_LEADER);
    bpf_probe_read_kernel(&r.start_ns, sizeof(r.start_ns),
                          (char *)(leader ? leader : task) + OFF_TASK_START_TIME);
    obs_output(&r, sizeof(r));
    return 0;
}

#ifdef FILTER_PID
TRACEPOINT_PROBE(sched, sched_process_fork)
{
    obs_track_fork(bpf_get_current_pid_tgid() >> 32, args->child_pid);
    return 0;
}
#endif

/* ---- SecurityAction: emitted at syscall exit with the result ------------------------------ */
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
BPF_HASH(sec_pending, u32, struct sec_rec, 16384);

static __always_inline int sec_enter(u32 action, s64 a0, s64 a1, s64 a2)
{
    if (obs_filtered_out())
        return 0;
    struct sec_rec r = {};
    r.action = action;
    r.a0 = a0;
    r.a1 = a1;
    r.a2 = a2;
    u32 tid = (u32)bpf_get_current_pid_tgid();
    sec_pending.update(&tid, &r);
    return 0;
}

/* listen(): the address comes from the socket itself, so bind(port 0) and autobind report
 * the port the kernel chose. */
static __always_inline void sec_listen_addr(struct sec_rec *r)
{
    void *sk = obs_fd_sock((void *)bpf_get_current_task(), (int)r->a0);
    if (!sk)
        return;
    bpf_probe_read_kernel(&r->family, 2, (char *)sk + OFF_SKC_FAMILY);
    bpf_probe_read_kernel(&r->port, 2, (char *)sk + OFF_SKC_NUM);
    if (r->family == 2)
        bpf_probe_read_kernel(&r->addr, 4, (char *)sk + OFF_SKC_RCV_SADDR);
    else
        bpf_probe_read_kernel(&r->addr, 16, (char *)sk + OFF_SKC_V6_RCV_SADDR);
}

static __always_inline int sec_exit(long ret)
{
    u32 tid = (u32)bpf_get_current_pid_tgid();
    struct sec_rec *p = sec_pending.lookup(&tid);
    if (!p)
        return 0;
    struct sec_rec r = *p;
    sec_pending.delete(&tid);
    obs_fill_hdr(&r.h, K_SECURITY);
    r.ret = ret;
    if (r.action == SEC_LISTEN)
        sec_listen_addr(&r);
    obs_output(&r, sizeof(r));
    return 0;
}

/* Only changes *to* root by a process that is not root. */
static __always_inline int nonroot(void) { return (u32)bpf_get_current_uid_gid() != 0; }

TRACEPOINT_PROBE(syscalls, sys_enter_setuid)
{
    if (nonroot() && (u32)args->uid == 0)
        sec_enter(SEC_SETUID, (s32)args->uid, -1, -1);
    return 0;
}
TRACEPOINT_PROBE(syscalls, sys_exit_setuid) { return sec_exit(args->ret); }

TRACEPOINT_PROBE(syscalls, sys_enter_setreuid)
{
    if (nonroot() && ((u32)args->ruid == 0 || (u32)args->euid == 0))
        sec_enter(SEC_SETREUID, (s32)args->ruid, (s32)args->euid, -1);
    return 0;
}
TRACEPOINT_PROBE(syscalls, sys_exit_setreuid) { return sec_exit(args->ret); }

TRACEPOINT_PROBE(syscalls, sys_enter_setresuid)
{
    if (nonroot() && ((u32)args->ruid == 0 || (u32)args->euid == 0 || (u32)args->suid == 0))
        sec_enter(SEC_SETRESUID, (s32)args->ruid, (s32)args->euid, (s32)args->suid);
    return 0;
}
TRACEPOINT_PROBE(syscalls, sys_exit_setresuid) { return sec_exit(args->ret); }

#define PTRACE_ATTACH_ 16
#define PTRACE_SEIZE_ 0x4206
TRACEPOINT_PROBE(syscalls, sys_enter_ptrace)
{
    if (args->request == PTRACE_ATTACH_ || args->request == PTRACE_SEIZE_)
        sec_enter(SEC_PTRACE, args->request, args->pid, 0);
    return 0;
}
TRACEPOINT_PROBE(syscalls, sys_exit_ptrace) { return sec_exit(args->ret); }

TRACEPOINT_PROBE(syscalls, sys_enter_listen)
{
    if (obs_filtered_out())
        return 0;
    sec_enter(SEC_LISTEN, args->fd, args->backlog, 0);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_exit_listen) { return sec_exit(args->ret); }

#ifdef FILES
/* ---- FileAccess (opens with write intent) and FileDelete --------------------------------- */
#define WRITE_INTENT (01 | 02 | 0100 | 01000) /* O_WRONLY | O_RDWR | O_CREAT | O_TRUNC */

struct file_rec {
    struct obs_hdr h;
    u32 flags;
    s32 dfd;          /* FileDelete: the dirfd the name is relative to (-100 = cwd) */
    u32 slots;        /* path slots used (FileAccess: the opened file; FileDelete: base dir) */
    u32 name_len;     /* FileDelete: bytes of the raw pathname at the start of buf */
    u8 complete;
    u8 op;            /* FileDelete: 0 unlink(at), 1 rmdir, 2 unlinkat(AT_REMOVEDIR) */
    u8 pad[6];
    /* FileAccess: the path slots from buf[0]. FileDelete: the raw name in the first FNAME_BUF
     * bytes, the base directory's slots after them. Opens carry no name: a FileAccess record
     * of a 6-component path is 1.6 KiB in the ring instead of 5.6, so a burst of them fills
     * the ring 3x later. */
    char buf[FNAME_BUF + PATH_BYTES];
};
BPF_ARRAY(file_scratch, struct file_rec, NCPU);

/* The CPU's scratch record with its header filled, or 0. */
static __always_inline struct file_rec *file_rec_begin(u32 kind)
{
    u32 cpu = bpf_get_smp_processor_id();
    struct file_rec *r = file_scratch.lookup(&cpu);
    if (r)
        obs_fill_hdr(&r->h, kind);
    return r;
}

/* Output up to the last path slot used; the slots start at buf + slots_at. */
static __always_inline void file_rec_emit(struct file_rec *r, u64 slots_at)
{
    u64 size = offsetof(struct file_rec, buf) + slots_at + (u64)r->slots * PATH_SLOT;
    if (size > sizeof(*r))
        size = sizeof(*r);
    obs_output(r, size);
}

struct open_args { u32 flags; };
BPF_HASH(open_pending, u32, struct open_args, 16384);

static __always_inline int open_enter(u64 flags)
{
    if (!(flags & WRITE_INTENT))
        return 0;
    if (obs_filtered_out())
        return 0;
    struct open_args a = {.flags = (u32)flags};
    u32 tid = (u32)bpf_get_current_pid_tgid();
    open_pending.update(&tid, &a);
    return 0;
}

static __always_inline int open_exit(long ret)
{
    u32 tid = (u32)bpf_get_current_pid_tgid();
    struct open_args *a = open_pending.lookup(&tid);
    if (!a)
        return 0;
    u32 flags = a->flags;
    open_pending.delete(&tid);
    if (ret < 0)
        return 0;
    struct file_rec *r = file_rec_begin(K_FILE_OPEN);
    if (!r)
        return 0;
    r->flags = flags;
    r->dfd = 0;
    r->name_len = 0;
    void *file = obs_fd_file((void *)bpf_get_current_task(), (int)ret);
    r->slots = file ? obs_walk_struct_path(file, OFF_FILE_F_PATH, r->buf, &r->complete) : 0;
    file_rec_emit(r, 0);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_enter_openat) { return open_enter(args->flags); }
TRACEPOINT_PROBE(syscalls, sys_exit_openat) { return open_exit(args->ret); }
TRACEPOINT_PROBE(syscalls, sys_enter_open) { return open_enter(args->flags); }
TRACEPOINT_PROBE(syscalls, sys_exit_open) { return open_exit(args->ret); }
TRACEPOINT_PROBE(syscalls, sys_enter_creat) { return open_enter(01 | 0100 | 01000); }
TRACEPOINT_PROBE(syscalls, sys_exit_creat) { return open_exit(args->ret); }
TRACEPOINT_PROBE(syscalls, sys_enter_openat2)
{
    u64 flags = 0;
    bpf_probe_read_user(&flags, sizeof(flags), (void *)args->how); /* open_how.flags first */
    return open_enter(flags);
}
TRACEPOINT_PROBE(syscalls, sys_exit_openat2) { return open_exit(args->ret); }

struct del_args { u64 name; s32 dfd; u8 op; };
BPF_HASH(del_pending, u32, struct del_args, 16384);

static __always_inline int del_enter(s32 dfd, const char *name, u8 op)
{
    if (obs_filtered_out())
        return 0;
    struct del_args a = {.name = (u64)name, .dfd = dfd, .op = op};
    u32 tid = (u32)bpf_get_current_pid_tgid();
    del_pending.update(&tid, &a);
    return 0;
}

static __always_inline int del_exit(long ret)
{
    u32 tid = (u32)bpf_get_current_pid_tgid();
    struct del_args *p = del_pending.lookup(&tid);
    if (!p)
        return 0;
    struct del_args a = *p;
    del_pending.delete(&tid);
    if (ret != 0)
        return 0;
    struct file_rec *r = file_rec_begin(K_FILE_DELETE);
    if (!r)
        return 0;
    r->flags = 0;
    r->dfd = a.dfd;
    r->op = a.op;
    int n = bpf_probe_read_user_str(r->buf, FNAME_BUF, (void *)a.name);
    r->name_len = n > 0 ? n - 1 : 0;
    r->slots = 0;
    r->complete = 1;
    if (n > 0 && r->buf[0] != '/') {
        void *task = (void *)bpf_get_current_task();
        char *base = r->buf + FNAME_BUF;
        if (a.dfd == -100) {
            r->slots = obs_cwd(task, base, &r->complete);
        } else {
            void *file = obs_fd_file(task, a.dfd);
            r->slots = file ? obs_walk_struct_path(file, OFF_FILE_F_PATH, base, &r->complete) : 0;
        }
    }
    file_rec_emit(r, FNAME_BUF);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_enter_unlink) { return del_enter(-100, args->pathname, 0); }
TRACEPOINT_PROBE(syscalls, sys_exit_unlink) { return del_exit(args->ret); }
TRACEPOINT_PROBE(syscalls, sys_enter_rmdir) { return del_enter(-100, args->pathname, 1); }
TRACEPOINT_PROBE(syscalls, sys_exit_rmdir) { return del_exit(args->ret); }
TRACEPOINT_PROBE(syscalls, sys_enter_unlinkat)
{
    return del_enter(args->dfd, args->pathname, (args->flag & 0x200) ? 2 : 0);
}
TRACEPOINT_PROBE(syscalls, sys_exit_unlinkat) { return del_exit(args->ret); }
#endif /* FILES */
