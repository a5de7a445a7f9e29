/* obs-net and obs-llm: connections, TLS server names, DNS, and per-request TCP timing.
 * Built only on tracepoints (syscalls:*, sock:*, tcp:*): no kprobes or fentry on this kernel.
 * Record layouts are mirrored in libobs/net/decode.py (checked by tests/kernel/test_obs_net.py).
 *
 * Feature flags (-D, set by the tools):
 *   SNI  capture the first payload write of every TCP connection (up to HELLO_CAP bytes, first
 *        iovecs of writev/sendmsg too); user space parses the ClientHello.
 *   DNS  capture queries sent to port 53 (sendto/sendmsg/sendmmsg with an address, or any
 *        write on a socket connected to port 53) and the replies read on the same fd.
 *   LLM  per-send (sock:sock_send_length) and per-received-segment (tcp:tcp_probe) records of
 *        tracked TCP sockets; user space untracks a socket once its ClientHello shows it is
 *        not one to follow.
 *
 * Sockets are tracked from connect(): fd -> file -> socket -> sock at offsets from BTF.
 */
#include "common.h"
#include "net.h"

/* record kinds (< OBS_KINDS of common.h, so lost records are counted per kind) */

#define AF_INET_ 2
#define AF_INET6_ 10
#define SOCK_STREAM_ 1
#define SOCK_DGRAM_ 2
#define IPPROTO_TCP_ 6
#define TCP_ESTABLISHED_ 1
#define TCP_CLOSE_ 7
#define EINPROGRESS_ 115
#define DNS_PORT_BE 0x3500 /* htons(53) as it sits in a sockaddr read on little-endian x86 */

#define DNS_CAP 1024
#define MAX_IOV 4
#define MAX_MMSG 4

/* ---- state ----------------------------------------------------------------------------------- */

#define F_HELLO 1 /* first payload write not seen yet */
#define F_DNS 2   /* peer port 53: capture what is written and read */
#define F_LLM 4   /* stash the head of each send for K_SEND */

struct fd_info {
    u64 sk;
    struct peer peer;
    u8 proto;     /* SOCK_STREAM or SOCK_DGRAM */
    u8 flags;
    u8 pad[2];
};
/* (tgid << 32 | fd) of connected sockets of watched processes */
BPF_TABLE("lru_hash", u64, struct fd_info, fds, 65536);

#define S_LLM 1
struct sk_info {
    u32 tgid;
    s32 fd;
    u32 flags;
    u32 pad;
};
/* struct sock * of TCP connections: state changes (and, with S_LLM, sends and segments) */
BPF_TABLE("lru_hash", u64, struct sk_info, sks, 65536);

/* ---- records --------------------------------------------------------------------------------- */

BPF_ARRAY(payload_scratch, struct payload_rec, NCPU);

/* K_SEND / K_DATA / K_STATE: no process header — tcp_probe runs in softirq context, where the
 * current task is not the socket's owner. User space knows the owner from K_CONNECT. */

/* ---- helpers --------------------------------------------------------------------------------- */
static __always_inline u64 fd_key(s32 fd)
{
    return (bpf_get_current_pid_tgid() & 0xFFFFFFFF00000000ULL) | (u32)fd;
}

/* sockaddr_in / sockaddr_in6 from user memory; -1 for any other family */
static __always_inline int read_sockaddr(u64 uaddr, struct peer *p)
{
    u16 family = 0;
    if (!uaddr || bpf_probe_read_user(&family, sizeof(family), (void *)uaddr))
        return -1;
    if (family == AF_INET_) {
        bpf_probe_read_user(&p->port, 2, (void *)(uaddr + 2));
        bpf_probe_read_user(p->addr, 4, (void *)(uaddr + 4));
    } else if (family == AF_INET6_) {
        bpf_probe_read_user(&p->port, 2, (void *)(uaddr + 2));
        bpf_probe_read_user(p->addr, 16, (void *)(uaddr + 8));
    } else {
        return -1;
    }
    p->family = family;
    return 0;
}

/* The struct socket behind fd, or 0. */
static __always_inline void *fd_socket(s32 fd)
{
    void *file = obs_fd_file((void *)bpf_get_current_task(), fd);
    return file ? obs_read_ptr(file, OFF_FILE_PRIVATE_DATA) : 0;
}

/* v = min(v, max) in a form the verifier sees: the empty asm hides what the compiler already
 * knows about v, so the comparison is kept right before the use. */
#define CLAMP(v, max)                      \
    do {                                   \
        asm volatile("" : "+r"(v));        \
        if ((v) > (max))                   \
            (v) = (max);                   \
    } while (0)

struct iov_u {
    u64 base;
    u64 len;
};

/* Up to cap bytes from a buffer (vec == 0) or from the first MAX_IOV iovecs (vec == 1). */
static __always_inline u32 copy_user(char *dst, u64 ptr, u64 len, u8 vec, u32 cap)
{
    if (!vec) {
        if (len > cap)
            len = cap;
        CLAMP(len, HELLO_CAP);
        if (!len || bpf_probe_read_user(dst, len, (void *)ptr))
            return 0;
        return len;
    }
    u32 used = 0;
#pragma unroll
    for (int i = 0; i < MAX_IOV; i++) {
        if (i >= len || used >= cap)
            break;
        struct iov_u v = {};
        if (bpf_probe_read_user(&v, sizeof(v), (void *)(ptr + i * sizeof(v))))
            break;
        u64 n = v.len;
        if (n > cap - used)
            n = cap - used;
        CLAMP(n, HELLO_CAP);
        u32 off = used;
        asm volatile("" : "+r"(off));
        off &= HELLO_CAP - 1; /* used < cap <= HELLO_CAP: a no-op the verifier needs */
        if (n && bpf_probe_read_user(dst + off, n, (void *)v.base))
            break;
        used += n;
    }
    return used;
}

static __always_inline void emit_payload(u32 kind, s32 fd, u64 sk, struct peer *p, u8 proto,
                                         u8 dir, u64 ptr, u64 len, u8 vec, u32 cap, u32 total)
{
    u32 cpu = bpf_get_smp_processor_id();
    struct payload_rec *r = payload_scratch.lookup(&cpu);
    if (!r)
        return;
    obs_fill_hdr(&r->h, kind);
    r->fd = fd;
    r->sk = sk;
    r->dir = dir;
    r->proto = proto;
    r->peer = *p;
    r->total = total;
    u32 n = copy_user(r->data, ptr, len, vec, cap);
    if (n > total)
        n = total;
    r->cap = n;
    u64 size = offsetof(struct payload_rec, data) + n;
    CLAMP(size, sizeof(*r));
    obs_output(r, size);
}

/* ---- connect(): Egress, and the start of tracking -------------------------------------------- */
struct conn_args {
    u64 uaddr;
    s32 fd;
    u32 pad;
};
BPF_HASH(connect_args, u32, struct conn_args, 16384);

TRACEPOINT_PROBE(syscalls, sys_enter_connect)
{
    if (obs_filtered_out())
        return 0;
    struct conn_args a = {.uaddr = (u64)args->uservaddr, .fd = args->fd};
    u32 tid = (u32)bpf_get_current_pid_tgid();
    connect_args.update(&tid, &a);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_exit_connect)
{
    u32 tid = (u32)bpf_get_current_pid_tgid();
    struct conn_args *ap = connect_args.lookup(&tid);
    if (!ap)
        return 0;
    struct conn_args a = *ap;
    connect_args.delete(&tid);
    long ret = args->ret;
    if (ret != 0 && ret != -EINPROGRESS_)
        return 0;
    struct conn_rec r = {};
    if (read_sockaddr(a.uaddr, &r.peer))
        return 0;
    void *sock = fd_socket(a.fd);
    if (!sock)
        return 0;
    void *sk = obs_read_ptr(sock, OFF_SOCKET_SK);
    u16 type = 0;
    bpf_probe_read_kernel(&type, sizeof(type), (char *)sock + OFF_SOCKET_TYPE);
    if (!sk || (type != SOCK_STREAM_ && type != SOCK_DGRAM_))
        return 0;
    u64 skey = (u64)sk;
    u32 tgid = bpf_get_current_pid_tgid() >> 32;
    if (type == SOCK_STREAM_) {
        /* connect() again on a non-blocking socket returns 0 once it is established: the
         * same connection, already reported */
        struct sk_info *seen = sks.lookup(&skey);
        if (seen && seen->tgid == tgid && seen->fd == a.fd)
            return 0;
        /* tracked before the state is read, so no later transition can be missed */
        struct sk_info si = {.tgid = tgid, .fd = a.fd};
#ifdef LLM
        si.flags = S_LLM;
#endif
        sks.update(&skey, &si);
        bpf_probe_read_kernel(&r.state, 1, (char *)sk + OFF_SKC_STATE);
    }
    struct fd_info fi = {.sk = skey, .peer = r.peer, .proto = type};
#ifdef SNI
    if (type == SOCK_STREAM_)
        fi.flags |= F_HELLO;
#endif
#ifdef DNS
    if (r.peer.port == DNS_PORT_BE)
        fi.flags |= F_DNS;
#endif
#ifdef LLM
    if (type == SOCK_STREAM_)
        fi.flags |= F_LLM;
#endif
    u64 key = fd_key(a.fd);
    if (fi.flags)
        fds.update(&key, &fi);
    else
        fds.delete(&key);
    obs_fill_hdr(&r.h, K_CONNECT);
    r.fd = a.fd;
    r.ret = ret;
    r.sk = skey;
    r.proto = type;
    obs_output(&r, sizeof(r));
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_enter_close)
{
    u64 key = fd_key(args->fd);
    fds.delete(&key);
    return 0;
}

/* ---- writes: ClientHello, DNS queries, heads of sends ----------------------------------------- */
struct head_stash {
    u64 sk;
    u64 ts;
    u8 head[HEAD_LEN];
};
BPF_HASH(send_heads, u32, struct head_stash, 16384);

/* A DNS query in one message of a send-like call: a buffer (vec 0) or an iovec array (vec 1),
 * with the destination given with it (name) or the socket's connected peer. */
static __always_inline void dns_out(s32 fd, u64 key, struct fd_info *fip, u64 ptr, u64 len,
                                    u8 vec, u64 name)
{
#ifdef DNS
    struct peer dst = {};
    u64 sk = 0;
    u8 proto = SOCK_DGRAM_;
    if (name) {
        if (read_sockaddr(name, &dst) || dst.port != DNS_PORT_BE)
            return;
    } else if (fip && (fip->flags & F_DNS)) {
        dst = fip->peer;
        sk = fip->sk;
        proto = fip->proto;
    } else {
        return;
    }
    if (!fip && obs_filtered_out())
        return;
    /* an iovec array's byte count is known only at exit: report what was captured */
    u64 total = vec ? DNS_CAP : len;
    CLAMP(total, 0xFFFFFFFF);
    emit_payload(K_DNS, fd, sk, &dst, proto, 0, ptr, len, vec, DNS_CAP, total);
    if (!fip) { /* unconnected UDP: remember the fd so its replies are read */
        struct fd_info nfi = {.peer = dst, .proto = SOCK_DGRAM_, .flags = F_DNS};
        fds.update(&key, &nfi);
    }
#endif
}

#ifdef LLM
/* The first HEAD_LEN bytes a send carries, across up to MAX_IOV iovecs: rustls writes a TLS 1.3
 * change_cipher_spec and its Finished as one writev of two buffers (6 + 74 bytes), and only
 * the two together say "handshake done" (libobs/net/llmcalls.py). The staging buffer is twice
 * HEAD_LEN so the verifier sees every copy in bounds (offset < HEAD_LEN, length <= HEAD_LEN). */
static __always_inline void copy_head(u8 *head, u64 ptr, u64 len, u8 vec)
{
    u8 buf[2 * HEAD_LEN] = {};
    if (!vec) {
        CLAMP(len, HEAD_LEN);
        if (len)
            bpf_probe_read_user(buf, len, (void *)ptr);
    } else {
        u32 used = 0;
#pragma unroll
        for (int i = 0; i < MAX_IOV; i++) {
            if (i >= len || used >= HEAD_LEN)
                break;
            struct iov_u v = {};
            if (bpf_probe_read_user(&v, sizeof(v), (void *)(ptr + i * sizeof(v))))
                break;
            u64 n = v.len;
            if (n > HEAD_LEN - used)
                n = HEAD_LEN - used;
            CLAMP(n, HEAD_LEN);
            u32 off = used;
            asm volatile("" : "+r"(off));
            off &= HEAD_LEN - 1; /* used < HEAD_LEN: a no-op the verifier needs */
            u8 *dst = buf;
            asm volatile("" : "+r"(dst)); /* else clang, knowing buf is aligned, ORs off in */
            if (n && bpf_probe_read_user(dst + off, n, (void *)v.base))
                break;
            used += n;
        }
    }
    __builtin_memcpy(head, buf, HEAD_LEN);
}
#endif

/* The first payload write of a connection (ClientHello) and, for obs-llm, the head of every
 * send, picked up by sock_send_length. */
static __always_inline void first_write(s32 fd, u64 key, struct fd_info *fip, u64 ptr, u64 len,
                                        u8 vec)
{
    struct fd_info fi = *fip;
#ifdef SNI
    if (fi.flags & F_HELLO) {
        void *sock = fd_socket(fd);
        void *sk = sock ? obs_read_ptr(sock, OFF_SOCKET_SK) : 0;
        if ((u64)sk != fi.sk) { /* the fd was reused without a close() we saw */
            fds.delete(&key);
            return;
        }
        fi.flags &= ~F_HELLO;
        if (fi.flags)
            fds.update(&key, &fi);
        else
            fds.delete(&key);
        u64 total = vec ? HELLO_CAP : len;
        CLAMP(total, 0xFFFFFFFF);
        emit_payload(K_HELLO, fd, fi.sk, &fi.peer, fi.proto, 0, ptr, len, vec, HELLO_CAP,
                     total);
    }
#endif
#ifdef LLM
    if (fi.flags & F_LLM) {
        struct head_stash hs = {.sk = fi.sk, .ts = bpf_ktime_get_ns()};
        copy_head(hs.head, ptr, len, vec);
        u32 tid = (u32)bpf_get_current_pid_tgid();
        send_heads.update(&tid, &hs);
    }
#endif
}

static __always_inline void on_send(s32 fd, u64 ptr, u64 len, u8 vec, u64 name)
{
    u64 key = fd_key(fd);
    struct fd_info *fip = fds.lookup(&key);
    dns_out(fd, key, fip, ptr, len, vec, name);
    if (fip)
        first_write(fd, key, fip, ptr, len, vec);
}

TRACEPOINT_PROBE(syscalls, sys_enter_write)
{
    on_send(args->fd, (u64)args->buf, args->count, 0, 0);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_enter_sendto)
{
    on_send(args->fd, (u64)args->buff, args->len, 0, (u64)args->addr);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_enter_writev)
{
    on_send(args->fd, (u64)args->vec, args->vlen, 1, 0);
    return 0;
}

/* struct user_msghdr (x86_64): name @0, iov @16, iovlen @24; struct mmsghdr is 64 bytes */
struct msghdr_u {
    u64 name;
    u32 namelen;
    u32 pad;
    u64 iov;
    u64 iovlen;
};

TRACEPOINT_PROBE(syscalls, sys_enter_sendmsg)
{
    struct msghdr_u m = {};
    bpf_probe_read_user(&m, sizeof(m), (void *)args->msg);
    on_send(args->fd, m.iov, m.iovlen, 1, m.name);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_enter_sendmmsg)
{
    u64 base = (u64)args->mmsg;
    struct msghdr_u m = {};
    if (!args->vlen)
        return 0;
    bpf_probe_read_user(&m, sizeof(m), (void *)base);
    on_send(args->fd, m.iov, m.iovlen, 1, m.name);
#ifdef DNS
    /* glibc sends the A and AAAA queries together. Later messages can only be DNS queries:
     * their first iovec is enough, and a real loop keeps the verifier's states few. */
    u32 vlen = args->vlen;
    s32 fd = args->fd;
    u64 key = fd_key(fd);
#pragma clang loop unroll(disable)
    for (int i = 1; i < MAX_MMSG; i++) {
        if (i >= vlen)
            break;
        struct iov_u v = {};
        bpf_probe_read_user(&m, sizeof(m), (void *)(base + i * 64));
        if (!m.iovlen || bpf_probe_read_user(&v, sizeof(v), (void *)m.iov))
            continue;
        struct fd_info *fip = fds.lookup(&key);
        dns_out(fd, key, fip, v.base, v.len, 0, m.name);
    }
#endif
    return 0;
}

/* ---- reads: DNS replies (buffer saved at enter, copied at exit) ------------------------------- */
#ifdef DNS
#define RD_BUF 0
#define RD_MSG 1
#define RD_MMSG 2
struct rd_args {
    u64 ptr;
    s32 fd;
    u8 op;
    u8 pad[3];
};
BPF_HASH(dns_reads, u32, struct rd_args, 16384);

static __always_inline void rd_enter(s32 fd, u64 ptr, u8 op)
{
    u64 key = fd_key(fd);
    struct fd_info *fip = fds.lookup(&key);
    if (!fip || !(fip->flags & F_DNS))
        return;
    struct rd_args a = {.ptr = ptr, .fd = fd, .op = op};
    u32 tid = (u32)bpf_get_current_pid_tgid();
    dns_reads.update(&tid, &a);
}

static __always_inline void rd_exit(long ret)
{
    u32 tid = (u32)bpf_get_current_pid_tgid();
    struct rd_args *ap = dns_reads.lookup(&tid);
    if (!ap)
        return;
    struct rd_args a = *ap;
    dns_reads.delete(&tid);
    if (ret <= 0)
        return;
    u64 key = fd_key(a.fd);
    struct fd_info *fip = fds.lookup(&key);
    if (!fip)
        return;
    struct fd_info fi = *fip;
    if (a.op == RD_BUF) {
        emit_payload(K_DNS, a.fd, fi.sk, &fi.peer, fi.proto, 1, a.ptr, ret, 0, DNS_CAP, ret);
    } else if (a.op == RD_MSG) {
        struct msghdr_u m = {};
        bpf_probe_read_user(&m, sizeof(m), (void *)a.ptr);
        emit_payload(K_DNS, a.fd, fi.sk, &fi.peer, fi.proto, 1, m.iov, m.iovlen, 1, DNS_CAP,
                     ret);
    } else {
#pragma clang loop unroll(disable)
        for (int i = 0; i < MAX_MMSG; i++) {
            if (i >= ret)
                break;
            struct msghdr_u m = {};
            u32 got = 0;
            bpf_probe_read_user(&m, sizeof(m), (void *)(a.ptr + i * 64));
            bpf_probe_read_user(&got, sizeof(got), (void *)(a.ptr + i * 64 + 56));
            emit_payload(K_DNS, a.fd, fi.sk, &fi.peer, fi.proto, 1, m.iov, m.iovlen, 1,
                         DNS_CAP, got);
        }
    }
}

TRACEPOINT_PROBE(syscalls, sys_enter_read) { rd_enter(args->fd, (u64)args->buf, RD_BUF); return 0; }
TRACEPOINT_PROBE(syscalls, sys_exit_read) { rd_exit(args->ret); return 0; }
TRACEPOINT_PROBE(syscalls, sys_enter_recvfrom) { rd_enter(args->fd, (u64)args->ubuf, RD_BUF); return 0; }
TRACEPOINT_PROBE(syscalls, sys_exit_recvfrom) { rd_exit(args->ret); return 0; }
TRACEPOINT_PROBE(syscalls, sys_enter_recvmsg) { rd_enter(args->fd, (u64)args->msg, RD_MSG); return 0; }
TRACEPOINT_PROBE(syscalls, sys_exit_recvmsg) { rd_exit(args->ret); return 0; }
TRACEPOINT_PROBE(syscalls, sys_enter_recvmmsg) { rd_enter(args->fd, (u64)args->mmsg, RD_MMSG); return 0; }
TRACEPOINT_PROBE(syscalls, sys_exit_recvmmsg) { rd_exit(args->ret); return 0; }
#endif /* DNS */

/* ---- TCP: state changes, and (LLM) sends and arriving segments -------------------------------- */
TRACEPOINT_PROBE(sock, inet_sock_set_state)
{
    if (args->protocol != IPPROTO_TCP_)
        return 0;
    u64 sk = (u64)args->skaddr;
    struct sk_info *si = sks.lookup(&sk);
    if (!si)
        return 0;
    int ns = args->newstate, os = args->oldstate;
    if (ns == TCP_ESTABLISHED_ || os == TCP_ESTABLISHED_ || ns == TCP_CLOSE_) {
        struct tcp_rec r = {.kind = K_STATE, .len = ns, .ts = bpf_ktime_get_ns(), .sk = sk,
                            .seq = os};
        obs_output(&r, sizeof(r));
    }
    if (ns == TCP_CLOSE_)
        sks.delete(&sk);
    return 0;
}

#ifdef LLM
TRACEPOINT_PROBE(sock, sock_send_length)
{
    if (args->ret <= 0)
        return 0;
    u64 sk = (u64)args->sk;
    struct sk_info *si = sks.lookup(&sk);
    if (!si || !(si->flags & S_LLM))
        return 0;
    struct tcp_rec r = {.kind = K_SEND, .len = args->ret, .ts = bpf_ktime_get_ns(), .sk = sk};
    bpf_probe_read_kernel(&r.seq, sizeof(r.seq), (char *)sk + OFF_TCP_WRITE_SEQ);
    u32 tid = (u32)bpf_get_current_pid_tgid();
    struct head_stash *hs = send_heads.lookup(&tid);
    if (hs) {
        if (hs->sk == sk) {
            r.ts_start = hs->ts;
            __builtin_memcpy(r.head, hs->head, HEAD_LEN);
            r.flags = 1;
        }
        send_heads.delete(&tid);
    }
    obs_output(&r, sizeof(r));
    return 0;
}

TRACEPOINT_PROBE(tcp, tcp_probe)
{
    /* pure ACKs out first (a payload of exactly k * 64 KiB would wrap to 0: MSS multiples
     * never are) */
    if (!args->data_len)
        return 0;
    u64 sk = (u64)args->skaddr;
    struct sk_info *si = sks.lookup(&sk);
    if (!si || !(si->flags & S_LLM))
        return 0;
    /* The payload length from the sequence numbers: the tracepoint's u16 data_len wraps for
     * GRO/BIG TCP segments of 64 KiB and more. */
    char *cb = (char *)args->skbaddr + OFF_SKB_CB;
    u32 seq = 0, end = 0;
    u8 flags = 0;
    bpf_probe_read_kernel(&seq, sizeof(seq), cb + OFF_TCB_SEQ);
    bpf_probe_read_kernel(&end, sizeof(end), cb + OFF_TCB_END_SEQ);
    bpf_probe_read_kernel(&flags, sizeof(flags), cb + OFF_TCB_TCP_FLAGS); /* FIN is bit 0 */
    u32 len = end - seq - (flags & 1);
    if (!len || len > 0x7FFFFFFF)
        return 0;
    struct tcp_rec r = {.kind = K_DATA, .len = len, .ts = bpf_ktime_get_ns(), .sk = sk,
                        .seq = seq};
    bpf_probe_read_kernel(&r.ack, sizeof(r.ack), cb + OFF_TCB_ACK_SEQ);
    obs_output(&r, sizeof(r));
    return 0;
}
#endif /* LLM */
