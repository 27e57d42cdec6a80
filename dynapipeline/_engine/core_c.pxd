# C types for the compiled engine. The code is core_py.py, compiled under the module name core_c (see setup.py).
#
# Locals of `async def` cannot be typed here, so the dispatch loops reach a Runner's
# C fields through the small cdef functions declared at the bottom (C calls).
cimport cython

cdef object _clock
cdef object _native_id
cdef double _EPOCH_OFFSET
cdef object _CancelledError
cdef object _sleep
cdef object _isawaitable
cdef Py_ssize_t _RING_MASK
cdef Py_ssize_t _SLOWEST
cdef bint _tracing


cdef class RunControl:
    cdef public bint draining
    cdef public bint stopped
    cdef public dict cleanups


cdef class TraceSink:
    cdef public list runs
    cdef public Py_ssize_t items
    cdef public dict item_runs
    cdef public Py_ssize_t left_out
    cdef public object on_full
    cdef public Py_ssize_t full_at
    cdef public list spans
    cdef public list flows
    cdef public list remote
    cdef public dict threads

    @cython.locals(kept=Py_ssize_t)
    cpdef void add(self, Runner runner, double t0, double t1, bint failed)


cdef class ItemTracks:
    cdef public double started
    cdef public object head_of
    cdef public Py_ssize_t first_track
    cdef public dict heads
    cdef public list tracks

    @cython.locals(started=double, heads=dict, lanes=dict, out=list, run=tuple, head=tuple, t0=double, t1=double,
                   ts="long long", end="long long", mine=list, lane=list, track="long long")
    cpdef list format(self, list runs)


cdef class Runner:
    cdef public object owner
    cdef public object name
    cdef object _execute
    cdef bint _is_async
    cdef double _timeout
    cdef Py_ssize_t _retries
    cdef double _retry_delay
    cdef double _retry_backoff
    cdef tuple _befores
    cdef tuple _arounds
    cdef tuple _afters
    cdef tuple _on_errors
    cdef bint _fast
    cdef bint _inline
    cdef public double start_time
    cdef public double execution_time
    cdef public Py_ssize_t count
    cdef public double total
    cdef public double min
    cdef public double max
    cdef public Py_ssize_t errors
    cdef public double wait_total
    cdef public double ship_total
    cdef public object places
    cdef public Py_ssize_t base
    cdef bint _failed
    cdef double _ring[64]  # RING in core_py.py
    cdef Py_ssize_t _max_cycle
    cdef object _adopted_slow

    @cython.locals(elapsed=double, count=Py_ssize_t)
    cpdef void record(self, double t0, double t1)
    cpdef void record_failed(self, double t0, double t1)
    cpdef void _refresh(self)


cdef bint _inline(Runner runner)
cdef object _call_execute(Runner runner, tuple args, dict kwargs)
cdef void _record(Runner runner, double t0, double t1)
cdef void _record_error(Runner runner, double t0, double t1, object error)
@cython.locals(sink=TraceSink)
cdef void _trace(Runner runner, double t0, double t1)
cdef void _trace_failed(Runner runner, Py_ssize_t cycle)
cdef double _now()
cdef bint _draining(RunControl control)
cdef bint _is_sequential(object dispatch)


cdef class _Gate:
    cdef public object future
    cdef public Py_ssize_t pending
    cdef public object failed


cdef class Sequential:
    pass


cdef class Chained:
    pass


cdef class Concurrent:
    pass


cdef class ConcurrentGather:
    pass


cdef class Slots:
    cdef public Py_ssize_t limit
    cdef public Py_ssize_t used
    cdef object _waiters
    cdef object _lock

    cpdef bint has_waiters(self)
    cpdef bint try_acquire(self)
    cpdef void release(self)


cdef class Bounded:
    cdef public Slots slots


cdef class _Cursor:
    cdef tuple runners
    cdef list results
    cdef Slots slots
    cdef tuple args
    cdef dict kwargs
    cdef Py_ssize_t next


cdef class BoundedGather:
    cdef public Slots slots


cdef class _GatherCursor(_Cursor):
    pass


cdef class Once:
    pass


cdef class Loop:
    cdef public Py_ssize_t cycles


cdef class Forever:
    cdef public object event
    cdef public double interval
