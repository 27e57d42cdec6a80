# cython: language_level=3
"""The compiled side of ``itemlog``: a plain stage's chunk run and logged with C clock reads and stores.

``run_plain`` is ``ItemLog.run_plain`` with the same rows, pickles and commits
(an item that follows one just logged starts at the clock reading that logged it),
and hands every item that is not the common case (an error, a large or
cloudpickle-only result, a full log) to the ``ItemLog``'s own methods, so that
the rules live in one place. What it saves per item, against about 1 us in pure
Python: the clock (``clock_gettime``, the clock ``time.perf_counter`` reads on
Linux), the row written with plain stores and the pickle with ``memcpy``, the
commit a release store (never seen before the item is whole), and for ``None``,
bools, 64-bit ints and floats the pickle itself: ``_encode_to`` writes the bytes
``pickle.dumps(value, 5)`` would straight into the log (making a pickler costs
~200 ns a call), and the run's end reading serves as the pickle's end (one clock
read less; the next item's run then includes the nanoseconds of this encoding).

``sum_log`` sums up a log's rows in C: ``calling.sum_runs`` without the lists;
``join_values`` makes the list of encoded results' pickle from theirs in the log.
"""

from libc.stdint cimport int64_t, uint64_t
from libc.string cimport memcpy

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.long cimport PyLong_AsLongLongAndOverflow

import pickle
import traceback

from dynapipeline._engine import RING
from dynapipeline._transports._remote import buffers
from dynapipeline._transports._remote.messages import LOG_DATA, LOG_SIZE, LOG_SLOTS, LOG_TABLE, LoggedItem
from dynapipeline._transports.calling import ItemRuns

cdef extern from *:
    """
    #include <time.h>
    #include <stdint.h>
    static inline double dp_now(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
    }
    static inline void dp_commit(int64_t *at, int64_t value) {
        __atomic_store_n(at, value, __ATOMIC_RELEASE);
    }
    """
    double dp_now() nogil
    void dp_commit(int64_t* at, int64_t value) nogil

DEF SLOWEST = 10  # the longest runs a summary keeps (2 * the 5 a report names, as calling.sum_durations)

cdef Py_ssize_t _TABLE = LOG_TABLE
cdef Py_ssize_t _DATA = LOG_DATA
cdef Py_ssize_t _ROOM = LOG_SIZE - LOG_DATA
cdef Py_ssize_t _SLOTS = LOG_SLOTS
cdef Py_ssize_t _RING = RING
cdef object _dumps = pickle.dumps
cdef object _Large = buffers.Large


def clock():
    """The clock the compiled loop times items with (``time.perf_counter``'s on Linux)."""
    return dp_now()


cdef inline Py_ssize_t _head(Py_ssize_t size) noexcept:
    """The header's length in a pickle ``_framed`` began, from the pickle's whole size (see ``_framed``)."""
    return 2 if size < 6 else 11  # a body under 4 bytes makes at most 5 in all; a frame makes at least 15


cdef inline Py_ssize_t _framed(unsigned char* out, Py_ssize_t body) noexcept:
    """Write pickle's header for a body of ``body`` bytes (a frame when it has 4 or more); where the body goes."""
    cdef Py_ssize_t k
    out[0] = 0x80
    out[1] = 5
    if body < 4:
        return 2
    out[2] = 0x95
    for k in range(8):
        out[3 + k] = (body >> (8 * k)) & 0xff if k < 2 else 0
    return 11


def encode(value):
    """``pickle.dumps(value, 5)`` for ``None``, a bool, an int of 64 bits or a float; None for anything else."""
    return _encode(value)


cdef enum:
    ENCODED_MAX = 24  # room ``_encode_to`` may use (it writes at most 22: a LONG1 of 9 bytes before trimming)


cdef object _encode(object value):
    """``encode``, called from C in the loop when the log may lack a row or ``ENCODED_MAX`` bytes of room."""
    cdef unsigned char out[ENCODED_MAX]
    cdef Py_ssize_t size = _encode_to(value, out)
    if size < 0:
        return None
    return PyBytes_FromStringAndSize(<char*>out, size)


cdef Py_ssize_t _encode_to(object value, unsigned char* out) except -2:
    """Write ``encode(value)``'s bytes at ``out`` (room for ``ENCODED_MAX``); their size, or -1 for another type.

    The loop writes straight into the log with it: no bytes object per item."""
    cdef unsigned char* body
    cdef Py_ssize_t start, n, k
    cdef int64_t v
    cdef uint64_t magnitude
    cdef double d
    cdef unsigned char* raw
    cdef type kind = type(value)
    if value is None or kind is bool:
        start = _framed(out, 2)
        out[start] = 0x4e if value is None else (0x88 if value else 0x89)  # NONE, NEWTRUE, NEWFALSE
        out[start + 1] = 0x2e  # STOP
        return start + 2
    if kind is float:
        d = value
        raw = <unsigned char*>&d
        start = _framed(out, 10)
        out[start] = 0x47  # BINFLOAT: big-endian
        for k in range(8):
            out[start + 1 + k] = raw[7 - k]
        out[start + 9] = 0x2e
        return start + 10
    if kind is not int:
        return -1
    cdef int overflow = 0
    v = PyLong_AsLongLongAndOverflow(value, &overflow)  # no Python comparison per item
    if overflow:
        return -1
    if 0 <= v < 256:
        start = _framed(out, 3)
        out[start] = 0x4b  # BININT1
        out[start + 1] = <unsigned char>v
        out[start + 2] = 0x2e
        return start + 3
    if 0 <= v < 65536:
        start = _framed(out, 4)
        out[start] = 0x4d  # BININT2
        out[start + 1] = v & 0xff
        out[start + 2] = (v >> 8) & 0xff
        out[start + 3] = 0x2e
        return start + 4
    if -(1 << 31) <= v < (1 << 31):
        start = _framed(out, 6)
        out[start] = 0x4a  # BININT: 4 bytes, signed
        for k in range(4):
            out[start + 1 + k] = (<uint64_t>v >> (8 * k)) & 0xff
        out[start + 5] = 0x2e
        return start + 6
    # LONG1: the fewest little-endian two's complement bytes, as pickle counts them (bits of |v|, / 8, + 1).
    magnitude = <uint64_t>v if v >= 0 else <uint64_t>0 - <uint64_t>v
    n = 0
    while magnitude:
        n += 1
        magnitude >>= 1
    n = (n >> 3) + 1
    body = out + 11
    for k in range(n):
        body[2 + k] = (<uint64_t>v >> (8 * k)) & 0xff if k < 8 else (0xff if v < 0 else 0)
    if v < 0 and n > 1 and body[2 + n - 1] == 0xff and body[2 + n - 2] & 0x80:
        n -= 1
    start = _framed(out, n + 3)
    out[start] = 0x8a
    out[start + 1] = <unsigned char>n
    out[start + 2 + n] = 0x2e
    return start + n + 3


def run_plain(log, Py_ssize_t current_address, plain, items, stop):
    """``ItemLog.run_plain`` (same log, same outcomes), compiled; ``current_address``: where ``current`` is."""
    cdef unsigned char[::1] buffer = log.view
    cdef unsigned char* base = &buffer[0]
    cdef int64_t* committed = <int64_t*>base
    cdef double* table = <double*>(base + _TABLE)
    cdef unsigned char* area = base + _DATA
    cdef long* current = <long*>current_address
    cdef Py_ssize_t used = 0, count = 0, size, limit
    cdef double t0, t1
    cdef list values = log.values
    cdef list chunk = items if type(items) is list else list(items)
    threshold = log.threshold
    probe = None if threshold is None else buffers.probe(threshold)
    limit = threshold if threshold is not None else LOG_SIZE
    cdef double logged = 0.0  # the clock when the last item was logged ...
    cdef bint fresh = False  # ... just before this one: it starts then (one clock read saved per item)
    cdef bint encoded  # this item's pickle came from ``_encode``: no pickler ran, its end is when it was pickled
    cdef bint all_encoded = True  # every item's: ``join_values`` makes the reply's values from the log
    for item in chunk:
        if stop is not None and count and stop():
            break
        current[0] = count
        t0 = logged if fresh and stop is None else dp_now()
        fresh = False
        try:
            value = plain(item)
        except BaseException as error:  # everything goes back to the parent
            all_encoded = False
            count, used = log.general(count, used, log.failed, t0, dp_now(), error, traceback.format_exc())
            if log.last is not None:
                return count + 1
            continue
        t1 = dp_now()
        # With room, a value _encode_to knows is written in the log in place (no bytes object per item), and
        # its end serves as when it was pickled (an encoding takes nanoseconds: one clock read saved per item).
        if count < _SLOTS and used + ENCODED_MAX <= _ROOM:
            size = _encode_to(value, area + used)
            data = None
        else:
            size = -1
            data = _encode(value)  # as bytes: it may still fit, or it ends the chunk below
        if size >= 0:
            values.append(value)
            logged = t1
        else:
            encoded = data is not None
            if not encoded:
                all_encoded = False
                try:
                    data = _dumps(value, 5, buffer_callback=probe)
                    if probe is not None and PyBytes_GET_SIZE(data) >= limit:
                        raise _Large
                except Exception:  # large, or only cloudpickle can: the general way
                    count, used = log.general(count, used, log.value, t0, t1, value)  # shared memory, cloudpickle
                    if log.last is not None:
                        return count + 1
                    continue
            values.append(value)
            size = PyBytes_GET_SIZE(data)
            if count >= _SLOTS or used + size > _ROOM:
                log.count, log.used = count, used
                log.last = LoggedItem(t0, t1, dp_now(), False, data)
                return count + 1
            memcpy(area + used, PyBytes_AS_STRING(data), size)
            logged = t1 if encoded else dp_now()
        table[4 * count] = t0
        table[4 * count + 1] = t1
        table[4 * count + 2] = logged
        table[4 * count + 3] = <double>size
        used += size
        count += 1
        dp_commit(committed, count)  # last: the item is whole in the log from here on
        fresh = True
    log.count, log.used = count, used
    log.encoded = all_encoded and count > 0
    return count


def join_values(log, Py_ssize_t count):
    """The pickle of a list of the first ``count`` logged results, made of their pickles in the log.

    For a log whose every item ``_encode_to`` pickled (``log.encoded``): such a pickle
    is a header, one opcode with its argument and STOP, with no memo, so the
    opcodes of all of them between a list's MARK and APPENDS load as the list
    ``pickle.dumps(values)`` would give (without its frames: optional in a pickle).
    """
    cdef unsigned char[::1] buffer = log.view
    cdef unsigned char* base = &buffer[0]
    cdef double* table = <double*>(base + _TABLE)
    cdef unsigned char* area = base + _DATA
    cdef Py_ssize_t i, size, head, body, at = 0, total = 0
    for i in range(count):
        size = <Py_ssize_t>table[4 * i + 3]
        total += size - _head(size) - 1  # less the header and STOP
    out = PyBytes_FromStringAndSize(NULL, total + 6)
    cdef unsigned char* o = <unsigned char*>PyBytes_AS_STRING(out)
    o[0] = 0x80  # PROTO 5
    o[1] = 5
    o[2] = 0x5d  # EMPTY_LIST
    o[3] = 0x28  # MARK
    cdef Py_ssize_t w = 4
    for i in range(count):
        size = <Py_ssize_t>table[4 * i + 3]
        head = _head(size)
        body = size - head - 1
        memcpy(o + w, area + at + head, body)
        w += body
        at += size
    o[w] = 0x65  # APPENDS
    o[w + 1] = 0x2e  # STOP
    return out


def sum_log(log, Py_ssize_t count):
    """``calling.sum_runs`` of the first ``count`` rows of ``log.view``'s item log (at least one)."""
    cdef unsigned char[::1] buffer = log.view
    cdef double* table = <double*>(&buffer[0] + _TABLE)
    cdef double top_d[SLOWEST]
    cdef Py_ssize_t top_i[SLOWEST]
    cdef Py_ssize_t kept = 0, i, j
    cdef double d, total = 0.0, lo = 0.0, hi = 0.0, started_to_pickled = 0.0, ended_to_pickled = 0.0
    for i in range(count):
        d = table[4 * i + 1] - table[4 * i]
        total += d
        started_to_pickled += table[4 * i + 2] - table[4 * i]  # differences: no precision lost to large readings
        ended_to_pickled += table[4 * i + 2] - table[4 * i + 1]
        if i == 0 or d < lo:
            lo = d
        if i == 0 or d > hi:
            hi = d
        # The SLOWEST largest by (duration, position), ascending: a later run outranks an equal earlier one.
        if kept == SLOWEST:
            if d < top_d[0]:
                continue
            for j in range(SLOWEST - 1):
                top_d[j] = top_d[j + 1]
                top_i[j] = top_i[j + 1]
            kept -= 1
        j = kept
        while j > 0 and top_d[j - 1] > d:
            top_d[j] = top_d[j - 1]
            top_i[j] = top_i[j - 1]
            j -= 1
        top_d[j] = d
        top_i[j] = i
        kept += 1
    recent = [table[4 * i + 1] - table[4 * i] for i in range(max(0, count - _RING), count)]
    slowest = [(top_d[j], top_i[j]) for j in range(kept)]
    return ItemRuns(count, table[0], table[4 * (count - 1) + 1], total, lo, hi, recent, slowest, started_to_pickled,
                    ended_to_pickled)
