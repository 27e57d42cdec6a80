"""The copy of large buffers into shared memory: exact at every size and alignment, compiled or pure."""

from __future__ import annotations

import mmap
import os
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dynapipeline._transports._remote import copying

PAGE = 4096
STREAM_MIN = 1 << 20  # where the compiled copy starts to stream (copy_c.pyx)

# Both copies where the compiled one is built: the pure one is what the pure leg and other machines use.
COPIES = [pytest.param(copying._copy_py, id="pure")]
if copying.STREAMS:
    COPIES.append(pytest.param(copying.copy_into, id="compiled"))

# Around the sizes where the compiled copy changes how it works: the 1 MiB cut, whole groups of four pages,
# cache lines left over, bytes left over.
SIZES = [0, 1, 63, 64, 65, PAGE - 1, STREAM_MIN - 1, STREAM_MIN, STREAM_MIN + 1, STREAM_MIN + 4 * PAGE * 3 + 64 * 5 + 7]


def _mapped(size: int) -> mmap.mmap:
    """Shared memory as the arenas hold it (a memfd mapping)."""
    fd = os.memfd_create("dynapipeline-test")
    try:
        os.ftruncate(fd, max(size, 1))
        return mmap.mmap(fd, max(size, 1))
    finally:
        os.close(fd)


@pytest.mark.parametrize("copy", COPIES)
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("shift", [0, 1, 17, 63])
def test_a_copy_lands_byte_for_byte_and_touches_nothing_around_it(copy, size: int, shift: int) -> None:
    source = os.urandom(size + 5)[3:3 + size]  # a source that starts off any alignment too
    mm = _mapped(size + shift + 64)
    view = memoryview(mm)
    try:
        view[:] = b"\xaa" * len(view)
        copy(view[shift:shift + size], source)
        assert view[shift:shift + size] == source
        assert view[:shift] == b"\xaa" * shift
        assert view[shift + size:] == b"\xaa" * (len(view) - shift - size)
    finally:
        view.release()
        mm.close()


@pytest.mark.parametrize("copy", COPIES)
def test_a_copy_takes_any_contiguous_source_and_a_bytearray_destination(copy) -> None:
    source = bytearray(os.urandom(STREAM_MIN + 100))
    dest = bytearray(len(source))
    copy(memoryview(dest), memoryview(source))
    assert dest == source


@pytest.mark.parametrize("copy", COPIES)
def test_sizes_that_differ_are_refused_naming_both(copy) -> None:
    with pytest.raises(ValueError, match="destination has 10 bytes, the source 11"):
        copy(memoryview(bytearray(10)), b"x" * 11)


@pytest.mark.parametrize("copy", COPIES)
def test_a_read_only_destination_is_refused(copy) -> None:
    with pytest.raises((TypeError, ValueError, BufferError)):
        copy(memoryview(b"\0" * 100), b"x" * 100)


@settings(max_examples=40, deadline=None)
@given(size=st.integers(0, STREAM_MIN + 5 * PAGE), shift=st.integers(0, 127), seed=st.binary(min_size=1, max_size=8))
def test_the_copy_in_use_is_exact_for_any_size_and_shift(size: int, shift: int, seed: bytes) -> None:
    source = (seed * (size // len(seed) + 1))[:size]
    dest = bytearray(size + shift)
    copying.copy_into(memoryview(dest)[shift:], source)
    assert dest[shift:] == source and dest[:shift] == bytes(shift)


def test_the_compiled_copy_is_used_with_the_compiled_engine_and_never_without_extensions() -> None:
    if os.environ.get("DYNAPIPELINE_TEST_MODE") == "compiled":
        from dynapipeline._transports._remote import copy_c  # type: ignore[attr-defined]  # built, no stub

        assert copying.copy_into is copy_c.copy_into
        assert copying.STREAMS == copy_c.STREAMING  # False only where the compiler had no SSE2
    env = {**os.environ, "DYNAPIPELINE_NO_EXTENSIONS": "1"}
    out = subprocess.run([sys.executable, "-c", "from dynapipeline._transports._remote import copying as c; "
                          "print(c.STREAMS, c.copy_into.__name__)"], env=env, capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ["False", "_copy_py"]
