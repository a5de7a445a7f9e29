/* obs-exec: process lifecycle, privilege changes and (with FILES) file writes/deletes.
 * Built only on sched:* and syscalls:* tracepoints: no kprobes or fentry on this kernel.
 * Records: exec.h (read by libobs/exec/decode.py through libobs/kernel/layout.py).
 */
#include "common.h"
#include "exec.h"

/* ---- ToolExec ------------------------------------------------------------------------------ */
/* One slot per possible CPU: too large for the stack or a per-CPU map (32 KiB limit). */
BPF_ARRAY(exec_scratch, struct exec_rec, NCPU);

#if defined(FILES) && FOLD_NS
static __always_inline void fold_end(void);
#endif

TRACEPOINT_PROBE(sched, sched_process_exec)
{
#if defined(FILES) && FOLD_NS
    fold_end();
#endif
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

TRACEPOINT_PROBE(sched, sched_process_exit)
{
#if defined(FILES) && FOLD_NS
    fold_end(); /* every thread's exit */
#endif
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

/* ---- SecurityAction: emitted at syscall exit with the result ------------------------------ */

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

BPF_ARRAY(file_scratch, struct file_rec, NCPU);
BPF_ARRAY(open_scratch, struct open_rec, NCPU);

/* The CPU's FileDelete scratch record with its header filled, or 0. */
static __always_inline struct file_rec *file_rec_begin(u32 kind)
{
    u32 cpu = bpf_get_smp_processor_id();
    struct file_rec *r = file_scratch.lookup(&cpu);
    if (r)
        obs_fill_hdr(&r->h, kind);
    return r;
}

/* Output up to the last path slot used. */
static __always_inline void file_rec_emit(struct file_rec *r)
{
    u64 size = offsetof(struct file_rec, path) + (u64)r->slots * PATH_SLOT;
    if (size > sizeof(*r))
        size = sizeof(*r);
    obs_output(r, size);
}

/* A FileAccess record: the walk of the opened file's path, and its fold slot's count. */
static __always_inline void open_rec_emit(void *file, u32 flags, u32 opens, u64 gen)
{
    u32 cpu = bpf_get_smp_processor_id();
    struct open_rec *r = open_scratch.lookup(&cpu);
    if (!r)
        return;
    obs_fill_hdr(&r->h, K_FILE_OPEN);
    r->flags = flags;
    r->opens = opens;
    r->gen = gen;
    r->slots = obs_walk_struct_path(file, OFF_FILE_F_PATH, r->path, &r->complete);
    u64 size = offsetof(struct open_rec, path) + (u64)r->slots * PATH_SLOT;
    if (size > sizeof(*r))
        size = sizeof(*r);
    obs_output(r, size);
}

#if FOLD_NS
/* One fold slot per thread, keyed by tid: only that thread writes it (user space only reads),
 * so no locks. When the map is full an open is simply not folded. */
BPF_HASH(fold, u32, struct fold_slot, 65536);

/* The slot's count since its latest open_rec, as a fold_rec (user space subtracts what it
 * already read from the slot). */
static __always_inline void fold_tail(struct fold_slot *s)
{
    if (s->opens == s->sent)
        return;
    struct fold_rec r = {};
    obs_fill_hdr(&r.h, K_FILE_FOLD);
    r.flags = s->flags;
    r.opens = s->opens;
    r.gen = s->gen;
    r.last_ts = s->last_ts;
    obs_output(&r, sizeof(r));
}

/* The thread execs or exits: its slot's rest goes out now. */
static __always_inline void fold_end(void)
{
    u32 tid = (u32)bpf_get_current_pid_tgid();
    struct fold_slot *s = fold.lookup(&tid);
    if (!s)
        return;
    fold_tail(s);
    fold.delete(&tid);
}
#endif

/* The opened file's identity, the fold key: f_inode and f_path {mnt, dentry}. They lie within
 * 40 bytes of each other in struct file: one read instead of three. */
struct file_id { u64 inode, mnt, dentry; };
#define FID_SPAN (OFF_FILE_F_PATH + 16 - OFF_FILE_F_INODE)

static __always_inline void file_id(void *file, struct file_id *id)
{
#if OFF_FILE_F_PATH > OFF_FILE_F_INODE && FID_SPAN <= 64 && OFF_FILE_F_INODE % 8 == 0 \
    && OFF_FILE_F_PATH % 8 == 0
    u64 w[FID_SPAN / 8] = {};
    bpf_probe_read_kernel(w, sizeof(w), (char *)file + OFF_FILE_F_INODE);
    id->inode = w[0];
    id->mnt = w[(OFF_FILE_F_PATH + OFF_PATH_MNT - OFF_FILE_F_INODE) / 8];
    id->dentry = w[(OFF_FILE_F_PATH + OFF_PATH_DENTRY - OFF_FILE_F_INODE) / 8];
#else
    id->inode = (u64)obs_read_ptr(file, OFF_FILE_F_INODE);
    id->mnt = (u64)obs_read_ptr(file, OFF_FILE_F_PATH + OFF_PATH_MNT);
    id->dentry = (u64)obs_read_ptr(file, OFF_FILE_F_PATH + OFF_PATH_DENTRY);
#endif
}

/* An open's flags, read at syscall exit from the registers the syscall was entered with (they
 * are saved on entry and only ax changes): no sys_enter program and no map to carry them across,
 * which was most of the cost of an open. */
#define FLAGS_OPENAT 1  /* openat(dfd, name, flags, mode): flags in dx */
#define FLAGS_OPEN 2    /* open(name, flags, mode): flags in si */
#define FLAGS_OPENAT2 3 /* openat2(dfd, name, how, size): how in dx, how->flags in user memory */
#define FLAGS_CREAT 4   /* creat(name, mode) is open(O_WRONLY | O_CREAT | O_TRUNC) */

static __always_inline u64 open_flags(int how)
{
    if (how == FLAGS_CREAT)
        return 01 | 0100 | 01000;
    char *regs = (char *)bpf_task_pt_regs(bpf_get_current_task_btf());
    u64 v = 0;
    bpf_probe_read_kernel(&v, sizeof(v), regs + (how == FLAGS_OPEN ? OFF_PT_REGS_SI
                                                                   : OFF_PT_REGS_DX));
    if (how == FLAGS_OPENAT2) {
        u64 flags = 0;
        bpf_probe_read_user(&flags, sizeof(flags), (void *)v); /* open_how.flags first */
        v = flags;
    }
    return v;
}

static __always_inline int open_exit(long ret, int how)
{
    if (ret < 0)
        return 0;
    u64 flags64 = open_flags(how);
    if (!(flags64 & WRITE_INTENT))
        return 0;
    if (obs_filtered_out())
        return 0;
    u32 flags = (u32)flags64;
    void *file = obs_fd_file((void *)bpf_get_current_task(), (int)ret);
    u32 opens = 1;
    u64 gen = 0;
#if FOLD_NS
    /* Same file (dentry, inode, mount) and flags as this thread's slot: count it, and send a
     * record only once per FOLD_NS. The dentry walk and the record are the expensive part. */
    u32 tid = (u32)bpf_get_current_pid_tgid();
    struct file_id id = {};
    if (file)
        file_id(file, &id);
    u64 now = bpf_ktime_get_ns();
    struct fold_slot *s = file ? fold.lookup(&tid) : 0;
    if (s && s->dentry == id.dentry && s->inode == id.inode && s->mnt == id.mnt &&
        s->flags == flags) {
        s->opens++;
        s->last_ts = now;
        if (now - s->emit_ts < FOLD_NS)
            return 0;
        s->emit_ts = now;
        s->sent = s->opens;
        opens = s->opens;
        gen = s->gen;
    } else {
        if (s)
            fold_tail(s);
        struct fold_slot n = {.dentry = id.dentry, .inode = id.inode, .mnt = id.mnt, .gen = now,
                              .last_ts = now, .emit_ts = now, .flags = flags, .opens = 1,
                              .sent = 1};
        /* replaces the old slot whole, so a reader never sees half of each */
        if (file && fold.update(&tid, &n) == 0)
            gen = now;
    }
#endif
    open_rec_emit(file, flags, opens, gen);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_exit_openat) { return open_exit(args->ret, FLAGS_OPENAT); }
TRACEPOINT_PROBE(syscalls, sys_exit_open) { return open_exit(args->ret, FLAGS_OPEN); }
TRACEPOINT_PROBE(syscalls, sys_exit_creat) { return open_exit(args->ret, FLAGS_CREAT); }
TRACEPOINT_PROBE(syscalls, sys_exit_openat2) { return open_exit(args->ret, FLAGS_OPENAT2); }

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
    int n = bpf_probe_read_user_str(r->name, sizeof(r->name), (void *)a.name);
    r->name_len = n > 0 ? n - 1 : 0;
    r->slots = 0;
    r->complete = 1;
    if (n > 0 && r->name[0] != '/') {
        void *task = (void *)bpf_get_current_task();
        if (a.dfd == -100) {
            r->slots = obs_cwd(task, r->path, &r->complete);
        } else {
            void *file = obs_fd_file(task, a.dfd);
            r->slots = file ? obs_walk_struct_path(file, OFF_FILE_F_PATH, r->path, &r->complete) : 0;
        }
    }
    file_rec_emit(r);
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
