"""Builders, stage and handler classes shared by the tests, waiting helpers, and the trace-file check.

Workers rebuild the stage classes defined here by reference (``helpers`` is importable in a worker
process: it inherits the test run's ``sys.path``), so a class a test ships to a process or a Dask
worker belongs here rather than in a test body.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import multiprocessing
import os
import threading
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from dynapipeline import Handler, PipelineFactory, PipeLineType, Stage, StageGroup
from dynapipeline._transports._remote.buffers import Block, Packed, pack, unpack
from dynapipeline._transports.process.shm import LocalArena, Mapped
from dynapipeline.execution import SequentialExecutionStrategy
from dynapipeline.execution.cycle_strategies import OnceCycleStrategy


def group(stages: list[Any], execution: Any = None, cycle: Any = None, name: str = "g") -> StageGroup:
    """A StageGroup of ``stages``: sequential and run once unless told otherwise."""
    return StageGroup(name=name, stages=stages, cycle_strategy=cycle or OnceCycleStrategy(),
                      execution_strategy=execution or SequentialExecutionStrategy())


def pipeline(groups: list[StageGroup], execution: Any = None, cycle: Any = None,
             kind: PipeLineType = PipeLineType.ADVANCED, name: str = "p", context: Any = None) -> Any:
    """A pipeline of ``groups`` from the factory: ADVANCED, sequential and run once unless told otherwise."""
    return PipelineFactory().create_pipeline(kind, name, groups, cycle or OnceCycleStrategy(),
                                             execution or SequentialExecutionStrategy(), context_data=context)


class Pid(Stage):
    """Returns (name, pid of the process it ran in, args, kwargs)."""

    def execute(self, *args: Any, **kwargs: Any) -> Any:
        return (self.name, os.getpid(), args, kwargs)


class Where(Stage):
    """Returns (name, pid, thread ident, args, kwargs): the process and thread it ran in (a plain ``def``)."""

    def execute(self, *args: Any, **kwargs: Any) -> Any:
        return (self.name, os.getpid(), threading.get_ident(), args, kwargs)


class WhereAsync(Stage):
    """``Where`` as an ``async def`` that yields to its loop once."""

    async def execute(self, *args: Any, **kwargs: Any) -> Any:
        await asyncio.sleep(0)
        return (self.name, os.getpid(), threading.get_ident(), args, kwargs)


class Double(Stage):
    """Returns twice its item (a plain ``def``); raises ValueError("bad <item>") on item ``bad``."""

    bad: int = -1

    def execute(self, x: int) -> int:
        if x == self.bad:
            raise ValueError(f"bad {x}")
        return 2 * x


class Die(Stage):
    """Ends the process it runs in at once (``os._exit(3)``): a worker crash."""

    def execute(self, *args: Any, **kwargs: Any) -> Any:
        os._exit(3)


# What ``Leak`` keeps in its worker process: it grows by one item's worth per item, as a leaking stage does.
LEAKED: list[bytes] = []


def rss() -> int:
    """This process's resident memory now, in bytes (``/proc/self/statm``)."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class Leak(Stage):
    """Keeps ``mb`` MB (written, so resident) in ``LEAKED`` per item; returns (item, pid, RSS after it)."""

    mb: int = 20

    def execute(self, item: int) -> tuple[int, int, int]:
        LEAKED.append(b"x" * (self.mb << 20))
        return item, os.getpid(), rss()


class RunLog(Stage):
    """Appends "<item> <pid>" to the file ``path`` (one line per run, whichever process runs it); returns the item."""

    path: str

    def execute(self, item: Any = None) -> Any:
        with open(self.path, "a") as log:
            log.write(f"{item if item is not None else self.name} {os.getpid()}\n")
        return item if item is not None else (self.name, os.getpid())


def run_log(path: Any) -> list[tuple[str, int]]:
    """The (item, pid) lines a ``RunLog`` wrote, in order."""
    with open(path) as log:
        return [(item, int(pid)) for item, pid in (line.split() for line in log)]


class Spin(Stage):
    """Spins forever (a plain ``def``): only killing its worker stops it."""

    def execute(self) -> None:
        while True:
            pass


class Sleepy(Stage):
    """Sleeps ``seconds`` (a plain ``def``, cannot be interrupted in a thread) and returns its name."""

    seconds: float = 0.0

    def execute(self, *args: Any, **kwargs: Any) -> Any:
        time.sleep(self.seconds)
        return self.name


class Hangs(Stage):
    """Awaits ``seconds`` (an ``async def``: its loop can cancel it) and returns its name."""

    seconds: float = 30.0

    async def execute(self, *args: Any, **kwargs: Any) -> Any:
        await asyncio.sleep(self.seconds)
        return self.name


class Marker(Stage):
    """Writes a file named after itself into ``folder`` when it starts, then sleeps ``seconds``."""

    folder: str
    seconds: float

    def execute(self) -> None:
        Path(self.folder, self.name).write_text("started")
        time.sleep(self.seconds)


class Tick(Stage):
    """Yields for 5 ms, then touches the file ``marker`` (if any): a cycle that shows it ran."""

    marker: str | None = None

    async def execute(self, *args: Any, **kwargs: Any) -> None:
        await asyncio.sleep(0.005)
        if self.marker is not None:
            Path(self.marker).touch()


class Blank(Stage):
    """Returns as many zero bytes as its argument is long."""

    def execute(self, data: bytes) -> bytes:
        return bytes(len(data))


class Batch(Stage):
    """Returns its batch (a list) as a list."""

    def execute(self, batch: list[int]) -> list[int]:
        return list(batch)


class KeyErrorStage(Stage):
    """Raises ``KeyError(name)`` (a plain ``def``)."""

    def execute(self, *args: Any, **kwargs: Any) -> Any:
        raise KeyError(self.name)


class ValueErrorStage(Stage):
    """Raises ``ValueError(name)`` after yielding once (an ``async def``)."""

    async def execute(self, *args: Any, **kwargs: Any) -> Any:
        await asyncio.sleep(0)
        raise ValueError(self.name)


class MarksError(Handler):
    """on_error notes on the error the pid and thread it ran in (the note travels back with a remote error)."""

    def on_error(self, component: Any, error: BaseException, *args: Any, **kwargs: Any) -> None:
        error.handled_in = (os.getpid(), threading.get_ident())  # type: ignore[attr-defined]


class Echo(Stage):
    """Returns its name (after an optional sleep), recording how many run at once."""

    delay: float = 0.0
    log: Any = None  # Any: pydantic would copy a list field

    async def execute(self, *args: Any, **kwargs: Any) -> Any:
        if self.log is not None:
            self.log.append(("start", self.name))
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.log is not None:
            self.log.append(("end", self.name))
        return self.name


class Nap(Stage):
    """Blocks its thread or worker for ``seconds`` (a plain ``def``: runs off the loop as it is); returns its pid."""

    seconds: float = 0.0

    def execute(self, *args: Any, **kwargs: Any) -> Any:
        import os
        import time

        time.sleep(self.seconds)
        return os.getpid()


class ItemNap(Stage):
    """Sleeps ``seconds`` per item (a plain ``def``, so it runs as it is in a worker) and returns the item;
    raises ValueError("bad <item>") on item ``bad``."""

    seconds: float = 0.0
    bad: int = -1

    def execute(self, x: int = 0) -> int:
        time.sleep(self.seconds)
        if x == self.bad:
            raise ValueError(f"bad {x}")
        return x


class Fail(Stage):
    """Raises ValueError(name) after ``delay`` seconds."""

    delay: float = 0.0

    async def execute(self, *args: Any, **kwargs: Any) -> Any:
        await asyncio.sleep(self.delay)
        raise ValueError(self.name)


class RefusesWorkers(Stage):
    """Builds in the parent; its model_post_init raises when rebuilt in a child process (a worker)."""

    def model_post_init(self, __context: Any) -> None:
        if multiprocessing.parent_process() is not None:
            raise LookupError(f"{self.name} cannot live in a worker")
        super().model_post_init(__context)

    def execute(self) -> str:
        return self.name


class Tracker:
    """Counts stages in flight and the highest count seen."""

    def __init__(self) -> None:
        self.now = 0
        self.peak = 0
        self.cancelled: list[str] = []
        self.finished: list[str] = []


class Tracked(Stage):
    """Sleeps ``delay`` while counted in ``tracker``; notes cancellation and completion."""

    tracker: Any
    delay: float = 0.05

    async def execute(self, *args: Any, **kwargs: Any) -> Any:
        t = self.tracker
        t.now += 1
        t.peak = max(t.peak, t.now)
        try:
            await asyncio.sleep(self.delay)
        except asyncio.CancelledError:
            t.cancelled.append(self.name)
            raise
        finally:
            t.now -= 1
        t.finished.append(self.name)
        return self.name


class Recorder(Handler):
    """Appends every hook call, tagged, to a shared list."""

    tag: str
    calls: Any

    def before(self, component: Any, *args: Any, **kwargs: Any) -> None:
        self.calls.append(("before", self.tag, component.name))

    async def around(self, component: Any, execute: Any, *args: Any, **kwargs: Any) -> Any:
        self.calls.append(("around-in", self.tag))
        result = await execute(*args, **kwargs)
        self.calls.append(("around-out", self.tag))
        return result

    async def after(self, component: Any, result: Any, *args: Any, **kwargs: Any) -> None:
        self.calls.append(("after", self.tag, result))

    def on_error(self, component: Any, error: BaseException, *args: Any, **kwargs: Any) -> None:
        self.calls.append(("on_error", self.tag, type(error).__name__))


def engine_tasks() -> set[asyncio.Task[Any]]:
    """Tasks other than the current one that are still pending."""
    me = asyncio.current_task()
    return {t for t in asyncio.all_tasks() if t is not me and not t.done()}


def run_on_test_loop(coro: Any) -> Any:
    """Run a coroutine on a new loop of the kind this leg tests (for hypothesis tests, which are sync)."""
    from dynapipeline import loop_name, run

    return run(coro, loop=loop_name())


GRACE = 30.0
"""Seconds a "nothing left running" check waits: on a busy machine an exiting process or thread may take a while."""


def eventually(check: Callable[[], Any], timeout: float | None = None) -> Any:
    """``check()`` once truthy, polling until ``timeout`` (default ``GRACE``) seconds passed; else its last value."""
    import time

    deadline = time.monotonic() + (GRACE if timeout is None else timeout)
    while not (value := check()) and time.monotonic() < deadline:
        time.sleep(0.02)
    return value


async def eventually_async(check: Callable[[], Any], timeout: float | None = None) -> Any:
    """``eventually`` for async tests: polls with ``asyncio.sleep``, so the loop under test keeps running."""
    import time

    deadline = time.monotonic() + (GRACE if timeout is None else timeout)
    while not (value := check()) and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    return value


def worker_threads() -> list[threading.Thread]:
    """The thread strategies' worker threads still alive."""
    return [t for t in threading.enumerate() if t.name.startswith("dynapipeline-thread-") and t.is_alive()]


def wait_no_threads(timeout: float | None = None) -> None:
    """No worker thread of a thread strategy is left, within ``timeout`` (default ``GRACE``) seconds."""
    assert eventually(lambda: not worker_threads(), timeout), worker_threads()


async def wait_no_threads_async(timeout: float | None = None) -> None:
    """``wait_no_threads`` for async tests: the loop keeps running while it waits."""
    assert await eventually_async(lambda: not worker_threads(), timeout), worker_threads()


def gone(pid: int) -> bool:
    """The process has exited (or is a zombie waiting to be reaped), now."""
    import psutil

    try:
        return bool(psutil.Process(pid).status() == psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return True


def assert_gone(*pids: int) -> None:
    """Every pid given has exited, within ``GRACE`` seconds."""
    assert eventually(lambda: all(gone(p) for p in pids)), [p for p in pids if not gone(p)]


def pool_children() -> list[Any]:
    """Our live ``multiprocessing`` children, but a Dask LocalCluster's worker processes (its fixture checks those)."""
    # active_children() also reaps the children that have exited.
    return [c for c in multiprocessing.active_children() if not c.name.startswith("Dask ")]


def assert_no_workers(pids: list[int]) -> None:
    """No process pool's child of ours is alive and every pid given has exited (within ``GRACE`` seconds)."""
    assert eventually(lambda: not pool_children()), pool_children()
    assert_gone(*pids)


async def assert_no_workers_async(pids: list[int]) -> None:
    """``assert_no_workers`` for async tests: the loop keeps running while it waits."""
    assert await eventually_async(lambda: not pool_children()), pool_children()
    assert await eventually_async(lambda: all(gone(p) for p in pids)), [p for p in pids if not gone(p)]


def memfds() -> list[str]:
    """This process's open fds on dynapipeline's shared-memory segments (Linux ``/proc``).

    A live mapping holds one too (``mmap`` keeps a duplicate of the fd it maps), so compare
    counts taken before and after, once every received view is gone.
    """
    return [target for target, _ in _memfd_fds()]


def memfd_segments() -> Counter[int]:
    """Per segment (its inode: every segment is named alike), how many of ``memfds``' fds this process holds on it."""
    return Counter(inode for _, inode in _memfd_fds())


def _memfd_fds() -> list[tuple[str, int]]:
    found = []
    for name in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{name}")
            if target.startswith("/memfd:dynapipeline"):
                found.append((target, os.stat(f"/proc/self/fd/{name}").st_ino))
        except OSError:  # the listing's own fd, or one closed meanwhile
            continue
    return found


def dev_shm() -> set[str]:
    """The names in ``/dev/shm`` now (shared memory must never add one)."""
    return set(os.listdir("/dev/shm"))


def laid_on_shared_memory(data: bytes) -> bool:
    """A ``bytes`` whose object (header and data) lies in a segment this process maps from another one: a large
    ``bytes`` received without a copy. Importable in a worker, as ``in_shared_memory``."""
    import ctypes

    from dynapipeline._transports.process.shm import MAPPED

    for mm in list(MAPPED.maps.values()):
        start = ctypes.c_char.from_buffer(mm)
        base = ctypes.addressof(start)
        del start  # the buffer export, else the mapping could not be closed
        if base <= id(data) < base + len(mm):
            return True
    return False


def in_shared_memory(obj: Any) -> bool:
    """A numpy array or memoryview received through shared memory: a view whose base chain ends on a block.

    The bottom of the chain is ``Mapped.attach``'s exporter (a ctypes array on the mapping); a copy ends
    on its own memory instead. Importable in a worker, so a stage can tell what it received.
    """
    import ctypes

    for _ in range(20):
        if isinstance(obj, ctypes.Array):
            return True
        obj = obj.obj if isinstance(obj, memoryview) else getattr(obj, "base", None)
        if obj is None:
            return False
    return False


MIB = 1 << 20
"""The default shared-memory threshold: buffers this large or larger travel in shared memory."""


def large_items() -> list[Any]:
    """Items of every kind that goes out of band, each at least 1 MiB, and a few that stay in band."""
    import numpy as np

    grid = np.arange(2 * MIB // 8, dtype=np.float64).reshape(512, -1)
    record = np.dtype([("id", "<i8"), ("xyz", "<f4", (3,))])
    return [
        np.arange(MIB // 8, dtype=np.int64),
        np.ones(MIB, dtype=np.bool_),
        (np.arange(MIB, dtype=np.int8) % 100).astype(np.int8),
        np.arange(MIB // 16, dtype=np.complex128) * (1 + 2j),
        np.zeros(MIB // 20 + 1, dtype=record),
        np.asfortranarray(grid),
        grid[:, ::2],  # non-contiguous: arrives contiguous
        np.array(b"x" * MIB),  # 0-d, 1 MiB
        np.array(3.5),  # 0-d, small
        np.array([{"i": i} for i in range(1000)], dtype=object),  # in band
        bytes(range(256)) * (MIB // 256),
        bytearray(b"\x07" * (MIB + 3)),
        memoryview(np.arange(MIB // 4, dtype=np.int32).reshape(256, -1)),
        memoryview(np.arange(10, dtype=np.int16)),  # small: in band, still a memoryview
        {"nested": [np.full(MIB // 8, 7.0), (b"\x01" * MIB, {"deep": np.arange(10)})], "small": b"tiny"},
    ]


def same_value(a: Any, b: Any) -> bool:
    """Deep equality; numpy arrays compared with their dtype and shape, memoryviews by format, shape and bytes."""
    import numpy as np

    if isinstance(a, np.ndarray):
        return (isinstance(b, np.ndarray) and a.dtype == b.dtype and a.shape == b.shape
                and bool((a == b).all()) if a.dtype.hasobject
                else isinstance(b, np.ndarray) and a.dtype == b.dtype and a.shape == b.shape
                and np.ascontiguousarray(a).tobytes() == np.ascontiguousarray(b).tobytes())
    if isinstance(a, memoryview):
        return (type(b) is memoryview and a.format == b.format and a.shape == b.shape
                and a.tobytes() == b.tobytes())
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(same_value(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return type(b) is dict and a.keys() == b.keys() and all(same_value(a[k], b[k]) for k in a)
    return type(a) is type(b) and bool(a == b)


def check_trace_format(document: dict[str, Any]) -> list[dict[str, Any]]:
    """Assert the trace-event format's required fields per phase, and X slices nesting per track."""
    events = document["traceEvents"]
    assert isinstance(events, list) and events
    flows: dict[Any, list[str]] = defaultdict(list)
    for event in events:
        ph = event["ph"]
        assert isinstance(event["pid"], int) and isinstance(event["tid"], int), event
        assert isinstance(event["name"], str) and event["name"], event
        if ph == "X":
            assert isinstance(event["ts"], (int, float)) and isinstance(event["dur"], (int, float)), event
            assert event["dur"] >= 0 and isinstance(event["cat"], str), event
            assert isinstance(event.get("args", {}), dict), event
        elif ph == "M":
            assert event["name"] in ("process_name", "thread_name", "process_sort_index"), event
            assert isinstance(event["args"], dict) and event["args"], event
        elif ph in ("s", "f"):
            assert isinstance(event["ts"], (int, float)) and "id" in event and event["cat"], event
            if ph == "f":
                assert event["bp"] == "e", event
            flows[event["id"]].append(ph)
        else:
            raise AssertionError(f"unexpected phase {ph!r}")
    assert all(sorted(phases) == ["f", "s"] for phases in flows.values()), flows
    tracks: dict[tuple[int, int], list[tuple[float, float]]] = defaultdict(list)
    for event in events:
        if event["ph"] == "X":
            tracks[(event["pid"], event["tid"])].append((event["ts"], event["ts"] + event["dur"]))
    for track, spans in tracks.items():
        spans.sort(key=lambda span: (span[0], -span[1]))
        open_ends: list[float] = []
        for start, end in spans:
            while open_ends and open_ends[-1] <= start:
                open_ends.pop()
            assert not open_ends or end <= open_ends[-1], f"slices overlap without nesting on {track}"
            open_ends.append(end)
    return list(events)


@contextlib.asynccontextmanager
async def closing_pool(strategy: Any) -> AsyncIterator[Any]:
    """Yield a process strategy; close it afterwards and check that none of its workers is left."""
    try:
        yield strategy
    finally:
        pids = strategy.worker_pids()
        await strategy.aclose()
    await assert_no_workers_async(pids)


@contextlib.asynccontextmanager
async def leaves_nothing(strategy: Any) -> AsyncIterator[list[int]]:
    """Around work on a process strategy of the test's own: afterwards the strategy is closed, and no worker
    (the pids it yields, plus the last ones), no memfd fd in this process and no new name in ``/dev/shm`` is left.

    Results still held by the test keep their mappings (and fds): drop them inside the block.
    """
    gc.collect()  # views of earlier tests in reference cycles hold mappings until collected
    names, segments = dev_shm(), memfd_segments()
    pids: list[int] = []
    try:
        yield pids
    finally:
        pids += strategy.worker_pids()
        await strategy.aclose()
    await assert_no_workers_async(pids)

    def unmapped() -> bool:
        gc.collect()  # a view in a cycle (a finished task's traceback, say) goes only with its cycle
        # No segment held more than before; fewer is fine (an earlier test's views, a failed one's traceback say,
        # may go meanwhile).
        return not memfd_segments() - segments

    # Eventually: a cancelled run's last items are held by the loop's pending callbacks for a few turns.
    assert await eventually_async(unmapped), memfd_segments() - segments
    # Eventually: multiprocessing's heap (RawValue, RawArray) makes a file there and unlinks it at once.
    assert await eventually_async(lambda: not dev_shm() - names), dev_shm() - names


def stream_tasks() -> list[asyncio.Task[Any]]:
    """Tasks of a stream still alive (its feeder, step workers and supervisor run the run modules' coroutines)."""
    from dynapipeline._model import stream_run, stream_step

    me = asyncio.current_task()
    here = {stream_run.__file__, stream_step.__file__}
    return [t for t in asyncio.all_tasks()
            if t is not me and getattr(getattr(t.get_coro(), "cr_code", None), "co_filename", "") in here]


def _refuse_to_rebuild() -> None:
    raise LookupError("this result cannot be rebuilt in the parent")


class Unloadable:
    """Pickles fine in a worker; rebuilding it in the parent raises."""

    def __reduce__(self) -> Any:
        return (_refuse_to_rebuild, ())


@contextlib.asynccontextmanager
async def workers_replaced(cluster: Any) -> AsyncIterator[None]:
    """While the block runs, start a worker in place of one whose nanny was lost (``healed`` explains how).

    For tests that kill workers in the middle of a run: under a full suite's load a nanny
    sometimes fails to restart its worker, and the cluster, left with none, then waits
    forever (twice in CI, ``workers=0`` at the test's bound). A deployment's autoscaler
    would start another; this does it for the test.
    """

    async def watch() -> None:
        while True:
            if len(cluster.workers) < 2:
                cluster.scale(2)
            await asyncio.sleep(0.5)

    watcher = asyncio.create_task(watch())
    try:
        yield
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher


async def healed(cluster: Any, client: Any) -> None:
    """Wait until both workers of a 2-worker LocalCluster are back and their nannies have finished restarting them.

    The scheduler lists a restarted worker before its nanny has finished starting it, so
    ``wait_for_workers(2)`` returns inside that window; a worker killed in it may never be started
    again (the nanny loses it), and a later ``wait_for_workers(2)`` then waited forever. Fails after 90 s.
    """
    from distributed.core import Status

    end = time.monotonic() + 90
    while True:
        if len(cluster.workers) < 2:
            # A nanny that failed to restart its worker closes, and the cluster forgets it: start another.
            cluster.scale(2)
        nannies = list(cluster.workers.values())
        ready = [n for n in nannies if n.process is not None and n.process.status == Status.running]
        workers = (await client.scheduler.identity(n_workers=-1))["workers"]
        if len(ready) == 2 and len(workers) == 2 \
                and {n.worker_address for n in ready} == set(workers):
            return
        assert time.monotonic() < end, f"Dask workers not back: {[(n.name, n.process) for n in nannies]}"
        await asyncio.sleep(0.05)


# -- shared memory between a sender and a receiver, in one process ------------------------------------------------

THRESHOLD = 1024  # the shared-memory threshold of ``Link``'s sends
REDUCED: list[str] = []  # what ``Counted`` notes


class Counted:
    """Notes each time it is pickled in ``REDUCED`` (its ``__reduce__`` runs once per pickling pass)."""

    def __reduce__(self) -> tuple[Any, tuple[()]]:
        REDUCED.append("reduced")
        return (Counted, ())


class Link:
    """A sender's arena and a receiver's mappings of its segments, in one process (as a worker and the parent)."""

    def __init__(self) -> None:
        self.arena = LocalArena(min_segment=1 << 20)
        self.mapped = Mapped()

    def send(self, obj: Any, threshold: int | None = THRESHOLD) -> Packed:
        packed = pack(obj, threshold, self.arena)
        for serial, segment in self.arena.segments.items():
            if (self.arena.pid, serial) not in self.mapped.maps:
                self.mapped.add(self.arena.pid, serial, os.dup(segment.fd))
        return packed

    def round_trip(self, obj: Any, threshold: int | None = THRESHOLD) -> tuple[Packed, Any]:
        packed = self.send(obj, threshold)
        return packed, unpack(packed.data, self.mapped.attach)

    def released(self) -> list[Block]:
        """The blocks the receiver let go of since last asked, given back to the arena (as a reply does)."""
        blocks = self.mapped.released(self.arena.pid)
        self.arena.free(blocks)
        return blocks

    def sender_bytes(self, block: Block) -> bytes:
        """The block's memory as the sender's own mapping sees it."""
        segment = self.arena.segments[block.segment]
        return bytes(segment.mm[block.offset:block.offset + block.size])

    def close(self) -> None:
        self.mapped.clear()
        self.arena.close()
