import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.support.readme import replace_block

DOC = "a\n<!-- begin t (nox -s x) -->\nold\n<!-- end t -->\nz\n"

def test_block_replaced_and_rest_kept() -> None:
    assert replace_block(DOC, "t", "| new |\n") == "a\n<!-- begin t (nox -s x) -->\n| new |\n<!-- end t -->\nz\n"

def test_missing_or_doubled_markers_refused() -> None:
    with pytest.raises(ValueError):
        replace_block("no markers", "t", "x")
    with pytest.raises(ValueError):
        replace_block(DOC + DOC, "t", "x")

@given(st.text())
def test_any_body_is_put_in_verbatim_once(body: str) -> None:
    out = replace_block(DOC, "t", body)
    assert out.startswith("a\n<!-- begin t (nox -s x) -->\n") and out.endswith("<!-- end t -->\nz\n")
    assert body.rstrip("\n") in out


@pytest.mark.parametrize("name", ["tls-matrix", "agents", "agents-nagle"])
def test_readme_carries_each_measured_table_once(name: str) -> None:
    from tests.support.readme import README
    replace_block(README.read_text(), name, "x")
