"""FoldLedger: every open the kernel counts in a fold slot is reported exactly once, whichever
of open record, slot read or tail reports it first."""

from hypothesis import given
from hypothesis import strategies as st

from libobs.exec.fold import FoldLedger

ID, PROC = {"session": "1@2"}, {"pid": 7}


def opened(led: FoldLedger, opens: int, gen: int = 100, tid: int = 7) -> int:
    return led.opened(tid, gen, opens, "/tmp/f", 65, 7, ID, PROC)


def test_unfolded_open_counts_itself():
    assert FoldLedger().opened(7, 0, 1, "/f", 65, 7, ID, PROC) == 1


def test_record_read_tail_each_add_only_what_is_new():
    led = FoldLedger()
    assert opened(led, 1) == 1
    assert [(c, ts) for _, c, ts in led.read([(7, 100, 40, 555)])] == [(39, 555)]
    assert opened(led, 41) == 1            # the window's record: one new open
    assert led.read([(7, 100, 41, 556)]) is not None
    assert list(led.read([(7, 100, 41, 556)])) == []
    slot, n = led.ended(7, 100, 50)
    assert n == 9 and slot.path == "/tmp/f"
    assert led.slots == {}


def test_a_record_already_covered_by_a_read_adds_nothing():
    led = FoldLedger()
    opened(led, 1)
    list(led.read([(7, 100, 60, 1)]))
    assert opened(led, 50) == 0             # sent before the read, drained after it
    assert led.ended(7, 100, 60) is None


def test_tail_without_first_record_is_counted_as_orphan():
    led = FoldLedger()
    assert led.ended(7, 100, 5) is None and led.orphans == 5


def test_slot_gone_twice_is_forgotten():
    led = FoldLedger()
    opened(led, 1)
    list(led.read([]))
    assert led.slots
    list(led.read([]))
    assert not led.slots


@given(st.lists(st.tuples(st.sampled_from(["rec", "read"]), st.integers(1, 50)), max_size=30))
def test_total_is_exact(steps):
    led = FoldLedger()
    total = opened(led, 1)
    opens = 1
    for what, more in steps:
        opens += more
        if what == "rec":
            total += opened(led, opens)
        else:
            total += sum(c for _, c, _ in led.read([(7, 100, opens, 0)]))
    hit = led.ended(7, 100, opens + 3)
    total += hit[1] if hit else 0
    assert total == opens + 3
