/* obs-ssl: TLS plaintext from OpenSSL's SSL_read / SSL_write and their _ex forms, GnuTLS's
 * gnutls_record_recv / _send, NSPR's PR_Read / PR_Write / PR_Recv / PR_Send (NSS) and Go's
 * crypto/tls.(*Conn).Read / Write (uprobes).
 *
 * Both directions are captured at return, and only the bytes the call reports as moved:
 * SSL_read/SSL_write return the count; SSL_read_ex/SSL_write_ex return 1 and store the count
 * through their 4th argument (size_t *), whose address is saved at entry. A write that fails
 * and is retried by the caller is therefore seen once.
 *
 * A call's bytes (up to MAX_CAPTURE) go out as one or more records of at most CHUNK bytes,
 * each reserved in the ring buffer at the smallest size class that holds it: no per-CPU
 * scratch (a preempted uprobe could share it) and no 16 KiB reservation for a 40-byte read.
 * Every record carries the stream offset of its first byte (per process, SSL* and
 * direction), so user space sees exactly where bytes are missing — a full ring buffer or a
 * call larger than MAX_CAPTURE — instead of splicing unrelated bytes together.
 *
 * Where a library's exported SSL_read_ex/SSL_write_ex are thin wrappers that uprobes would
 * have to single-step, libobs/tls/libraries.py attaches these same programs to the internal
 * ssl_read_internal/ssl_write_internal instead (the _ex calling convention, returning > 0 on
 * success), which also see SSL_read/SSL_write.
 *
 * Entry probes exist once per library slot (16 of them, SSL_SLOT below): the slot number is
 * baked into the function, which is how a record says which library it came from; `fn` says
 * which function (FN_*), and so which stack.
 *
 * Go is different: no uretprobes (Go grows goroutine stacks by copying them, and a uretprobe's
 * swapped return address on a moved stack crashes the program). Write is captured at entry;
 * Read's arguments are saved at entry under the goroutine (R14 holds the g in Go's register
 * ABI: a goroutine may resume on another thread) and its bytes taken at each RET
 * instruction, where RAX holds n.
 * Records: ssl.h (read by libobs/tls/decode.py through libobs/kernel/layout.py).
 */
#include "common.h"
#include "ssl.h"


#define MAX_CHUNKS (MAX_CAPTURE / CHUNK)

#define PR_MSG_PEEK 0x2
#ifndef PR_IDENTITY_OFF
#define PR_IDENTITY_OFF 40 /* PRFileDesc.identity: after methods, secret, lower, higher, dtor */
#endif


struct ssl_args {
    u64 ssl;
    u64 buf;
    u64 count_ptr;     /* _ex: size_t *readbytes / *written, read at return */
    u64 ts;            /* entry: a write's bytes are handed over then */
    u32 lib;
    u32 fn;
};
/* LRU: a thread that never returns (killed mid-call) must not leave a slot taken forever */
BPF_TABLE("lru_hash", u64, struct ssl_args, ssl_pending, 16384);

struct stream_key {
    u64 ssl;
    u32 tgid;
    u32 is_read;
};
/* Next stream offset per connection and direction. LRU: connections are never announced
 * closed, and a recycled SSL* simply continues from its predecessor's offset. */
BPF_TABLE("lru_hash", struct stream_key, u64, stream_off, 65536);

static __always_inline int ssl_enter(struct pt_regs *ctx, u32 lib, u32 fn)
{
    if (obs_filtered_out())
        return 0;
    if (fn >= FN_PR_READ && fn <= FN_PR_SEND) {
        /* identity 0: NSPR's own bottom layer, i.e. no SSL (or other) layer pushed on this
         * descriptor: a file or plain socket, not TLS plaintext */
        s32 identity = 0;
        bpf_probe_read_user(&identity, sizeof(identity),
                            (char *)PT_REGS_PARM1(ctx) + PR_IDENTITY_OFF);
        if (identity == 0)
            return 0;
        /* PR_MSG_PEEK (curl's liveness check): bytes looked at, not consumed */
        if (fn == FN_PR_RECV && (PT_REGS_PARM4(ctx) & PR_MSG_PEEK))
            return 0;
    }
    struct ssl_args a = {};
    a.ssl = PT_REGS_PARM1(ctx);
    a.buf = PT_REGS_PARM2(ctx);
    a.count_ptr = (fn == FN_READ_EX || fn == FN_WRITE_EX) ? PT_REGS_PARM4(ctx) : 0;
    a.ts = bpf_ktime_get_ns();
    a.lib = lib;
    a.fn = fn;
    u64 id = bpf_get_current_pid_tgid();
    ssl_pending.update(&id, &a);
    return 0;
}

/* Waking the reader for every record costs a context switch per SSL call; instead it is
 * woken every WAKE_EVERY records per CPU, and otherwise finds the rest when its poll times out
 * (libobs.probes.Program.poll drains the ring after every wait, woken or not). */
#define WAKE_EVERY 32
#define RB_NO_WAKEUP 1
#define RB_FORCE_WAKEUP 2
BPF_PERCPU_ARRAY(wake_count, u64, 1);

static __always_inline u64 ssl_wakeup(void)
{
    int zero = 0;
    u64 *n = wake_count.lookup(&zero);
    if (!n)
        return 0;
    *n += 1;
    return (*n % WAKE_EVERY) ? RB_NO_WAKEUP : RB_FORCE_WAKEUP;
}

/* One record of `size` data bytes, `size` a compile-time constant after inlining (the ring
 * buffer only reserves constant sizes). Returns 0 when the ring buffer was full. */
static __always_inline int emit_sized(struct ssl_rec *t, u64 src, u32 len, u32 size)
{
    /* Since 6.15 a reservation can fail on lock contention with the ring nearly empty
     * (common.h): retry before counting the record lost. No spill ring here: its records
     * would arrive out of order with the chunks around them. */
    struct ssl_rec *r = events.ringbuf_reserve(sizeof(struct ssl_rec) + size);
    if (!r)
        r = events.ringbuf_reserve(sizeof(struct ssl_rec) + size);
    if (!r)
        r = events.ringbuf_reserve(sizeof(struct ssl_rec) + size);
    if (!r) {
        obs_count_lost();
        return 0;
    }
    __builtin_memcpy(r, t, sizeof(*r));
    u64 n = len;
    /* len <= size already; hide that from clang so the verifier gets its own bound check */
    asm volatile("" : "+r"(n));
    if (n > size)
        n = size;
    if (bpf_probe_read_user((char *)r + sizeof(*r), n, (void *)src) != 0) {
        r->read_failed = 1;
        n = 0;
    }
    r->h.len = n;
    events.ringbuf_submit(r, ssl_wakeup());
    return 1;
}

static __always_inline int emit_chunk(struct ssl_rec *t, u64 src, u32 len)
{
    if (len <= 256)
        return emit_sized(t, src, len, 256);
    if (len <= 1024)
        return emit_sized(t, src, len, 1024);
    if (len <= 4096)
        return emit_sized(t, src, len, 4096);
    return emit_sized(t, src, len, CHUNK);
}

/* Emit the `total` bytes a call moved at a.buf, as records of at most CHUNK bytes each. */
static __always_inline void ssl_emit(struct ssl_args *a, u64 total, u32 tgid)
{
    if (total == 0)
        return;
    if (total > 0xFFFFFFFFULL)
        total = 0xFFFFFFFFULL;

    u32 is_read = a->fn == FN_READ || a->fn == FN_READ_EX || a->fn == FN_GNUTLS_RECV ||
                  a->fn == FN_PR_READ || a->fn == FN_PR_RECV || a->fn == FN_GO_READ;
    struct stream_key key = {.ssl = a->ssl, .tgid = tgid, .is_read = is_read};
    u64 off = 0;
    u64 *known = stream_off.lookup(&key);
    if (known) {
        off = *known;
        *known = off + total; /* in place: an update would take a new LRU element per call */
    } else {
        u64 next = total;
        stream_off.update(&key, &next);
    }

    struct ssl_rec t = {};
    obs_fill_hdr(&t.h, K_SSL);
    /* A write is stamped when it was entered, not when it returned: another thread can read
     * the reply, and return, before a preempted writer's return probe runs (seen under load
     * with a client whose reads run in a thread of their own), and decoders order by time. */
    if (!is_read && a->ts)
        t.h.ts = a->ts;
    t.ssl = a->ssl;
    t.total = total;
    t.captured = total > MAX_CAPTURE ? MAX_CAPTURE : total;
    t.fn = a->fn;
    t.lib = a->lib;
    u64 buf = a->buf;

    u32 captured = t.captured;
#pragma clang loop unroll(disable)
    for (u32 i = 0; i < MAX_CHUNKS; i++) {
        u32 done = i * CHUNK;
        if (done >= captured)
            break;
        t.chunk = i;
        t.off = off + done;
        u32 left = captured - done;
        if (!emit_chunk(&t, buf + done, left > CHUNK ? CHUNK : left)) {
            /* the ring buffer is full: the rest of this call would fail too */
            u32 rest = (captured - done + CHUNK - 1) / CHUNK - 1;
            int zero = 0;
            u64 *n = lost.lookup(&zero);
            if (n)
                __sync_fetch_and_add(n, rest);
            break;
        }
    }
}

int ssl_return(struct pt_regs *ctx)
{
    u64 id = bpf_get_current_pid_tgid();
    struct ssl_args *p = ssl_pending.lookup(&id);
    if (!p)
        return 0;
    struct ssl_args a = *p;
    ssl_pending.delete(&id);

    u64 total = 0;
    if (a.fn == FN_READ_EX || a.fn == FN_WRITE_EX) {
        /* SSL_*_ex return 1, ssl_*_internal (same convention otherwise) any count > 0 */
        if ((int)PT_REGS_RC(ctx) <= 0)
            return 0;
        bpf_probe_read_user(&total, sizeof(total), (void *)a.count_ptr);
    } else {
        /* a count or a negative error; gnutls_record_recv's ssize_t fits: calls are < 2 GiB */
        int rc = (int)PT_REGS_RC(ctx);
        if (rc <= 0)
            return 0;
        total = rc;
    }
    ssl_emit(&a, total, id >> 32);
    return 0;
}

/* ---- Go crypto/tls (register ABI: RAX receiver, RBX buffer, RCX length, R14 the g) -------- */

struct go_key {
    u64 g;
    u32 tgid;
    u32 pad;
};
BPF_TABLE("lru_hash", struct go_key, struct ssl_args, go_pending, 16384);

/* Read: the arguments are kept under the goroutine until one of its RETs. */
static __always_inline int go_read_enter(struct pt_regs *ctx, u32 lib)
{
    if (obs_filtered_out())
        return 0;
    struct go_key k = {.g = ctx->r14, .tgid = bpf_get_current_pid_tgid() >> 32};
    struct ssl_args a = {.ssl = ctx->ax, .buf = ctx->bx, .lib = lib, .fn = FN_GO_READ,
                         .ts = bpf_ktime_get_ns()};
    go_pending.update(&k, &a);
    return 0;
}

/* The call this goroutine entered, emitted with its byte count n (nothing when n <= 0). */
static __always_inline int go_emit(struct pt_regs *ctx, s64 n)
{
    struct go_key k = {.g = ctx->r14, .tgid = bpf_get_current_pid_tgid() >> 32};
    struct ssl_args *p = go_pending.lookup(&k);
    if (!p)
        return 0;
    struct ssl_args a = *p;
    go_pending.delete(&k);
    if (n > 0)
        ssl_emit(&a, n, k.tgid);
    return 0;
}

/* At every RET of (*Conn).Read: n in RAX. */
int go_read_return(struct pt_regs *ctx)
{
    return go_emit(ctx, (s64)ctx->ax);
}

/* Write(b) writes all of b or fails: its bytes are taken at entry, before they can be on the
 * wire. Taken at a RET, a fast answer read by another thread was seen first (measured: 1 run
 * in 5 of the Go tests on a loaded host) and the exchange lost. The per-slot entry hands over
 * to one emitting program by tail call (go_write_emit, slot 0 of go_tail, set by
 * libobs/libssl.py): sixteen inlined copies of the emitter doubled the compile time. */
BPF_PROG_ARRAY(go_tail, 1);

static __always_inline int go_write_enter(struct pt_regs *ctx, u32 lib)
{
    if (obs_filtered_out())
        return 0;
    struct go_key k = {.g = ctx->r14, .tgid = bpf_get_current_pid_tgid() >> 32};
    struct ssl_args a = {.ssl = ctx->ax, .buf = ctx->bx, .lib = lib, .fn = FN_GO_WRITE,
                         .ts = bpf_ktime_get_ns()};
    go_pending.update(&k, &a);
    go_tail.call(ctx, 0);
    go_pending.delete(&k); /* the tail call failed (not set up): nothing is emitted */
    return 0;
}

int go_write_emit(struct pt_regs *ctx)
{
    return go_emit(ctx, (s64)ctx->cx); /* len(b), the register ABI's third word */
}

/* Entry probes, one set per library slot: the slot is the `lib` of every record. */
#define SSL_SLOT(N)                                                                             \
    int ssl_read_enter_##N(struct pt_regs *ctx) { return ssl_enter(ctx, N, FN_READ); }         \
    int ssl_read_ex_enter_##N(struct pt_regs *ctx) { return ssl_enter(ctx, N, FN_READ_EX); }   \
    int ssl_write_enter_##N(struct pt_regs *ctx) { return ssl_enter(ctx, N, FN_WRITE); }       \
    int ssl_write_ex_enter_##N(struct pt_regs *ctx) { return ssl_enter(ctx, N, FN_WRITE_EX); } \
    int gnutls_recv_enter_##N(struct pt_regs *ctx) { return ssl_enter(ctx, N, FN_GNUTLS_RECV); } \
    int gnutls_send_enter_##N(struct pt_regs *ctx) { return ssl_enter(ctx, N, FN_GNUTLS_SEND); } \
    int pr_read_enter_##N(struct pt_regs *ctx) { return ssl_enter(ctx, N, FN_PR_READ); }       \
    int pr_write_enter_##N(struct pt_regs *ctx) { return ssl_enter(ctx, N, FN_PR_WRITE); }     \
    int pr_recv_enter_##N(struct pt_regs *ctx) { return ssl_enter(ctx, N, FN_PR_RECV); }       \
    int pr_send_enter_##N(struct pt_regs *ctx) { return ssl_enter(ctx, N, FN_PR_SEND); }       \
    int go_read_enter_##N(struct pt_regs *ctx) { return go_read_enter(ctx, N); }               \
    int go_write_enter_##N(struct pt_regs *ctx) { return go_write_enter(ctx, N); }

SSL_SLOT(0) SSL_SLOT(1) SSL_SLOT(2) SSL_SLOT(3) SSL_SLOT(4) SSL_SLOT(5) SSL_SLOT(6) SSL_SLOT(7)
SSL_SLOT(8) SSL_SLOT(9) SSL_SLOT(10) SSL_SLOT(11) SSL_SLOT(12) SSL_SLOT(13) SSL_SLOT(14)
SSL_SLOT(15)

/* Processes that exec'd since user space last looked (tgid -> 1): libobs/tls/libraries.py judges
 * each one's executable at once, so a TLS stack linked into it (Claude Code's BoringSSL) is
 * attached before its first request, not at the next --rescan. LRU: bounded if user space
 * falls behind (then the rescan still finds the program). */
BPF_TABLE("lru_hash", u32, u8, execs, 1024);

TRACEPOINT_PROBE(sched, sched_process_exec)
{
    if (obs_filtered_out())
        return 0;
    u32 tgid = bpf_get_current_pid_tgid() >> 32;
    u8 one = 1;
    execs.update(&tgid, &one);
    return 0;
}
