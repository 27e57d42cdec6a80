"""Large ``bytes`` received without a copy: a ``bytes`` object laid on the shared-memory block that carries it.

A ``bytes`` owns its memory (its data follows its header in one allocation), so
the usual way to receive one from shared memory is a copy. On CPython the
sender instead leaves room for that header before the data (``HEADER`` bytes)
and a NUL after it; the receiver writes the header there (reference count 1,
type ``bytes``, size, hash not computed yet) and hands out that object. It is a
real ``bytes`` in every way (compares, hashes, slices, pickles, passes to C code
as ``bytes``); only where its memory lives differs.

Lifetime: the count of 1 written into the header is this module's own, never
given away, so the object is never deallocated (which would free memory that no
allocator gave). ``let_go()`` finds the objects whose count is back to that 1,
i.e. nobody holds them any more, and drops their block's exporter: the block
returns to its owner. It runs when a message goes back to the sender and after
the garbage collector's older-generation collections (a ``gc.callbacks`` hook:
results dropped after their pool closed need no message to let their memory
go). An object kept (a stage's cache, a list of results) keeps its block as
long as it is kept.

Two more places where a header in shared memory would be shared by mistake:

- ``fork``: the child inherits the objects *and* the shared mapping, so its
  reference counting would change the parent's counts. A fork hook gives the
  child a private copy of those pages (same addresses, the counts as they were
  at the fork) before it runs any Python code; the parent waits in the fork
  until that copy is made, and releases nothing meanwhile. The price: a fork
  copies what laid ``bytes`` the process holds at that moment (about 1.5 s and
  its size in memory per child for 1 GiB here), where it would otherwise share
  them copy-on-write.
- Interpreter exit: the exporters are never freed (``_pinned`` is leaked on
  purpose), so no mapping goes away while module teardown still touches a
  laid object's header; the kernel unmaps everything when the process ends.

Where this cannot be checked to be safe (not CPython, a debug build, a
free-threaded build, any layout other than the one measured at import on a real
``bytes``), ``LAYS_BYTES`` is False and the receiver copies, as before.

Written here rather than taken from a library: neither the standard library nor
numpy or cloudpickle can make a ``bytes`` that does not own its memory.
"""

from __future__ import annotations

import atexit
import ctypes
import gc
import mmap
import os
import sys
import threading
from typing import Any

__all__ = ["HEADER", "LAYS_BYTES", "bytes_on", "held", "let_go"]

HEADER = bytes.__basicsize__ - 1  # what precedes a bytes object's data: 32 on 64-bit CPython (the 1: its NUL)
_WORD = ctypes.sizeof(ctypes.c_ssize_t)

_lock = threading.Lock()  # unpacking (adds) and replying (sweeps) may run on different threads
_pinned: dict[int, Any] = {}  # header address -> the block's exporter (it keeps the block and its mapping alive)


def bytes_on(exporter: Any) -> bytes:
    """The ``bytes`` whose header and data fill ``exporter`` (a ctypes array over a block: header, data, NUL)."""
    address = ctypes.addressof(exporter)
    size = len(exporter) - HEADER - 1
    header = (ctypes.c_ssize_t * 4).from_address(address)
    header[0], header[1], header[2], header[3] = 1, id(bytes), size, -1  # refcount, type, size, hash (not yet)
    made: bytes = ctypes.cast(address, ctypes.py_object).value  # a new reference: the count is 2 now
    with _lock:
        _pinned[address] = exporter
    return made


def let_go() -> None:
    """Drop the blocks of laid ``bytes`` that nobody holds any more (their exporters' weakrefs release them)."""
    # Never blocks: a collection may run this inside ``bytes_on``'s own lock; the next sweep does it then.
    if not _pinned or _forking or not _lock.acquire(blocking=False):
        return
    try:
        free = [address for address in _pinned if _refcount(address) == 1]
        exporters = [_pinned.pop(address) for address in free]
    finally:
        _lock.release()
    del exporters  # after the lock: their weakref callbacks run here


def held() -> int:
    """How many laid ``bytes`` are still held (tests)."""
    return len(_pinned)


def _refcount(address: int) -> int:
    return ctypes.c_ssize_t.from_address(address).value


# -- fork: the child gets its own copy of the laid objects' pages -------------------------------------------------

_forking = False  # between the fork and the child's copy: no block may go back to its owner (it could be rewritten)
_fork: tuple[list[tuple[int, int]], dict[int, int], int, int] | None = None  # spans, counts, pipe (read, write)


def _before_fork() -> None:
    global _fork, _forking
    if not _pinned:
        return
    page = mmap.PAGESIZE
    spans: list[tuple[int, int]] = []
    for address, exporter in sorted(_pinned.items()):
        start, end = address // page * page, -(-(address + len(exporter)) // page) * page
        if spans and start <= spans[-1][1]:
            spans[-1] = (spans[-1][0], max(end, spans[-1][1]))
        else:
            spans.append((start, end))
    # The counts now, with the GIL held: the parent's threads may change them before the child copies the pages.
    counts = {address: _refcount(address) for address in _pinned}
    read, write = os.pipe()
    _fork, _forking = (spans, counts, read, write), True


def _after_fork_in_parent() -> None:
    global _fork, _forking
    if _fork is None:
        return
    _, _, read, write = _fork
    _fork = None
    os.close(write)
    try:
        os.read(read, 1)  # the child has its copy (or is gone: end of file)
    finally:
        os.close(read)
        _forking = False


def _after_fork_in_child() -> None:
    global _fork, _forking, _lock
    _lock = threading.Lock()  # another thread of the parent may have held it at the fork
    if _fork is None:
        return
    spans, counts, read, write = _fork
    _fork, _forking = None, False
    os.close(read)
    try:
        for start, end in spans:
            _make_private(start, end - start)
        for address, count in counts.items():
            ctypes.c_ssize_t.from_address(address).value = count
    finally:
        os.write(write, b"1")
        os.close(write)


def _make_private(start: int, size: int) -> None:
    """Replace shared pages by private memory of the same content, at the same addresses."""
    saved = ctypes.string_at(start, size)
    placed = _mmap(start, size, mmap.PROT_READ | mmap.PROT_WRITE, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | _MAP_FIXED,
                   -1, 0)
    if placed != start:
        errno = ctypes.get_errno()
        raise OSError(errno, f"cannot make laid bytes private after fork: {os.strerror(errno)}")
    ctypes.memmove(start, saved, size)


def _libc_mmap() -> Any:
    function = ctypes.CDLL(None, use_errno=True).mmap
    function.restype = ctypes.c_void_p
    function.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    return function


_MAP_FIXED = 0x10  # Linux and macOS


def _at_exit() -> None:
    # Module teardown may run collections with this module half cleared: no more sweeps, nothing to give back.
    if _after_collection in gc.callbacks:
        gc.callbacks.remove(_after_collection)


_KEPT: list[Any] = []  # the self-check's buffer: the object laid on it must never be freed


def _check() -> bool:
    """Whether this interpreter's ``bytes`` has the layout ``bytes_on`` writes, checked on real objects."""
    if sys.implementation.name != "cpython" or hasattr(sys, "gettotalrefcount"):  # debug builds add fields
        return False
    gil = getattr(sys, "_is_gil_enabled", None)
    if gil is not None and not gil():  # free-threaded: another header
        return False
    if bytes.__flags__ & (1 << 14) or bytes.__basicsize__ != 4 * _WORD + 1:  # Py_TPFLAGS_HAVE_GC: a GC header
        return False
    sample = bytes(range(256)) * 8
    words = (ctypes.c_ssize_t * 4).from_address(id(sample))
    if words[1] != id(bytes) or words[2] != len(sample) or words[3] != -1:
        return False
    if ctypes.string_at(id(sample) + HEADER, len(sample) + 1) != sample + b"\0":
        return False
    buffer = (ctypes.c_char * (HEADER + len(sample) + 1))()
    _KEPT.append(buffer)
    ctypes.memmove(ctypes.addressof(buffer) + HEADER, sample, len(sample))
    made = bytes_on(buffer)
    same = type(made) is bytes and made == sample and hash(made) == hash(sample) and made[3:9] == sample[3:9]
    del made
    with _lock:
        _pinned.pop(ctypes.addressof(buffer))
    return same and _refcount(ctypes.addressof(buffer)) == 1


def _after_collection(phase: str, info: dict[str, int]) -> None:
    # Not after the youngest generation's collections: they run every few hundred allocations, and a sweep
    # costs a read per held object; the older ones (and every message back to an owner) suffice.
    if phase == "stop" and info.get("generation", 2) >= 1:
        let_go()


LAYS_BYTES = _check()
if LAYS_BYTES:
    _mmap = _libc_mmap()
    ctypes.pythonapi.Py_IncRef(ctypes.py_object(_pinned))  # never freed: see the module docstring
    gc.callbacks.append(_after_collection)
    atexit.register(_at_exit)
    os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent,
                        after_in_child=_after_fork_in_child)
