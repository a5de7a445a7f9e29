/* obs-enforce's records and the map keys and values user space writes (bpf/enforce.bpf.c ↔
 * libobs/guard/enforce.py): one definition for both sides. */
#ifndef OBS_ENFORCE_H
#define OBS_ENFORCE_H
#include "records.h"

/* denied_rec.hook */
#define HOOK_CONNECT4 1
#define HOOK_CONNECT6 2
#define HOOK_SENDMSG4 3
#define HOOK_SENDMSG6 4

#define RULE_UNCLASSIFIED 1 /* the rule id of "not on the allow-list" */

#ifndef DNS_MAX
#define DNS_MAX 1024 /* bytes of a DNS reply copied to user space (a power of two) */
#endif
#define NAME_LEN 128    /* a question name in wire format, longer ones are left to user space */

struct addr_key {
    u32 family;  /* 4 or 6 */
    u32 addr[4]; /* network byte order; IPv4 in addr[0], the rest zero */
};

struct rule_val {
    u32 rule;    /* rule id, resolved to its text in user space */
    u16 port;    /* host byte order; 0: any port */
    u16 pad;
};

struct denied_rec {
    struct obs_hdr h;
    struct addr_key addr;
    u32 rule;
    u16 port;    /* host byte order */
    u8 hook;
    u8 proto;    /* IPPROTO_TCP / IPPROTO_UDP */
};

struct dns_rec {
    struct obs_hdr h;        /* only kind, len (payload bytes) and ts: not a task context */
    struct addr_key src;     /* the server that answered: only trusted ones may allow */
    u32 pad;
    u8 data[DNS_MAX];
};

struct dns_name {
    u8 b[NAME_LEN]; /* lowercase wire format (length-prefixed labels, root), zero-padded */
};

struct name_val {
    u32 rule;
    u8 allow;       /* answers go to allow (from a trusted server only), else to deny */
    u8 pad[3];
};

#endif /* OBS_ENFORCE_H */
