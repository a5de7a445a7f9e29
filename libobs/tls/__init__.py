"""TLS plaintext: finding TLS libraries, records, HTTP reassembly, LLM API decoding (bpf/ssl.bpf.c → obs-ssl)."""
