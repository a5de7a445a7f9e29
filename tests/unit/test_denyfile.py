import ipaddress
import os
import re

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from hypothesis.provisional import domains

from libobs.guard import denyfile
from libobs.guard.denyfile import (
    DenyFileError,
    DenyFileWatcher,
    PathIndex,
    match_path,
    parse_egress,
    parse_paths,
    read_denyfile,
)

ME = os.geteuid()


def content_linenos(text: str) -> set[int]:
    """Independent oracle: lines with something left after removing a comment."""
    return {
        n for n, line in enumerate(text.split("\n"), 1) if re.sub(r"(^|\s)#.*", "", line).strip()
    }


# Text built from fragments that parsers care about, so random input also hits valid rules.
fragments = st.sampled_from(
    [
        "/",
        "/etc",
        "secret",
        "..",
        ".",
        "#",
        " ",
        "\t",
        "\r",
        "\n",
        "\x00",
        "1.2.3.4",
        "::1",
        "example.com",
        ".",
        "*",
        "%",
        "é",
        "\ufffd",
        "\ud800",
        "/24",
        "xn--",
        "-",
        "_",
        "0",
    ]
)
texts = st.one_of(st.text(), st.lists(fragments | st.text(max_size=3)).map("".join))


@pytest.mark.parametrize("parse", [parse_egress, parse_paths])
@given(text=texts)
def test_parsers_are_total_and_lose_no_line(parse, text):
    rules, errors = parse(text)
    linenos = [r.lineno for r in rules] + [e.lineno for e in errors]
    assert sorted(linenos) == sorted(content_linenos(text))
    lines = text.split("\n")
    for item in [*rules, *errors]:
        assert item.line == lines[item.lineno - 1].strip()


EGRESS = """\
# full-line comment

1.2.3.4
  2001:DB8::1   # trailing comment
Api.Example.COM.
not a host!
10.0.0.0/8
1.2.3
fe80::1%eth0
*.example.com
a.com b.com
bücher.de
"""


def test_parse_egress_kinds_values_and_errors():
    rules, errors = parse_egress(EGRESS)
    assert [(r.lineno, r.kind, r.value) for r in rules] == [
        (3, "ip", ipaddress.ip_address("1.2.3.4")),
        (4, "ip", ipaddress.ip_address("2001:db8::1")),
        (5, "host", "api.example.com"),
        (12, "host", "xn--bcher-kva.de"),
    ]
    assert rules[1].line == "2001:DB8::1   # trailing comment"
    reasons = {e.lineno: e.reason for e in errors}
    assert set(reasons) == {6, 7, 8, 9, 10, 11}
    assert "CIDR" in reasons[7]
    assert "IP address" in reasons[8]
    assert "scoped" in reasons[9]
    assert "wildcard" in reasons[10]
    assert "one address" in reasons[11]


@given(ip=st.ip_addresses())
def test_every_address_parses_to_itself(ip):
    rules, errors = parse_egress(f"{ip}  # x\n")
    assert errors == []
    assert [(r.kind, r.value) for r in rules] == [("ip", ip)]


@given(name=domains())
def test_every_domain_parses_lowercased(name):
    rules, errors = parse_egress(name.upper() + ".")
    assert errors == []
    assert [(r.kind, r.value) for r in rules] == [("host", name.lower())]


def test_parse_paths_normalises_and_reports():
    text = (
        "/etc/secret/\n//srv//a/./b/../c\nrelative/path\n/\n/tmp/a#b  # note\n/x\x00y\n/bad\ufffd\n"
    )
    rules, errors = parse_paths(text)
    assert [(r.lineno, r.path) for r in rules] == [
        (1, b"/etc/secret"),
        (2, b"/srv/a/c"),
        (5, b"/tmp/a#b"),
    ]
    assert {e.lineno: e.reason for e in errors} == {
        3: "not an absolute path",
        4: "refusing to deny the whole filesystem ('/')",
        6: "path contains a NUL byte",
        7: "path is not valid UTF-8",
    }


def matched_line(rules, path):
    rule = match_path(rules, path)
    return None if rule is None else rule.lineno


def test_match_path_is_component_wise():
    rules, _ = parse_paths("/etc/secret\n/home/u/.ssh/id_rsa\n")
    assert matched_line(rules, b"/etc/secret") == 1
    assert matched_line(rules, "/etc/secret/key") == 1
    assert matched_line(rules, b"/etc/secret//deep/./x\xff") == 1
    assert matched_line(rules, b"/etc/secretary") is None
    assert matched_line(rules, b"/etc/secre") is None
    assert matched_line(rules, b"/etc") is None
    assert matched_line(rules, b"etc/secret") is None
    assert matched_line(rules, b"/home/u/.ssh/id_rsa.pub") is None
    assert matched_line(rules, b"/home/u/.ssh/id_rsa") == 2


def test_most_specific_rule_wins():
    rules, _ = parse_paths("/srv\n/srv/data/private\n")
    assert matched_line(rules, b"/srv/data/private/x") == 2
    assert matched_line(rules, b"/srv/data/public") == 1
    assert len(PathIndex(rules + rules)) == 2


component = st.text(st.characters(blacklist_characters="/\x00", codec="utf-8"), min_size=1)


@given(
    rule=st.lists(component, min_size=1, max_size=4),
    path=st.lists(component, min_size=1, max_size=6),
)
def test_match_iff_component_prefix(rule, path):
    assume("." not in rule + path and ".." not in rule + path)
    rule_text = "/" + "/".join(rule)
    rules, _ = parse_paths(rule_text)
    # Lines that strip or comment differently (outer spaces, " #") are not this property.
    assume(rules and rules[0].path == rule_text.encode())
    expected = path[: len(rule)] == rule
    assert (match_path(rules, "/" + "/".join(path)) is not None) == expected


# --- reading -----------------------------------------------------------------------------


@pytest.fixture
def safe_dir(tmp_path):
    d = tmp_path / "deny"
    d.mkdir(mode=0o755)
    os.chmod(d, 0o755)  # undo the umask either way
    return d


def write(path, data: bytes, mode=0o644):
    path.write_bytes(data)
    os.chmod(path, mode)
    return path


def test_read_denyfile_decodes_bad_utf8_as_a_reportable_line(safe_dir):
    f = write(safe_dir / "egress", b"1.2.3.4\nbad\xffhost\n")
    text = read_denyfile(f, trusted_uid=ME)
    rules, errors = parse_egress(text)
    assert len(rules) == 1
    assert [(e.lineno, e.line) for e in errors] == [(2, "bad\ufffdhost")]


@pytest.mark.parametrize("mode", [0o666, 0o664, 0o646])
def test_group_or_other_writable_file_is_refused(safe_dir, mode):
    f = write(safe_dir / "egress", b"1.2.3.4\n", mode)
    with pytest.raises(DenyFileError, match=r"writable by group or others") as e:
        read_denyfile(f, trusted_uid=ME)
    assert "\n" not in str(e.value)


def test_writable_directory_is_refused(safe_dir):
    f = write(safe_dir / "egress", b"1.2.3.4\n")
    os.chmod(safe_dir, 0o1777)
    with pytest.raises(DenyFileError, match=r"directory .* writable by group or others"):
        read_denyfile(f, trusted_uid=ME)


def test_symlink_in_an_unsafe_directory_is_refused(safe_dir, tmp_path):
    f = write(safe_dir / "egress", b"1.2.3.4\n")
    unsafe = tmp_path / "unsafe"
    unsafe.mkdir()
    os.chmod(unsafe, 0o777)
    (unsafe / "egress").symlink_to(f)
    assert read_denyfile(f, trusted_uid=ME) == "1.2.3.4\n"
    with pytest.raises(DenyFileError, match=r"unsafe"):
        read_denyfile(unsafe / "egress", trusted_uid=ME)


@pytest.mark.skipif(ME != 0, reason="chown to another uid needs root")
def test_file_owned_by_another_user_is_refused_by_default(safe_dir):
    f = write(safe_dir / "egress", b"1.2.3.4\n")
    assert read_denyfile(f) == "1.2.3.4\n"  # root-owned, 0644: accepted with the default
    os.chown(f, 1000, 1000)
    with pytest.raises(DenyFileError, match=r"owned by uid 1000, not 0"):
        read_denyfile(f)


def test_missing_file_and_fifo_are_refused_without_hanging(safe_dir):
    with pytest.raises(DenyFileError, match=r"cannot read deny-file .*No such file"):
        read_denyfile(safe_dir / "nope", trusted_uid=ME)
    os.mkfifo(safe_dir / "fifo", 0o644)
    with pytest.raises(DenyFileError, match=r"not a regular file"):
        read_denyfile(safe_dir / "fifo", trusted_uid=ME)


def test_oversized_file_is_refused(safe_dir, monkeypatch):
    monkeypatch.setattr(denyfile, "MAX_BYTES", 10)
    f = write(safe_dir / "egress", b"1.2.3.4\n" * 3)
    with pytest.raises(DenyFileError, match=r"larger than 10 bytes"):
        read_denyfile(f, trusted_uid=ME)


# --- watching ----------------------------------------------------------------------------


def watcher(path, **kw):
    kw.setdefault("interval", 0)
    return DenyFileWatcher(path, parse_egress, trusted_uid=ME, **kw)


def values(update):
    return [str(r.value) for r in update.rules]


def test_watcher_reports_first_read_then_only_changes(safe_dir):
    f = write(safe_dir / "egress", b"1.2.3.4\nbogus!\n")
    w = watcher(f)
    first = w.poll()
    assert first is not None and first.error is None
    assert values(first) == ["1.2.3.4"] and [e.lineno for e in first.errors] == [2]
    assert w.poll() is None
    write(f, b"5.6.7.8\n")
    assert values(w.poll()) == ["5.6.7.8"]
    assert w.poll() is None


def test_watcher_sees_an_editor_replacing_the_file(safe_dir):
    f = write(safe_dir / "egress", b"1.1.1.1\n")
    w = watcher(f)
    w.poll()
    tmp = write(safe_dir / ".egress.swp", b"2.2.2.2\n")  # same size, new inode
    os.rename(tmp, f)
    assert values(w.poll()) == ["2.2.2.2"]


def test_watcher_keeps_reporting_errors_once_and_recovers(safe_dir):
    f = write(safe_dir / "egress", b"1.1.1.1\n")
    w = watcher(f)
    w.poll()
    os.unlink(f)
    gone = w.poll()
    assert gone is not None and gone.error is not None and "No such file" in gone.error
    assert gone.rules == []
    assert w.poll() is None  # the same failure is not repeated every interval
    write(f, b"1.1.1.1\n", 0o666)
    refused = w.poll()
    assert refused is not None and "writable by group or others" in refused.error
    os.chmod(f, 0o644)
    back = w.poll()
    assert back is not None and back.error is None and values(back) == ["1.1.1.1"]


def test_watcher_catches_a_change_its_stat_cannot_see(safe_dir, monkeypatch):
    # Same size and, on a coarse clock, the same timestamps: only re-reading catches it.
    f = write(safe_dir / "egress", b"1.1.1.1\n")
    frozen = denyfile._file_key(str(f))
    monkeypatch.setattr(denyfile, "_file_key", lambda path: frozen)
    w = watcher(f)
    w.poll()
    write(f, b"2.2.2.2\n")
    assert values(w.poll()) == ["2.2.2.2"]


def test_watcher_honours_its_interval(safe_dir):
    now = [100.0]
    f = write(safe_dir / "egress", b"1.1.1.1\n")
    w = watcher(f, interval=0.5, clock=lambda: now[0])
    assert w.poll() is not None
    write(f, b"9.9.9.9\n")
    now[0] += 0.4
    assert w.poll() is None
    now[0] += 0.1
    assert values(w.poll()) == ["9.9.9.9"]


def test_watcher_interval_must_meet_the_two_second_promise(safe_dir):
    with pytest.raises(ValueError, match="2 s"):
        DenyFileWatcher(safe_dir / "egress", parse_egress, interval=1.5)


def test_binary_deny_file_reports_a_few_escaped_lines(safe_dir):
    p = safe_dir / "deny"
    p.write_bytes(bytes(range(256)) * 8)
    rules, errors = denyfile.parse_paths(denyfile.read_denyfile(p))
    assert len(errors) > 5
    lines = denyfile.line_errors_text(str(p), errors)
    assert len(lines) == 6 and lines[-1].endswith(f"{len(errors) - 5} more bad line(s) skipped")
    for line in lines:
        assert line.isprintable() and len(line) < 300
