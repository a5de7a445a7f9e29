"""Tiny client programs (run with `python -c`) whose outcome a guard test reads on stdout."""

# Opens each path given; prints "ok" or the errno, one line per path.
OPENER = """
import sys
for p in sys.argv[1:]:
    try:
        open(p, "rb").close()
        print("ok")
    except OSError as e:
        print(e.errno)
"""

# execv()s argv[1:]; on failure prints the errno and exits 3.
EXECER = """
import os, sys
try:
    os.execv(sys.argv[1], sys.argv[1:])
except OSError as e:
    print(e.errno)
    sys.exit(3)
"""
