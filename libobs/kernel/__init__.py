"""Build, load and read BPF programs: typed options, BTF offsets, ring buffers, links, feature checks."""
