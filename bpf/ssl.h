/* obs-ssl's records (bpf/ssl.bpf.c → libobs/tls/decode.py; obs-llm --api reads them too):
 * one definition for both sides. */
#ifndef OBS_SSL_H
#define OBS_SSL_H
#include "records.h"

#ifndef MAX_CAPTURE
#define MAX_CAPTURE 1048576 /* bytes per call, a power of two >= CHUNK, set by --max-capture */
#endif
#define CHUNK 16384

/* ssl_rec.fn: which function moved the bytes, and so which stack */
#define FN_READ 0
#define FN_READ_EX 1
#define FN_WRITE 2
#define FN_WRITE_EX 3
#define FN_GNUTLS_RECV 4   /* gnutls_record_recv: returns the count, like SSL_read */
#define FN_GNUTLS_SEND 5
#define FN_PR_READ 6       /* NSPR: returns the count */
#define FN_PR_WRITE 7
#define FN_PR_RECV 8
#define FN_PR_SEND 9
#define FN_GO_READ 10      /* crypto/tls.(*Conn).Read */
#define FN_GO_WRITE 11     /* crypto/tls.(*Conn).Write */

struct ssl_rec {
    struct obs_hdr h;  /* h.len: bytes of data following this struct */
    u64 ssl;           /* the SSL* : one TLS connection of the process */
    u64 off;           /* stream offset of this record's first byte */
    u32 total;         /* bytes the call moved (may exceed what was captured) */
    u32 captured;      /* bytes of the call captured, at most MAX_CAPTURE */
    u16 chunk;         /* index of this record within the call */
    u8 fn;             /* FN_* */
    u8 lib;            /* library slot */
    u8 read_failed;    /* the user buffer could not be read: data is missing */
    u8 pad[3];
};

#endif /* OBS_SSL_H */
