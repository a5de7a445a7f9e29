"""Options reach BPF only as -D constants whose names and integer values are checked: no text
from a command line can become C (libobs/kernel/program.py)."""

from __future__ import annotations

import os
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from libobs.kernel.program import base_defines, cflags

DEFINE = re.compile(r"-D[A-Z][A-Z0-9_]{0,63}=-?[0-9]+")


def test_ints_and_true_become_defines_false_is_left_out():
    flags = cflags({"MAX_ARGV": 131072, "FILTER_PID": True, "FILTER_COMM": False, "NEG": -1})
    assert [f for f in flags if f.startswith("-D")] == [
        "-DFILTER_PID=1", "-DMAX_ARGV=131072", "-DNEG=-1"]


@pytest.mark.parametrize("name", ["max_argv", "X=1 -include /etc/passwd", "A;B", "", "1X",
                                  "X" * 65, "X\n#include <x>", "X\n"])
def test_a_name_that_is_not_a_c_identifier_is_refused(name):
    with pytest.raises(ValueError, match="bad BPF constant name"):
        cflags({name: 1})


@pytest.mark.parametrize("value", ["1); evil(", 1.5, None, b"1"])
def test_a_value_that_is_not_an_int_is_refused(value):
    with pytest.raises(TypeError, match="must be int or bool"):
        cflags({"X": value})


@given(st.dictionaries(st.text(max_size=80), st.one_of(st.integers(), st.booleans(), st.text())))
def test_whatever_comes_in_only_checked_defines_go_out(defines):
    try:
        flags = cflags(defines)
    except (ValueError, TypeError):
        return
    assert all(DEFINE.fullmatch(f) for f in flags if f.startswith("-D"))


@pytest.mark.parametrize("ring_bytes", [0, 3 * os.sysconf("SC_PAGE_SIZE"), 100])
def test_a_ring_that_is_not_a_power_of_two_of_pages_is_refused(ring_bytes):
    with pytest.raises(ValueError, match="power-of-two number of pages"):
        base_defines(ring_bytes)
