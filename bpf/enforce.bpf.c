/* obs-enforce: refuse connect() and UDP sendmsg() from one cgroup to listed addresses.
 *
 * cgroup_sock_addr programs (connect4/6, sendmsg4/6) attached to the agent's cgroup-v2
 * directory: returning 0 makes the syscall fail with EPERM. Keys are (family, address);
 * an IPv4-mapped IPv6 address (::ffff:a.b.c.d) is looked up as the IPv4 address, so a
 * dual-stack socket cannot slip past an IPv4 rule. Each refusal writes a record naming the
 * rule id; user space maps ids back to deny-file lines (libobs/guard/enforce.py mirrors the structs).
 *
 * ALLOW_MODE (--deny-unclassified): after the deny map, only loopback and addresses in the
 * allow map pass; everything else is refused with RULE_UNCLASSIFIED. Without it the allow
 * map only holds approved providers' addresses, which DNS learning must never deny.
 *
 * DNS learning: a cgroup_skb ingress program sees UDP replies from port 53 before the
 * socket of the cgroup does. It copies each to user space (parsed there, with suffix and
 * CNAME matching: libobs/net/dns.py), and when the question is exactly a name in the
 * `names` map it adds the A/AAAA answers to deny (or, from a trusted server, to allow)
 * itself: so a connect() right after the lookup already meets the new address.
 */
#include "common.h"
#include "enforce.h"

#ifndef MAX_RULES
#define MAX_RULES 65536
#endif
#define MAX_ANSWERS 16
#define MAX_NAMES 4096







BPF_HASH(deny, struct addr_key, struct rule_val, MAX_RULES);
BPF_HASH(allow, struct addr_key, struct rule_val, MAX_RULES);
BPF_HASH(names, struct dns_name, struct name_val, MAX_NAMES);
BPF_HASH(servers, struct addr_key, u8, 64); /* trusted DNS servers */

static __always_inline int refuse(struct bpf_sock_addr *ctx, struct addr_key *k, u16 port,
                                  u8 hook, u32 rule)
{
    struct denied_rec r = {};
    obs_fill_hdr(&r.h, K_DENIED);
    r.addr = *k;
    r.rule = rule;
    r.port = port;
    r.hook = hook;
    r.proto = ctx->protocol;
    obs_output(&r, sizeof(r));
    return 0;
}

static __always_inline int matches(struct rule_val *v, u16 port)
{
    return v && (v->port == 0 || v->port == port);
}

static __always_inline int is_loopback(struct addr_key *k)
{
    if (k->family == 4)
        return (bpf_ntohl(k->addr[0]) >> 24) == 127;
    return k->addr[0] == 0 && k->addr[1] == 0 && k->addr[2] == 0 && k->addr[3] == bpf_htonl(1);
}

static __always_inline int decide(struct bpf_sock_addr *ctx, struct addr_key *k, u8 hook)
{
    u16 port = bpf_ntohs((u16)ctx->user_port);
    struct rule_val *v = deny.lookup(k);
    if (matches(v, port))
        return refuse(ctx, k, port, hook, v->rule);
#ifdef ALLOW_MODE
    if (is_loopback(k))
        return 1;
    v = allow.lookup(k);
    if (matches(v, port))
        return 1;
    return refuse(ctx, k, port, hook, RULE_UNCLASSIFIED);
#else
    return 1;
#endif
}

static __always_inline int decide4(struct bpf_sock_addr *ctx, u8 hook)
{
    struct addr_key k = {};
    k.family = 4;
    k.addr[0] = ctx->user_ip4;
    return decide(ctx, &k, hook);
}

static __always_inline int decide6(struct bpf_sock_addr *ctx, u8 hook)
{
    struct addr_key k = {};
    u32 a0 = ctx->user_ip6[0], a1 = ctx->user_ip6[1], a2 = ctx->user_ip6[2];
    u32 a3 = ctx->user_ip6[3];
    if (a0 == 0 && a1 == 0 && a2 == bpf_htonl(0xffff)) {
        k.family = 4; /* ::ffff:a.b.c.d: an IPv4 destination through an IPv6 socket */
        k.addr[0] = a3;
    } else {
        k.family = 6;
        k.addr[0] = a0;
        k.addr[1] = a1;
        k.addr[2] = a2;
        k.addr[3] = a3;
    }
    return decide(ctx, &k, hook);
}

int enforce_connect4(struct bpf_sock_addr *ctx) { return decide4(ctx, HOOK_CONNECT4); }
int enforce_connect6(struct bpf_sock_addr *ctx) { return decide6(ctx, HOOK_CONNECT6); }
int enforce_sendmsg4(struct bpf_sock_addr *ctx) { return decide4(ctx, HOOK_SENDMSG4); }
int enforce_sendmsg6(struct bpf_sock_addr *ctx) { return decide6(ctx, HOOK_SENDMSG6); }

/* ---- DNS replies received by the cgroup (cgroup_skb ingress; never drops) ------------------ */

/* An offset below DNS_MAX, masked in a way clang cannot optimise away: the verifier
 * needs the mask even where clang can prove it redundant. Callers check offsets < n. */
static __always_inline u64 bounded(u64 i)
{
    asm volatile("%0 &= %1" : "+r"(i) : "i"(DNS_MAX - 1));
    return i;
}

static __always_inline u32 at(u8 *d, u32 i) { return d[bounded(i)]; }

/* The answers to a question listed in `names`, straight into deny/allow. The name is read
 * from the copy in d (offsets from the loop counter); answers are read from the packet with
 * bpf_skb_load_bytes, whose offset the verifier need not track: reading them from d at
 * data-dependent offsets multiplies its states past its limit. */
static __always_inline void learn(struct __sk_buff *skb, u32 off, u8 *d, u32 n,
                                  struct addr_key *src)
{
    if (n < 12 || !(at(d, 2) & 0x80) || at(d, 4) != 0 || at(d, 5) != 1) /* a reply, 1 question */
        return;
    /* Copy the question name up to its root label (the first zero byte), lowercased:
     * length bytes are < 64 and stay as they are. A name that is not well-formed simply
     * matches no key, which user space writes well-formed. */
    struct dns_name name = {};
    u32 len = 0;
#pragma clang loop unroll(disable)
    for (u32 i = 0; i < NAME_LEN; i++) {
        if (12 + i >= n)
            return;
        u8 c = at(d, 12 + i);
        u64 j = i;
        asm volatile("%0 &= %1" : "+r"(j) : "i"(NAME_LEN - 1));
        name.b[j] = (c >= 'A' && c <= 'Z') ? c + 32 : c;
        if (c == 0) {
            len = i + 1;
            break;
        }
    }
    if (!len)
        return;      /* longer than NAME_LEN: user space still sees the reply */
    struct name_val *nv = names.lookup(&name);
    if (!nv)
        return;
    u32 to_allow = nv->allow;
    if (to_allow && !servers.lookup(src))
        return;      /* anyone in the cgroup could forge an answer; only denials are safe */
    struct rule_val v = {.rule = nv->rule};
    u32 ancount = (at(d, 6) << 8) | at(d, 7);
    u32 pos = off + 12 + len + 4;
#pragma clang loop unroll(disable)
    for (int i = 0; i < MAX_ANSWERS; i++) {
        u8 rr[12];   /* owner (a 2-byte pointer), type, class, ttl, rdlength */
        if (i >= ancount || bpf_skb_load_bytes(skb, pos, rr, sizeof(rr)) || (rr[0] & 0xc0) != 0xc0)
            break;   /* resolvers compress owner names; anything else is left to user space */
        u32 type = (rr[2] << 8) | rr[3];
        u32 rdlen = (rr[10] << 8) | rr[11];
        struct addr_key k = {};
        if ((type == 1 && rdlen == 4) || (type == 28 && rdlen == 16)) {
            k.family = rdlen == 4 ? 4 : 6;
            if (bpf_skb_load_bytes(skb, pos + 12, k.addr, rdlen == 4 ? 4 : 16))
                break;
            if (to_allow)
                allow.update(&k, &v);
            else if (!allow.lookup(&k))
                deny.insert(&k, &v); /* an existing entry (a deny-file line) keeps its rule */
        }
        pos += 12 + rdlen;
    }
}

int enforce_dns(struct __sk_buff *skb)
{
    struct addr_key src = {};
    u32 l4;
    u8 proto;
    if (skb->protocol == bpf_htons(0x0800)) {      /* ETH_P_IP */
        u8 vihl;
        if (bpf_skb_load_bytes(skb, 0, &vihl, 1) || bpf_skb_load_bytes(skb, 9, &proto, 1) ||
            bpf_skb_load_bytes(skb, 12, &src.addr[0], 4))
            return 1;
        src.family = 4;
        l4 = (vihl & 0x0f) * 4;
    } else if (skb->protocol == bpf_htons(0x86DD)) { /* ETH_P_IPV6, no extension headers */
        if (bpf_skb_load_bytes(skb, 6, &proto, 1) || bpf_skb_load_bytes(skb, 8, src.addr, 16))
            return 1;
        src.family = 6;
        l4 = 40;
    } else {
        return 1;
    }
    u16 sport;
    if (proto != 17 || bpf_skb_load_bytes(skb, l4, &sport, 2) || sport != bpf_htons(53))
        return 1;
    u32 off = l4 + 8;
    if (skb->len < off + 12)         /* shorter than a DNS header */
        return 1;
    u64 n = (u64)skb->len - off;     /* 64-bit: the verifier keeps the bounds of this clamp */
    if (n > DNS_MAX)
        n = DNS_MAX;
    if (n < 12)
        return 1;
    struct dns_rec *r = events.ringbuf_reserve(sizeof(struct dns_rec));
    if (!r) {
        obs_count_lost();
        return 1;
    }
    __builtin_memset(&r->h, 0, sizeof(r->h));
    r->h.kind = K_GUARD_DNS;
    r->h.ts = bpf_ktime_get_ns();
    r->src = src;
    r->pad = 0;
    if (bpf_skb_load_bytes(skb, off, r->data, n)) {
        events.ringbuf_discard(r, 0);
        return 1;
    }
    r->h.len = n;
    learn(skb, off, r->data, n, &src);
    events.ringbuf_submit(r, 0);
    return 1;
}
