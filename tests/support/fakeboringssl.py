"""Small C programs shaped like a BoringSSL linked in statically (built with gcc, cached): an
SSL_read, ssl_read_impl and SSL_write that report BoringSSL's ssl_lib.cc errors through
ERR_put_error with either signature BoringSSL has had, frame pointers kept (as Bun does), PIE
(addresses by `lea`) or not (`mov imm32`). Symbols are left in, for the tests to check the
locator's answer against; the locator does not read them.

`fakeboringssl REQUEST RESPONSE [SECS]` "talks" (after SECS): SSL_write(REQUEST) first fails (-1, not initialised,
as BoringSSL's does before the handshake) and is retried with the same buffer, then
SSL_read() hands back RESPONSE — what obs-ssl's probes at the located addresses must see once."""

from __future__ import annotations

import hashlib
import subprocess
import tempfile
from pathlib import Path

SOURCE = r"""
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#define F "../../vendor/boringssl/ssl/ssl_lib.cc"
#ifdef ABI5
#define PUT(r) ERR_put_error(16, 0, r, F, __LINE__)
__attribute__((noinline)) void ERR_put_error(int lib, int unused, int reason, const char *file,
                                             unsigned line)
{ fprintf(stderr, "%d %d %d %s %u\n", lib, unused, reason, file, line); }
#else
#define PUT(r) ERR_put_error(16, r, F, __LINE__)
__attribute__((noinline)) void ERR_put_error(int lib, int reason, const char *file, unsigned line)
{ fprintf(stderr, "%d %d %s %u\n", lib, reason, file, line); }
#endif
struct ssl { int quic, init, shutdown, n; const char *in; };
__attribute__((noinline)) int ssl_read_impl(struct ssl *s, void *buf, int num) {
    if (!s->init) { PUT(0xe2); return -1; }
    if (s->shutdown) { PUT(0xd7); return -1; }
    int n = s->n < num ? s->n : num;
    memcpy(buf, s->in, n);
    return n;
}
__attribute__((noinline)) int SSL_read(struct ssl *s, void *buf, int num) {
    if (s->quic) { PUT(0x42); return -1; }
    return ssl_read_impl(s, buf, num);
}
#define WRITE(name) __attribute__((noinline)) int name(struct ssl *s, const void *buf, int num) { \
    if (s->quic) { PUT(0x42); return -1; }                                                      \
    if (!s->init) { PUT(0xe2); return -1; }                                                     \
    if (s->shutdown) { PUT(0xd7); return -1; }                                                  \
    if (num < 0) { PUT(0x6f); return -1; }                                                      \
    return num; }
WRITE(SSL_write)
#ifdef TWICE
WRITE(SSL_write_twin)
#endif
int main(int argc, char **argv) {
    static char b[1 << 16];
    if (argc > 20)  /* never: keeps a socket call imported */
        return connect(0, 0, 0);
    if (argc == 3 || argc == 4) {  /* talk */
        if (argc == 4)
            usleep((useconds_t)(atof(argv[3]) * 1e6));
        struct ssl s = {0, 0, 0, (int)strlen(argv[2]), argv[2]};
        int len = (int)strlen(argv[1]);
        if (SSL_write(&s, argv[1], len) != -1)
            return 2;
        s.init = 1;
        if (SSL_write(&s, argv[1], len) != len || SSL_read(&s, b, sizeof(b)) != s.n)
            return 3;
        return 0;
    }
    struct ssl s = {argc > 5, argc < 9, argc > 6, 3, "abc"};
    int n = SSL_read(&s, b, 4) + SSL_write(&s, b, argc);
#ifdef TWICE
    n += SSL_write_twin(&s, b, argc);
#endif
    return n;
}
"""
VARIANTS = {  # name: gcc flags
    "abi5-exec": ["-DABI5", "-no-pie", "-fno-pie"], "abi5-pie": ["-DABI5", "-pie", "-fPIE"],
    "abi4-exec": ["-DABI4", "-no-pie", "-fno-pie"], "abi4-pie": ["-DABI4", "-pie", "-fPIE"],
    "twice": ["-DABI5", "-DTWICE", "-no-pie", "-fno-pie"],
}


def build(variant: str) -> Path:
    flags = ["-O1", "-fno-omit-frame-pointer", "-fcf-protection=none", "-falign-functions=16",
             *VARIANTS[variant]]
    key = hashlib.sha256((SOURCE + " ".join(flags)).encode()).hexdigest()[:16]
    out = Path(tempfile.gettempdir()) / "obs-test-fakeboringssl" / key / "fakeboringssl"
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(".tmp")
        subprocess.run(["gcc", *flags, "-x", "c", "-o", str(tmp), "-"], input=SOURCE.encode(),
                       check=True, capture_output=True, timeout=120)
        tmp.replace(out)
    return out
