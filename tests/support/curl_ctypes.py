"""A libcurl client through ctypes, for the TLS stacks Debian builds libcurl against besides
OpenSSL: libcurl-gnutls.so.4 (GnuTLS) and libcurl-nss.so.4 (NSS). No `import ssl`: the
process's TLS is the named library's alone.

Usage: python curl_ctypes.py LIBCURL CA_PEM URL HEADERS_JSON BODY [REPEAT]
POSTs BODY REPEAT times on one connection over HTTP/1.1; exits 0 when every answer is 200.
With CURL_CTYPES_TIME=1 it prints the seconds requests 2..REPEAT took (the first connects).
"""

from __future__ import annotations

import ctypes
import json
import os
import sys
import time

CURLOPT_URL = 10002
CURLOPT_POSTFIELDS = 10015
CURLOPT_HTTPHEADER = 10023
CURLOPT_CAINFO = 10065
CURLOPT_POSTFIELDSIZE = 60
CURLOPT_WRITEFUNCTION = 20011
CURLOPT_HTTP_VERSION = 84
CURL_HTTP_VERSION_1_1 = 2
CURLINFO_RESPONSE_CODE = 0x200002
WRITE_CB = ctypes.CFUNCTYPE(ctypes.c_size_t, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t,
                            ctypes.c_void_p)


def main() -> int:
    lib, ca, url, headers, body = sys.argv[1:6]
    repeat = int(sys.argv[6]) if len(sys.argv) > 6 else 1
    curl = ctypes.CDLL(lib)
    curl.curl_easy_init.restype = ctypes.c_void_p
    curl.curl_easy_setopt.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p]
    curl.curl_slist_append.restype = ctypes.c_void_p
    curl.curl_slist_append.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    curl.curl_easy_perform.argtypes = [ctypes.c_void_p]
    curl.curl_easy_strerror.restype = ctypes.c_char_p
    curl.curl_easy_getinfo.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p]
    h = curl.curl_easy_init()
    slist = None
    for k, v in json.loads(headers).items():
        slist = curl.curl_slist_append(slist, f"{k}: {v}".encode())
    data = body.encode()
    keep = [ctypes.c_char_p(url.encode()), ctypes.c_char_p(ca.encode()), ctypes.c_char_p(data),
            WRITE_CB(lambda _p, size, n, _u: size * n)]
    curl.curl_easy_setopt(h, CURLOPT_URL, keep[0])
    curl.curl_easy_setopt(h, CURLOPT_CAINFO, keep[1])
    curl.curl_easy_setopt(h, CURLOPT_POSTFIELDS, keep[2])
    curl.curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE, ctypes.c_void_p(len(data)))
    curl.curl_easy_setopt(h, CURLOPT_HTTPHEADER, slist)
    curl.curl_easy_setopt(h, CURLOPT_HTTP_VERSION, ctypes.c_void_p(CURL_HTTP_VERSION_1_1))
    curl.curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, keep[3])
    start = 0.0
    for i in range(repeat):  # one easy handle: its connection is reused
        if i == 1:
            start = time.perf_counter()
        rc = curl.curl_easy_perform(h)
        if rc:
            print(curl.curl_easy_strerror(rc).decode(), file=sys.stderr)
            return 1
        code = ctypes.c_long()
        curl.curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, ctypes.byref(code))
        if code.value != 200:
            print("status", code.value, file=sys.stderr)
            return 3
    if os.environ.get("CURL_CTYPES_TIME") == "1":
        print(time.perf_counter() - start)
    return 0


if __name__ == "__main__":
    sys.exit(main())
