"""Finding TLS stacks other than shared OpenSSL: Go crypto/tls, GnuTLS, NSS, and those obs cannot read."""
