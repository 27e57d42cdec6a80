"""Turning what a tracer collected into Chrome trace events (the JSON format Perfetto and chrome://tracing open).

::

    kept runs (pipelines, groups, streams, steps, stages) ─► trace_events() ─► "X" slices, "s"/"f" arrows, "M" names
    stream items' runs ─► item_tracks() (the engine's ItemTracks) ─► "X" slices on "<thread>: <stage>" tracks

- One complete (``"X"``) slice per run of a pipeline, group, stream or stage, on
  the process and thread it ran on; stream steps get a slice each too. Args:
  the component's kind, its ``cycle`` (which run of it this was), the stream
  ``item`` index, ``error`` when it raised, and for runs in a thread or process
  the ``wait ms``/``ship ms`` of that run.
- Slices on one thread must nest; runs that overlap without nesting (concurrent
  stages on one event loop) go to extra tracks of that thread, named
  ``"<thread> (concurrent k)"``, with the real thread id in the ``tid`` arg.
- Flow arrows (``"s"``/``"f"``) go from the dispatch on the event loop to the run
  in a worker thread or process.
- Metadata (``"M"``) names each process (``dynapipeline`` and ``worker <pid>``)
  and track.
- The runs a stream makes for its items (the bulk of a long stream's trace) are
  formatted as they come (the engine's ``ItemTracks``), on tracks of their own: one per thread and
  stage, named ``"<thread>: <stage>"``, with extra ``(concurrent k)`` tracks when
  runs of one stage overlap (a step of width > 1). So they never wait for the runs
  around them, and a tracer need not hold them until it exits.

Times are ``time.perf_counter()`` readings of every process, on one time line:
it is the system-wide monotonic clock on Linux (``CLOCK_MONOTONIC``) and macOS,
so a worker's readings compare with the parent's without any conversion
(``time.time()`` would follow wall-clock steps). ``ts``/``dur`` are microseconds
since the tracer started, whole (see ``_us``).

See docs/observing.md.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

from dynapipeline._engine import ItemTracks
from dynapipeline._model.component import runner_of
from dynapipeline._model.pipeline import role_of

__all__ = ["item_metadata", "item_tracks", "trace_events"]

_LANE_TID = 1_000_000_000  # tracks for overlapping runs get ids from here (real thread ids are below)
_ITEM_TID = 1_500_000_000  # tracks of stream items' runs get ids from here (below 2**31, as some viewers need)


@dataclass
class _Slice:
    name: str
    cat: str
    pid: int
    tid: int
    start: int  # ns since the tracer started
    end: int
    args: dict[str, Any]
    runner: Any = None
    lane: int = 0
    track: int = 0  # the tid written: the real one on lane 0, a synthetic one on the others
    known: bool = False  # whether its parent component is known (then ``parent`` is its run on this thread)
    parent: Any = None


def trace_events(sink: Any, started: float, runs: list[tuple[Any, ...]] | None = None) -> list[dict[str, Any]]:
    """The trace events for what ``sink`` (a ``TraceSink``) collected since ``started`` (perf_counter).

    ``runs``: the local runs to format (default: ``sink.runs``).
    """
    here = os.getpid()

    def ns(t: float) -> int:
        return round((t - started) * 1e9)

    slices: list[_Slice] = []
    threads: dict[tuple[int, int], str] = {(here, tid): name for tid, name in sink.threads.items()}
    for runner, t0, t1, tid, cycle, failed, item in sink.runs if runs is None else runs:
        slices.append(_run_slice(runner, here, tid, ns(t0), ns(t1), cycle, failed, item))
    for pid, names, runs in sink.remote:
        threads.update({(pid, tid): name for tid, name in names.items()})
        for runner, t0, t1, tid, cycle, failed, item in runs:
            slices.append(_run_slice(runner, pid, tid, ns(t0), ns(t1), cycle, failed, item))
    for name, cat, t0, t1, tid, args in sink.spans:
        slices.append(_Slice(name, cat, here, tid, ns(t0), ns(t1), dict(args)))
    _link_parents(slices)
    tracks = _assign_lanes(slices, threads)
    flows = _flows(sink.flows, slices, here, ns)
    events: list[dict[str, Any]] = []
    for pid in sorted({s.pid for s in slices} | {here}):
        label = "dynapipeline" if pid == here else f"worker {pid}"
        events.append({"ph": "M", "name": "process_name", "pid": pid, "tid": 0, "args": {"name": label}})
        events.append({"ph": "M", "name": "process_sort_index", "pid": pid, "tid": 0,
                       "args": {"sort_index": 0 if pid == here else 1}})
    for (pid, track), name in sorted(tracks.items()):
        events.append({"ph": "M", "name": "thread_name", "pid": pid, "tid": track, "args": {"name": name}})
    for s in sorted(slices, key=lambda s: (s.start, -s.end)):
        events.append({"ph": "X", "name": s.name, "cat": s.cat, "pid": s.pid, "tid": s.track,
                       "ts": _us(s.start), "dur": _us(s.end) - _us(s.start), "args": s.args})
    return events + flows


def _run_slice(runner: Any, pid: int, tid: int, start: int, end: int, cycle: int, failed: bool,
               item: Any) -> _Slice:
    owner = runner.owner
    args: dict[str, Any] = {"kind": type(owner).__name__, "cycle": cycle}
    if item is not None:
        args["item"] = item
    if failed:
        args["error"] = True
    return _Slice(runner.name, role_of(owner), pid, tid, start, end, args, runner)


def _link_parents(slices: list[_Slice]) -> None:
    """Point each run's slice at the slice of its container's run around it on the same thread, if any."""
    container_of: dict[int, Any] = {}
    seen: set[int] = set()
    for s in slices:
        if s.runner is not None and id(s.runner) not in seen:
            seen.add(id(s.runner))
            for depth, member in s.runner.owner._walk(0):
                if depth == 1:
                    container_of[id(runner_of(member))] = s.runner
    runs: dict[tuple[int, int, int], list[_Slice]] = {}
    for s in slices:
        if s.runner is not None:
            runs.setdefault((id(s.runner), s.pid, s.tid), []).append(s)
    for s in slices:
        container = container_of.get(id(s.runner)) if s.runner is not None else None
        if container is None:
            continue
        s.known = True
        around = [c for c in runs.get((id(container), s.pid, s.tid), ()) if c.start <= s.start and s.end <= c.end]
        if around:
            s.parent = min(around, key=lambda c: c.end - c.start)


def _fits(stack: list[_Slice], s: _Slice) -> bool:
    """Whether ``s`` nests on a track whose open slices are ``stack``, under its own container's run.

    A run whose container ran on another thread (or in the parent process) starts an
    empty track; one whose container is unknown (a stream step) nests under whatever
    contains it.
    """
    if not stack:
        return not s.known or s.parent is None
    top = stack[-1]
    if top.end < s.end:
        return False
    if not s.known:
        return True
    return top is s.parent or (top.runner is None and s.parent in stack)


def _assign_lanes(slices: list[_Slice], threads: dict[tuple[int, int], str]) -> dict[tuple[int, int], str]:
    """Put each slice on a track of its thread where it nests under its container; the tracks' names.

    Slices on one track must nest (Perfetto drops the others), so runs that overlapped
    on one thread without nesting (concurrent stages on an event loop) get extra tracks.
    """
    by_thread: dict[tuple[int, int], list[_Slice]] = {}
    for s in slices:
        by_thread.setdefault((s.pid, s.tid), []).append(s)
    tracks: dict[tuple[int, int], str] = {}
    next_track: dict[int, int] = {}
    for (pid, tid), members in by_thread.items():
        name = threads.get((pid, tid), f"thread {tid}")
        lanes: list[list[_Slice]] = []  # each lane: the stack of slices open at the current time
        ids: list[int] = []
        members.sort(key=lambda s: (s.start, -s.end))
        for s in members:
            for stack in lanes:
                while stack and stack[-1].end <= s.start:
                    stack.pop()
            lane = next((i for i, stack in enumerate(lanes) if stack and _fits(stack, s)), -1)
            if lane < 0:
                lane = next((i for i, stack in enumerate(lanes) if not stack), -1)
            if lane < 0:
                lane = len(lanes)
                lanes.append([])
                if lane == 0:
                    ids.append(tid)
                else:
                    track = next_track.get(pid, _LANE_TID) + 1
                    next_track[pid] = track
                    ids.append(track)
                tracks[(pid, ids[lane])] = name if lane == 0 else f"{name} (concurrent {lane})"
            lanes[lane].append(s)
            s.lane = lane
            s.track = ids[lane]
            if lane:
                s.args["tid"] = tid
    return tracks


def _flows(flows: list[tuple[Any, ...]], slices: list[_Slice], here: int, ns: Any) -> list[dict[str, Any]]:
    """Arrows from the dispatching thread to each run in a worker thread or process."""
    runs: dict[tuple[int, int], list[_Slice]] = {}
    by_thread: dict[tuple[int, int], list[_Slice]] = {}
    for s in slices:
        if s.runner is not None:
            runs.setdefault((id(s.runner), s.pid), []).append(s)
        by_thread.setdefault((s.pid, s.tid), []).append(s)
    events = []
    for number, (runner, sent, from_tid, pid, started, args) in enumerate(flows, 1):
        candidates = runs.get((id(runner), here if pid is None else pid))
        if not candidates:
            continue
        at = ns(started)
        target = min(candidates, key=lambda s: abs(s.start - at))
        target.args.update(args)
        sent_at = ns(sent)
        # The arrow leaves from the innermost slice open on the dispatching thread at that moment.
        around = [s for s in by_thread.get((here, from_tid), []) if s.start <= sent_at <= s.end]
        if not around:
            continue
        source = min(around, key=lambda s: s.end - s.start)
        common = {"name": "dispatch", "cat": "dispatch", "id": number}
        events.append({**common, "ph": "s", "pid": here, "tid": source.track, "ts": _us(sent_at)})
        events.append({**common, "ph": "f", "bp": "e", "pid": target.pid, "tid": target.track,
                       "ts": _us(target.start)})
    return events


def _us(ns: int) -> int:
    """Whole microseconds, rounded down.

    Viewers read ``ts`` and ``dur`` as microseconds into doubles; fractions such as
    ``101687.173`` can come back one nanosecond off, which turns two runs that touch
    (the sequential loops end one run at the very reading that starts the next) into
    an overlap that Perfetto drops. Rounding every edge down keeps every ``<=``
    between edges, so slices that nest or touch still do.
    """
    return ns // 1000


def item_tracks(started: float) -> ItemTracks:
    """The engine's formatter of stream items' runs, for a tracer started at ``started`` (perf_counter)."""
    pid = os.getpid()

    def head_of(runner: Any) -> tuple[str, str]:
        owner = runner.owner
        return (f'{{"ph":"X","name":{json.dumps(runner.name)},"cat":{json.dumps(role_of(owner))},"pid":{pid},"tid":',
                f'"args":{{"kind":{json.dumps(type(owner).__name__)},"cycle":')

    return ItemTracks(started, head_of, _ITEM_TID)


def item_metadata(tracks: ItemTracks, threads: dict[int, str]) -> list[dict[str, Any]]:
    """The ``thread_name`` events of the items' tracks used, given the threads' names (by native id)."""
    pid = os.getpid()
    events = []
    for track, tid, runner, lane in tracks.tracks:
        name = f"{threads.get(tid, f'thread {tid}')}: {runner.name}" + (f" (concurrent {lane})" if lane else "")
        events.append({"ph": "M", "name": "thread_name", "pid": pid, "tid": track, "args": {"name": name}})
    return events
