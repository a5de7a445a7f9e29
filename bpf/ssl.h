/* obs-ssl's records (bpf/ssl.bpf.c → libobs/tls/decode.py; obs-llm --api reads them too):
 * one definition for both sides. */
#ifndef OBS_SSL_H
#define OBS_SSL_H
#include "records.h"

#ifndef MAX_CAPTURE
#define MAX_CAPTURE 1048576 /* bytes per call, a power of two >= CHUNK, set by --max-capture */
#endif
#define CHUNK 16384

/* ssl_rec.fn: which function moved the bytes */
#define FN_READ 0
#define FN_READ_EX 1
#define FN_WRITE 2
#define FN_WRITE_EX 3

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
