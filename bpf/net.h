/* obs-net's and obs-llm's records (bpf/net.bpf.c → libobs/net/decode.py): one definition for
 * both sides. */
#ifndef OBS_NET_H
#define OBS_NET_H
#include "records.h"

#define HELLO_CAP 4096          /* a post-quantum ClientHello is ~1.8 KiB */
#define PAYLOAD_BUF (2 * HELLO_CAP) /* room the verifier can see: offset < CAP, length <= CAP */
#define HEAD_LEN 16

struct peer {
    u8 addr[16];
    u16 family;
    u16 port;     /* network byte order */
};

/* K_CONNECT */
struct conn_rec {
    struct obs_hdr h;
    s32 fd;
    s32 ret;
    u64 sk;
    struct peer peer;
    u8 proto;
    u8 state;     /* TCP state when connect() returned (2 = SYN_SENT: not yet established) */
    u8 pad[6];
};

/* K_HELLO, K_DNS */
struct payload_rec {
    struct obs_hdr h;
    s32 fd;
    u32 cap;      /* bytes in data[] */
    u64 sk;
    u32 total;    /* bytes the call carried */
    u8 dir;       /* 0 written, 1 read */
    u8 proto;
    u8 pad[2];
    struct peer peer;
    u8 pad2[4];
    char data[PAYLOAD_BUF];
};

/* K_SEND, K_DATA, K_STATE: no obs_hdr (hot path: sends and segments of LLM connections) */
struct tcp_rec {
    u32 kind;
    u32 len;      /* SEND: bytes accepted; DATA: segment payload; STATE: new state */
    u64 ts;       /* SEND: when the send returned; DATA: when the segment was processed */
    u64 sk;
    u64 ts_start; /* SEND: when the syscall entered (0: unknown) */
    u32 seq;      /* SEND: write_seq after the send; DATA: segment seq; STATE: old state */
    u32 ack;      /* DATA: the segment's ack_seq — what the peer had received when it sent it */
    u16 flags;    /* SEND: 1 when head[] holds the first bytes the application wrote */
    u8 head[HEAD_LEN];
    u8 pad[6];
};

#endif /* OBS_NET_H */
