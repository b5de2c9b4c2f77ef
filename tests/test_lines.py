"""The compiled line-shape check (``vstream._lines.flat_lines``) against its written rule."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

try:
    from vstream._lines import flat_lines
except ImportError:
    flat_lines = None


def _rule(body: bytes) -> int:
    """The rule of vstream/_lines.c, written plainly: no "[" anywhere; every line (the last
    one may lack its newline) at least two bytes, first "{", last "}" before an optional "\\r"."""
    if not body or b"[" in body:
        return -1
    lines = body.split(b"\n")
    if body.endswith(b"\n"):
        lines.pop()
    for line in lines:
        text = line[:-1] if line.endswith(b"\r") else line
        if len(text) < 2 or text[:1] != b"{" or text[-1:] != b"}":
            return -1
    return len(lines)


def test_the_compiled_check_is_installed_where_expected() -> None:
    # .ci/run sets VSTREAM_EXPECT_COMPILED: there the module must have been built
    if os.environ.get("VSTREAM_EXPECT_COMPILED") == "1":
        assert flat_lines is not None, "vstream._lines was not compiled"


needs_compiled = pytest.mark.skipif(flat_lines is None, reason="vstream._lines is not built here")


@needs_compiled
@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b'{"a":1}', 1),
        (b'{"a":1}\n', 1),
        (b'{"a":1}\r\n{"b":2}', 2),
        (b'{"a":1}\n{"b":2}\n', 2),
        (b"{}{}\n{}", 2),  # two values on a line pass here: the decoder's count refuses them
        (b"", -1),
        (b"\n", -1),
        (b"{", -1),
        (b"}", -1),
        (b"{}\n\n{}", -1),  # a blank line
        (b" {}", -1),
        (b"{} ", -1),
        (b"{}\r\r", -1),
        (b'{"a":[1]}', -1),
        (b'{"a":"["}', -1),  # any "[", even in a string
        (b'{"a":\n1}', -1),
    ],
)
def test_table(body: bytes, expected: int) -> None:
    assert flat_lines is not None
    assert flat_lines(body, 0, len(body)) == expected == _rule(body)


@needs_compiled
@settings(max_examples=500, deadline=None)
@given(
    st.lists(st.sampled_from([b"{", b"}", b"[", b"\r", b"\n", b"x", b'"', b" "]), max_size=40).map(b"".join),
    st.binary(max_size=4),
    st.binary(max_size=4),
)
def test_the_span_follows_the_rule(body: bytes, before: bytes, after: bytes) -> None:
    assert flat_lines is not None
    buffer = before + body + after
    got = flat_lines(buffer, len(before), len(before) + len(body))
    assert got == _rule(body)
    assert flat_lines(bytearray(buffer), len(before), len(before) + len(body)) == got
    assert flat_lines(memoryview(buffer), len(before), len(before) + len(body)) == got


@needs_compiled
def test_a_span_outside_the_buffer_is_an_error() -> None:
    assert flat_lines is not None
    for start, stop in ((-1, 2), (2, 1), (0, 4)):
        with pytest.raises(ValueError):
            flat_lines(b"{}\n", start, stop)
    with pytest.raises(TypeError):
        flat_lines("{}", 0, 2)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        flat_lines(b"{}", 0)  # type: ignore[call-arg]
