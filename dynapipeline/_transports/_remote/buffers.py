"""Pickles whose large buffers travel out of band: written once into shared memory, only their place in the pipe.

::

    pack(obj) ─► pickle protocol 5 ─┬─ small buffers, small bytes: in band, as usual
                                    └─ a buffer ≥ threshold ─► alloc(n): a Block of the sender's shared memory
                                                              (copied there once, past the cache: ``copying``)
                                                              ─► Shared(data, buffers, pinned)
    unpack(bytes) ─► plain pickle: pickle.loads
                 └─ Shared: attach(Block) per buffer ─► objects rebuilt on the shared memory (numpy: a view, no copy)

What goes out of band (each at or above the threshold):

- anything pickle protocol 5 hands a ``PickleBuffer`` for: contiguous numpy
  arrays (any dtype but ``object``; non-contiguous ones are made contiguous
  first, as a copy), ``pickle.PickleBuffer`` itself;
- ``memoryview`` (which the standard pickler refuses), through ``reducer_override``;
- ``bytes`` and ``bytearray``, which the C pickler pickles before it asks
  ``reducer_override``: through ``persistent_id``. That hook costs a Python call
  per pickled object, so it is only used on a second pass, when the first pickle
  came out large (or when the object is itself large bytes): tiny items pay nothing.

On the receiving side, numpy arrays and memoryviews are *views* on the block (a
bare ``PickleBuffer``, a byte ``memoryview``):
writable, the receiver's own, alive as long as the receiver holds them (the
block is reused only after they are gone: ``attach``'s exporters tell when).
A large ``bytes`` is sent with room for its object header around its data, and
on CPython arrives as a ``bytes`` object laid on the block, without a copy
(``shared_bytes``: the block is released once nobody holds that object);
elsewhere it is copied out. A ``bytearray`` owns a separate, resizable buffer:
it is copied out of the block once, and the block is released at once.

Plain Python on purpose: it runs in worker processes, and numpy is never
imported here (its arrays come through the protocol's own buffers).
"""

from __future__ import annotations

import io
import pickle
import sys
from collections.abc import Callable
from typing import Any, NamedTuple, Protocol

import cloudpickle

from dynapipeline._transports._remote.copying import copy_into
from dynapipeline._transports._remote.shared_bytes import HEADER, LAYS_BYTES, bytes_on

__all__ = ["SHARED", "Arena", "Block", "Large", "Packed", "Shared", "SharedHooks", "pack", "pack_with", "probe",
           "rebuild_view", "small", "unpack"]

PROTOCOL = 5
SHARED = b"S"  # first byte of a packed message with out-of-band blocks (a plain pickle starts with b"\x80")
_SHARED_BYTE = SHARED[0]


class Block(NamedTuple):
    """A range of one process's shared memory, as it travels."""

    owner: int  # pid of the process whose arena holds it (it reuses the block once released)
    segment: int  # the owner's segment number
    offset: int
    size: int


class Shared(NamedTuple):
    """A pickle and the blocks its large buffers were written to."""

    data: bytes  # pickle protocol 5
    buffers: list[Block]  # out-of-band buffers, in the order the pickle takes them (``pickle.loads(buffers=)``)
    pinned: list[Block]  # large ``bytes`` and ``bytearray``, by their index here (the pickle's persistent ids)


class Packed(NamedTuple):
    """What ``pack`` made: the bytes to send, and the blocks they hold (until the receiver releases them)."""

    data: bytes
    blocks: tuple[Block, ...]


class Arena(Protocol):
    """Where a sender's large buffers go: this process's shared memory."""

    def alloc(self, size: int) -> tuple[Block, memoryview]:
        """A free block of ``size`` bytes and a writable view of exactly its memory."""

    def free(self, blocks: list[Block]) -> None:
        """Blocks to reuse."""


# (Block) -> an object exporting the block's memory; the block stays the receiver's as long as that object lives.
Attach = Callable[[Block], Any]


def pack(obj: Any, threshold: int | None, arena: Arena | None, use_cloudpickle: bool = False) -> Packed:
    """``obj`` pickled, its buffers of ``threshold`` bytes or more in blocks of ``arena``.

    Without a threshold (or an arena) it is a plain pickle. ``use_cloudpickle``:
    cloudpickle (lambdas, local classes) instead of the standard pickler, which is
    otherwise tried first and is several times faster. A small object costs one
    ``pickle.dumps``: its buffers are only looked at (``_Probe``).
    """
    if threshold is None or arena is None:
        return Packed(_plain(obj, use_cloudpickle), ())
    if not use_cloudpickle:
        data = small(obj, threshold)
        if data is not None:
            return Packed(data, ())
    # After small(), pack_with's own first pass would only do the same pass again.
    return pack_with(obj, threshold, arena, cloudpickle.Pickler if use_cloudpickle else pickle.Pickler,
                     probed=not use_cloudpickle)


def small(obj: Any, threshold: int, pickler: type | None = None, **options: Any) -> bytes | None:
    """``obj``'s plain pickle when nothing in it reaches ``threshold`` (``pack`` needs no shared memory), else None.

    The hot path of ``pack`` for small items, at the C pickler's speed: their
    buffers are only looked at (``_Probe``). ``pickler``: a class of the caller's
    instead of ``pickle.dumps`` (``options`` go to its constructor); after None,
    ``pack_with(..., probed=True)`` packs the object without trying this again.
    """
    if _large_bytes(obj, threshold):
        return None
    try:
        if pickler is None:
            data = pickle.dumps(obj, protocol=PROTOCOL, buffer_callback=probe(threshold))
        else:
            out = io.BytesIO()
            pickler(out, protocol=PROTOCOL, buffer_callback=probe(threshold), **options).dump(obj)
            data = out.getvalue()
    except Exception:  # noqa: BLE001 - a large buffer (Large), a lambda, a memoryview: pack_with tells
        return None
    return data if len(data) < threshold else None


def pack_with(obj: Any, threshold: int, arena: Arena, base: type, *, probed: bool = False, **options: Any) -> Packed:
    """``pack`` with a pickler class of the caller's (``options`` go to its constructor).

    A first pass pickles at the C pickler's speed, with only protocol 5's buffers
    out of band; if what stayed in band is large (bytes, bytearray, a memoryview),
    or that pass failed, a second pass adds ``SharedHooks``. Then, for the standard
    pickler, cloudpickle. ``probed``: the caller's own first pass (a ``probe``) found
    a large buffer or a large pickle, so this one starts with the hooks.
    """
    packer = _Packer(threshold, arena)
    bases = [base] if base is not pickle.Pickler else [pickle.Pickler, cloudpickle.Pickler]
    if not probed and not _large_bytes(obj, threshold):
        try:
            data = packer.dump(base, obj, options)
        except Exception:  # noqa: BLE001 - a memoryview, say: the passes below tell, or raise the real error
            packer.discard()
        else:
            if len(data) < threshold:
                return packer.result(data)
            packer.discard()
    error: Exception | None = None
    for cls in bases:
        try:
            return packer.result(packer.dump(_with_hooks(cls), obj, options))
        except Exception as failed:  # noqa: BLE001 - the next pickler may do it (cloudpickle: lambdas)
            packer.discard()
            error = failed
    assert error is not None
    raise error


def unpack(data: bytes | memoryview, attach: Attach | None) -> Any:
    """What ``pack`` made: a plain pickle, or one whose buffers are in shared blocks (``attach`` maps them)."""
    if data[0] != _SHARED_BYTE:  # an int compare: this runs once per result
        return pickle.loads(data)
    if attach is None:
        raise pickle.UnpicklingError("a pickle with shared-memory buffers, and no shared memory to read them from")
    shared: Shared = pickle.loads(data[1:])
    # Bytes views, not the exporters: what a reconstructor (numpy's) does not consume, a bare PickleBuffer's
    # buffer, is the object received, and a memoryview is what can be used (and sent back) as any other.
    buffers = [memoryview(attach(block)).cast("B") for block in shared.buffers]
    if not shared.pinned:
        return pickle.loads(shared.data, buffers=buffers)
    return _PinnedUnpickler(shared.data, buffers, shared.pinned, attach).load()


def rebuild_view(buffer: Any, fmt: str, shape: tuple[int, ...], readonly: bool) -> memoryview:
    """A ``memoryview`` as it was sent (format, shape, read-only), on the received buffer."""
    view: Any = memoryview(buffer).cast("B")  # Any: typeshed types cast() by literal formats only
    if fmt != "B" or len(shape) != 1:
        view = view.cast(fmt, shape) if shape else view.cast(fmt)
    result: memoryview = view.toreadonly() if readonly else view
    return result


class _PinnedUnpickler(pickle.Unpickler):
    """Rebuilds the large ``bytes`` and ``bytearray`` a pickle names by persistent id (a method: on 3.13 the
    C unpickler's ``persistent_load`` attribute is read-only)."""

    def __init__(self, data: bytes, buffers: list[Any], pinned: list[Block], attach: Attach) -> None:
        super().__init__(io.BytesIO(data), buffers=buffers)
        self.pinned = pinned
        self.attach = attach

    def persistent_load(self, pid: tuple[bool, int]) -> bytes | bytearray:
        is_bytearray, index = pid
        exporter = self.attach(self.pinned[index])
        if is_bytearray:  # a bytearray owns its memory: one copy, and the block is free again at once
            return bytearray(exporter)
        if LAYS_BYTES:
            return bytes_on(exporter)
        return bytes(memoryview(exporter)[HEADER:-1])


class SharedHooks:
    """Pickler hooks for what protocol 5 keeps in band: large bytes, bytearray, memoryview, non-contiguous arrays.

    Mixed into a pickler class before it (``_with_hooks``); ``packer`` is set per pickle.
    """

    packer: _Packer

    def persistent_id(self, obj: Any) -> tuple[bool, int] | None:
        # The only hook the C pickler calls for bytes and bytearray (it pickles builtin types before
        # ``reducer_override``); a Python call per object, hence the second pass only.
        kind = type(obj)
        if (kind is bytes or kind is bytearray) and len(obj) >= self.packer.threshold:
            pinned = self.packer.pinned
            pinned.append(self.packer.copy(memoryview(obj), around=kind is bytes))
            return kind is bytearray, len(pinned) - 1
        return None

    def reducer_override(self, obj: Any) -> Any:
        if type(obj) is memoryview:
            view: Any = obj  # Any: typeshed types cast() by literal formats only
            if not obj.contiguous:
                # A contiguous copy; a bytearray for a writable view (bytes would make it arrive read-only).
                data = view.tobytes()
                view = memoryview(data if obj.readonly else bytearray(data)).cast(view.format, view.shape)
            return rebuild_view, (pickle.PickleBuffer(view), view.format, tuple(view.shape or ()), obj.readonly)
        if _is_strided_array(obj, self.packer.threshold):
            return obj.copy().__reduce_ex__(PROTOCOL)  # contiguous now: out of band instead of in band
        parent = getattr(super(), "reducer_override", None)
        return parent(obj) if parent is not None else NotImplemented


class Large(Exception):
    """Raised by a ``probe``: the object has a large buffer, the fast pass is abandoned."""


class _Probe:
    """A ``buffer_callback`` that keeps small buffers in band and stops the pickle at a large one."""

    __slots__ = ("threshold",)

    def __init__(self, threshold: int) -> None:
        self.threshold = threshold

    def __call__(self, buffer: pickle.PickleBuffer) -> bool:
        try:
            size = buffer.raw().nbytes
        except BufferError:  # not contiguous: in band
            return True
        if size >= self.threshold:
            raise Large
        return True


_PROBES: dict[int, _Probe] = {}


def probe(threshold: int) -> _Probe:
    """The ``buffer_callback`` that raises ``Large`` at a buffer of ``threshold`` bytes or more (one per value)."""
    found = _PROBES.get(threshold)
    if found is None:
        found = _PROBES[threshold] = _Probe(threshold)
    return found


def _plain(obj: Any, use_cloudpickle: bool) -> bytes:
    """A pickle with every buffer in band: the standard pickler, else cloudpickle with ``SharedHooks``.

    The hooks make a ``memoryview`` arrive as one (cloudpickle alone sends its bytes), so
    that turning shared memory off changes no result's type.
    """
    if not use_cloudpickle:
        try:
            return pickle.dumps(obj, protocol=PROTOCOL)
        except Exception:  # noqa: BLE001 - lambdas, local classes, memoryviews: the hooks and cloudpickle
            pass
    out = io.BytesIO()
    pickler: Any = _with_hooks(cloudpickle.Pickler)(out, protocol=PROTOCOL)
    pickler.packer = _Packer(sys.maxsize, None)  # no threshold is ever reached: nothing leaves the pickle
    pickler.dump(obj)
    return out.getvalue()


def _large_bytes(obj: Any, threshold: int) -> bool:
    """Large bytes on top (an item, or a chunk's first item): the first pass would only copy them in band."""
    if type(obj) is list and obj:
        obj = obj[0]
    return type(obj) in (bytes, bytearray) and len(obj) >= threshold


def _is_strided_array(obj: Any, threshold: int) -> bool:
    """A large numpy array that is not contiguous (numpy pickles those in band), by duck typing: no numpy import."""
    flags = getattr(obj, "flags", None)
    return (type(obj).__name__ == "ndarray" and type(obj).__module__ == "numpy" and flags is not None
            and not flags.c_contiguous and not flags.f_contiguous and obj.nbytes >= threshold
            and not obj.dtype.hasobject)


class _Packer:
    """One ``pack``: the blocks its pickle's large buffers went to."""

    def __init__(self, threshold: int, arena: Arena | None) -> None:
        self.threshold = threshold
        self.arena = arena  # None: in band only (``_plain``)
        self.buffers: list[Block] = []
        self.pinned: list[Block] = []

    def dump(self, cls: type, obj: Any, options: dict[str, Any]) -> bytes:
        out = io.BytesIO()
        pickler = cls(out, protocol=PROTOCOL, buffer_callback=self.out_of_band, **options)
        pickler.packer = self  # read by SharedHooks
        pickler.dump(obj)
        return out.getvalue()

    def out_of_band(self, buffer: pickle.PickleBuffer) -> bool:
        """``buffer_callback``: a large contiguous buffer goes to a block (False: not in band)."""
        try:
            raw = buffer.raw()
        except BufferError:  # not contiguous: in band, as pickle would without us
            return True
        if raw.nbytes < self.threshold:
            return True
        self.buffers.append(self.copy(raw))
        return False

    def copy(self, raw: memoryview, around: bool = False) -> Block:
        """``raw`` in a new block; ``around``: with room for a ``bytes`` header before it and a NUL after."""
        assert self.arena is not None  # no threshold is reached without one
        size = raw.nbytes
        if raw.format != "B" or raw.ndim != 1:
            raw = raw.cast("B")
        if around:
            block, view = self.arena.alloc(HEADER + size + 1)
            with view:
                copy_into(view[HEADER:HEADER + size], raw)
                view[HEADER + size] = 0
            return block
        block, view = self.arena.alloc(size)
        with view:
            copy_into(view, raw)
        return block

    def discard(self) -> None:
        """Free this pass's blocks: the next pass makes its own."""
        if (self.buffers or self.pinned) and self.arena is not None:
            self.arena.free(self.buffers + self.pinned)
        self.buffers, self.pinned = [], []

    def result(self, data: bytes) -> Packed:
        if not self.buffers and not self.pinned:
            return Packed(data, ())
        shared = Shared(data=data, buffers=self.buffers, pinned=self.pinned)
        return Packed(SHARED + pickle.dumps(shared, protocol=PROTOCOL), (*self.buffers, *self.pinned))


_WITH_HOOKS: dict[type, type] = {}


def _with_hooks(base: type) -> type:
    """``base`` with ``SharedHooks`` first in its MRO (made once per pickler class)."""
    made = _WITH_HOOKS.get(base)
    if made is None:
        made = _WITH_HOOKS[base] = type(f"Shared{base.__name__}", (SharedHooks, base), {})
    return made
