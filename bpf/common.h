/* Shared by every obs BPF program (compiled by bcc).
 *
 * Options arrive as -D constants validated in Python (libobs/kernel/program.py); nothing here is
 * text from a command line. Kernel struct fields are read at offsets taken from
 * /sys/kernel/btf/vmlinux at start-up (OFF_* constants), never from the headers bcc compiles
 * against: those belong to another kernel build.
 */
#ifndef OBS_COMMON_H
#define OBS_COMMON_H

#include <uapi/linux/ptrace.h>
#include "records.h"

#ifndef RING_PAGES
#define RING_PAGES 4096
#endif
#ifndef NCPU
#define NCPU 64
#endif


BPF_RINGBUF_OUTPUT(events, RING_PAGES);
/* Fallback with a lock of its own, for reservations that fail transiently (below). */
BPF_RINGBUF_OUTPUT(spill, 256);
/* Records the ring buffer refused, per record kind: reported, never silent. */
BPF_PERCPU_ARRAY(lost, u64, OBS_KINDS);

static __always_inline void obs_count_lost_kind(u32 kind)
{
    u32 k = kind < OBS_KINDS ? kind : 0;
    u64 *n = lost.lookup(&k);
    if (n)
        __sync_fetch_and_add(n, 1);
}

static __always_inline void obs_count_lost(void)
{
    obs_count_lost_kind(0);
}

/* rec must start with a struct obs_hdr.
 * Since 6.15 a ring buffer reservation takes a resilient spinlock that can fail instead of
 * spinning; measured here: ~1 in 4000 records at 100k/s with the ring nearly empty. A retry
 * and then a spill ring with its own lock come before a record is counted as lost. */
static __always_inline int obs_output(void *rec, u64 size)
{
    if (!events.ringbuf_output(rec, size, 0))
        return 0;
    if (!events.ringbuf_output(rec, size, 0))
        return 0;
    if (!spill.ringbuf_output(rec, size, 0))
        return 0;
    int err = spill.ringbuf_output(rec, size, 0);
    if (err)
        obs_count_lost_kind(((struct obs_hdr *)rec)->kind);
    return err;
}

/* ---- kernel struct access through BTF offsets --------------------------------------------- */

static __always_inline void *obs_read_ptr(void *base, u64 off)
{
    void *v = 0;
    bpf_probe_read_kernel(&v, sizeof(v), (char *)base + off);
    return v;
}

static __always_inline u32 obs_read_u32(void *base, u64 off)
{
    u32 v = 0;
    bpf_probe_read_kernel(&v, sizeof(v), (char *)base + off);
    return v;
}

static __always_inline u32 obs_ppid(void *task)
{
    void *parent = obs_read_ptr(task, OFF_TASK_REAL_PARENT);
    return parent ? obs_read_u32(parent, OFF_TASK_TGID) : 0;
}

/* task->signal->pids[PIDTYPE_PGID]->numbers[0].nr: the pgid in the initial pid namespace */
static __always_inline u32 obs_pgid(void *task)
{
    void *sig = obs_read_ptr(task, OFF_TASK_SIGNAL);
    if (!sig)
        return 0;
    void *pid = obs_read_ptr(sig, OFF_SIGNAL_PIDS + 2 * sizeof(void *));
    return pid ? obs_read_u32(pid, OFF_PID_NUMBERS + OFF_UPID_NR) : 0;
}

static __always_inline void obs_fill_hdr(struct obs_hdr *h, u32 kind)
{
    u64 id = bpf_get_current_pid_tgid();
    void *task = (void *)bpf_get_current_task();
    h->kind = kind;
    h->pid = id >> 32;
    h->tid = (u32)id;
    h->ppid = obs_ppid(task);
    h->pgid = obs_pgid(task);
    h->pad = 0;
    h->uid = (u32)bpf_get_current_uid_gid();
    h->len = 0;
    h->ts = bpf_ktime_get_ns();
    h->cgroup_id = bpf_get_current_cgroup_id();
    void *leader = obs_read_ptr(task, OFF_TASK_GROUP_LEADER);
    h->start_bt = 0;
    bpf_probe_read_kernel(&h->start_bt, sizeof(h->start_bt),
                          (char *)(leader ? leader : task) + OFF_TASK_START_BOOTTIME);
    bpf_get_current_comm(&h->comm, sizeof(h->comm));
}

/* ---- in-kernel filters: pid (with descendants), comm, cgroup subtree ---------------------- */

#ifdef FILTER_PID
/* tgids being watched; seeded from user space, extended on fork (below). */
BPF_HASH(tracked, u32, u8, 65536);
#endif
#ifdef FILTER_COMM
struct obs_comm { char c[16]; };
BPF_ARRAY(filter_comm, struct obs_comm, 1);
#endif
#ifdef FILTER_CGROUP
BPF_CGROUP_ARRAY(filter_cgroup, 1);
#endif

/* Returns 1 when the current task must be ignored. */
static __always_inline int obs_filtered_out(void)
{
#ifdef FILTER_PID
    u32 tgid = bpf_get_current_pid_tgid() >> 32;
    if (!tracked.lookup(&tgid))
        return 1;
#endif
#ifdef FILTER_COMM
    int zero = 0;
    struct obs_comm *want = filter_comm.lookup(&zero);
    char comm[16] = {};
    bpf_get_current_comm(&comm, sizeof(comm));
    if (!want)
        return 1;
#pragma unroll
    for (int i = 0; i < 16; i++) {
        if (comm[i] != want->c[i])
            return 1;
        if (comm[i] == 0)
            break;
    }
#endif
#ifdef FILTER_CGROUP
    if (filter_cgroup.check_current_task(0) != 1)
        return 1;
#endif
    return 0;
}

#ifdef FILTER_PID
/* A watched process's children are watched too (every program that filters by pid). */
TRACEPOINT_PROBE(sched, sched_process_fork)
{
    u32 parent = bpf_get_current_pid_tgid() >> 32, child = args->child_pid;
    u8 one = 1;
    if (tracked.lookup(&parent))
        tracked.update(&child, &one);
    return 0;
}
#endif

/* ---- paths: walk dentries up to the global root ------------------------------------------ *
 * No bpf_d_path on tracepoints, so the walk is done here: each component goes into its own
 * PATH_SLOT-byte slot, leaf first (slot i written at iteration i, so the verifier's states
 * converge instead of multiplying); a slot left empty marks a mount crossing. Mounts are
 * crossed through struct mount (mnt_parent / mnt_mountpoint), found from its embedded vfsmount.
 * User space (libobs/kernel/records.py) reverses and joins the slots.
 */

/* returns slots used; *complete = 1 when the walk reached the root */
static __always_inline u32 obs_walk_path(void *dentry, void *vfsmnt, char *buf, u8 *complete)
{
    void *mnt = (char *)vfsmnt - OFF_MOUNT_MNT;   /* struct mount containing vfsmnt */
    u32 used = 0;
    *complete = 0;
    /* A real bounded loop (kernel >= 5.3): unrolled copies blow the verifier's size limit. */
#pragma clang loop unroll(disable)
    for (u32 i = 0; i < PATH_DEPTH; i++) {
        char *slot = buf + i * PATH_SLOT;
        slot[0] = 0;
        void *root = obs_read_ptr(vfsmnt, OFF_VFSMOUNT_MNT_ROOT);
        void *parent = obs_read_ptr(dentry, OFF_DENTRY_D_PARENT);
        if (dentry == root || dentry == parent) {
            void *mparent = obs_read_ptr(mnt, OFF_MOUNT_MNT_PARENT);
            if (mparent == mnt || !mparent) {
                *complete = 1;
                break;
            }
            dentry = obs_read_ptr(mnt, OFF_MOUNT_MNT_MOUNTPOINT);
            mnt = mparent;
            vfsmnt = (char *)mnt + OFF_MOUNT_MNT;
        } else {
            void *name = obs_read_ptr(dentry, OFF_DENTRY_D_NAME + OFF_QSTR_NAME);
            bpf_probe_read_kernel_str(slot, PATH_SLOT, name);
            dentry = parent;
        }
        used = i + 1;
    }
    return used;
}

/* struct path {vfsmount *mnt; dentry *dentry} at base+off */
static __always_inline u32 obs_walk_struct_path(void *base, u64 off, char *buf, u8 *complete)
{
    void *mnt = obs_read_ptr(base, off + OFF_PATH_MNT);
    void *dentry = obs_read_ptr(base, off + OFF_PATH_DENTRY);
    if (!mnt || !dentry) {
        *complete = 0;
        return 0;
    }
    return obs_walk_path(dentry, mnt, buf, complete);
}

static __always_inline u32 obs_cwd(void *task, char *buf, u8 *complete)
{
    void *fs = obs_read_ptr(task, OFF_TASK_FS);
    if (!fs) {
        *complete = 0;
        return 0;
    }
    return obs_walk_struct_path(fs, OFF_FS_PWD, buf, complete);
}

/* The struct file behind fd of the current task, or 0. */
static __always_inline void *obs_fd_file(void *task, int fd)
{
    if (fd < 0)
        return 0;
    void *files = obs_read_ptr(task, OFF_TASK_FILES);
    if (!files)
        return 0;
    void *fdt = obs_read_ptr(files, OFF_FILES_FDT);
    if (!fdt)
        return 0;
#if OFF_FDTABLE_FD == OFF_FDTABLE_MAX_FDS + 8
    /* max_fds and fd side by side: one read (this runs on every traced write-open) */
    struct { u32 max; u32 pad; void **fd; } t = {};
    bpf_probe_read_kernel(&t, sizeof(t), (char *)fdt + OFF_FDTABLE_MAX_FDS);
    u32 max = t.max;
    void **fdarr = t.fd;
#else
    u32 max = obs_read_u32(fdt, OFF_FDTABLE_MAX_FDS);
    void **fdarr = obs_read_ptr(fdt, OFF_FDTABLE_FD);
#endif
    if ((u32)fd >= max || !fdarr)
        return 0;
    return obs_read_ptr(fdarr, (u64)fd * sizeof(void *));
}

/* The struct sock behind a socket fd (file->private_data is the struct socket), or 0. */
static __always_inline void *obs_fd_sock(void *task, int fd)
{
    void *file = obs_fd_file(task, fd);
    if (!file)
        return 0;
    void *sock = obs_read_ptr(file, OFF_FILE_PRIVATE_DATA);
    return sock ? obs_read_ptr(sock, OFF_SOCKET_SK) : 0;
}

#endif /* OBS_COMMON_H */
