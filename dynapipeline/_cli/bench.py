"""``python -m dynapipeline bench``: the engine's cost per stage against raw asyncio.

Long: about 500 lines; the cases, the timing loop, the subprocess for the other mode
and the command's arguments read best side by side, and nothing else uses them.

::

    for each case × size × loop:  make_case() ─► (engine side, raw twin) over the same stage objects
        blocks alternate engine / raw on the same loop ─► median µs per stage ─► ratio engine ÷ raw
    the other engine mode ─► the same command in a subprocess (--json -) ─► rows merged ─► table or JSON

Every case runs a strategy over no-op stages (or stages that yield once with
``await asyncio.sleep(0)``) and, in the same process and on the same event loop,
its raw-asyncio twin over the very same stage objects:

=============  ==============================================  =====================================
case           engine                                          raw twin
=============  ==============================================  =====================================
sequential     ``SequentialExecutionStrategy``                 ``for s in stages: await s.execute()``
concurrent     ``ConcurrentExecutionStrategy``                 ``asyncio.gather``
semaphore(8)   ``SemaphoreExecutionStrategy(8)``               ``asyncio.Semaphore(8)`` + ``gather``
cycles         ``LoopCycleStrategy(n)`` over one stage         ``for _ in range(n): await s.execute()``
sequential+    sequential inside ``with Tracer():`` (tracing   the sequential twin (so its ratio beside
traced         on, the events kept in memory, never written)   ``sequential``'s is the cost of tracing)
stream         ``Stream`` of 3 steps over ``n`` items          3 tasks linked by ``asyncio.Queue(1000)``
=============  ==============================================  =====================================

For ``stream`` the figures are per item (each item passes the 3 stages).

A ``build`` row (one per size, not per loop) times building a ``StageGroup`` over
the ``n`` no-op stages and a SIMPLE pipeline over it, in µs per stage (the stages'
own construction not counted); it has no raw twin.

Engine and raw runs alternate in blocks, rotating over the loops too (each block
opened by an untimed run of the same side), and the median of the timed runs is reported,
in µs per stage (per cycle for ``cycles``); ratio = engine / raw. The engine
mode is fixed at import, so the other mode is measured in a subprocess
(``DYNAPIPELINE_NO_EXTENSIONS=1`` for pure). The benchmark suite in
``benchmarks/`` builds its cases with ``make_case`` from this module.

Invariant: a ratio compares two sides timed in the same process, on the same
loop, over the same objects; only the ratios are steady on a shared machine.

After that table, a second one: MB/s of large items (20 MB ``bytes``, and numpy
arrays when numpy is installed) through a stream step on 2 processes beside one
process, ``multiprocessing.Pool``, mpire and a memory copy (``bench_data``).

See docs/performance.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from dynapipeline._cli.bench_data import DEFAULT_COUNT, DEFAULT_SIZE, QUICK_COUNT, format_large, measure_large
from dynapipeline._loops import loop_factory, uvloop_available
from dynapipeline._model.component import Stage
from dynapipeline._model.factory import PipelineFactory, PipeLineType
from dynapipeline._model.group import StageGroup
from dynapipeline._model.pipeline import Pipeline
from dynapipeline._model.stream import Stream
from dynapipeline._observe.tracer import Tracer
from dynapipeline._strategies.cycles import LoopCycleStrategy, OnceCycleStrategy
from dynapipeline._strategies.execution import (
    ConcurrentExecutionStrategy,
    SemaphoreExecutionStrategy,
    SequentialExecutionStrategy,
)
from dynapipeline._table import format_table as _format_table

__all__ = ["BUILD", "CASES", "KINDS", "LOOPS", "SIZES", "STREAM_MAXSIZE", "Case", "NoopStage", "YieldStage", "main",
           "make_builder", "make_case"]

CASES = ("sequential", "concurrent", "semaphore(8)", "cycles", "sequential+traced", "stream")
STREAM_MAXSIZE = 1000
BUILD = "build"
KINDS = ("noop", "yield")
SIZES = (1000, 10_000)
LOOPS = ("asyncio", "uvloop")
SEMAPHORE_LIMIT = 8


class NoopStage(Stage):
    """Does nothing: what is measured is the engine around it."""

    async def execute(self, *args: Any, **kwargs: Any) -> Any:
        return None


class YieldStage(Stage):
    """Yields to the event loop once, like a stage that awaits I/O that is ready."""

    async def execute(self, *args: Any, **kwargs: Any) -> Any:
        await asyncio.sleep(0)


@dataclass
class Case:
    """One measurement: ``engine()`` and ``raw()`` are coroutine functions doing the same work."""

    case: str
    kind: str
    n: int
    engine: Callable[[], Awaitable[Any]]
    raw: Callable[[], Awaitable[Any]]


def make_case(case: str, kind: str, n: int) -> Case:
    """Build the stages, the engine group and the raw twin of one case."""
    cls = NoopStage if kind == "noop" else YieldStage
    if case == "cycles":
        stage = cls(name="s0")
        group = StageGroup(name="bench", stages=[stage], cycle_strategy=LoopCycleStrategy(n),
                           execution_strategy=SequentialExecutionStrategy())

        async def raw_cycles() -> list[Any]:
            results = []
            for _ in range(n):
                results.append(await stage.execute())
            return results

        return Case(case, kind, n, group.run, raw_cycles)

    if case == "stream":
        return _stream_case(cls, kind, n)
    stages = [cls(name=f"s{i}") for i in range(n)]
    if case in ("sequential", "sequential+traced"):
        strategy: Any = SequentialExecutionStrategy()

        async def raw() -> list[Any]:
            results = []
            for s in stages:
                results.append(await s.execute())
            return results

    elif case == "concurrent":
        strategy = ConcurrentExecutionStrategy()

        async def raw() -> list[Any]:
            return await asyncio.gather(*[s.execute() for s in stages])

    elif case == f"semaphore({SEMAPHORE_LIMIT})":
        strategy = SemaphoreExecutionStrategy(SEMAPHORE_LIMIT)

        async def raw() -> list[Any]:
            sem = asyncio.Semaphore(SEMAPHORE_LIMIT)

            async def one(s: Stage) -> Any:
                async with sem:
                    return await s.execute()

            return await asyncio.gather(*[one(s) for s in stages])

    else:
        raise ValueError(f"unknown case {case!r}; one of {CASES}")
    group = StageGroup(name="bench", stages=stages, cycle_strategy=OnceCycleStrategy(),
                       execution_strategy=strategy)
    if case == "sequential+traced":

        async def traced() -> Any:
            with Tracer():
                return await group.run()

        return Case(case, kind, n, traced, raw)
    return Case(case, kind, n, group.run, raw)


def _stream_case(cls: type[Stage], kind: str, n: int) -> Case:
    """Three steps, one item at a time each, against three hand-written tasks linked by bounded queues."""
    steps = [cls(name=f"step{i}") for i in range(3)]
    stream = Stream(name="bench", steps=list(steps), maxsize=STREAM_MAXSIZE)

    async def engine() -> Any:
        return await stream.run(range(n))

    async def raw() -> list[Any]:
        end = object()
        queues = [asyncio.Queue[Any](STREAM_MAXSIZE) for _ in steps]
        out: list[Any] = []

        async def feed() -> None:
            for i in range(n):
                await queues[0].put(i)
            await queues[0].put(end)

        async def work(stage: Stage, inq: asyncio.Queue[Any], put: Callable[[Any], Awaitable[None]]) -> None:
            while (item := await inq.get()) is not end:
                await put(await stage.execute(item))
            await put(end)

        async def collect(item: Any) -> None:
            if item is not end:
                out.append(item)

        puts = [q.put for q in queues[1:]] + [collect]
        await asyncio.gather(feed(), *(work(s, q, put) for s, q, put in zip(steps, queues, puts, strict=True)))
        return out

    return Case("stream", kind, n, engine, raw)


def make_builder(n: int) -> Callable[[], Pipeline]:
    """Build ``n`` no-op stages once; the returned function builds a group and a pipeline over them."""
    stages = [NoopStage(name=f"s{i}") for i in range(n)]
    factory = PipelineFactory()

    def build() -> Pipeline:
        group = StageGroup(name="bench", stages=stages, cycle_strategy=OnceCycleStrategy(),
                           execution_strategy=SequentialExecutionStrategy())
        return factory.create_pipeline(PipeLineType.SIMPLE, "bench", [group], OnceCycleStrategy(),
                                       SequentialExecutionStrategy())

    return build


def _measure_build(n: int, repeats: int) -> float:
    """Median seconds of ``repeats`` builds (after one untimed build) over the same ``n`` stages."""
    build = make_builder(n)
    build()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        build()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


async def _block(fn: Callable[[], Awaitable[Any]], runs: int) -> list[float]:
    """One untimed run, then ``runs`` timed ones: a timed run always follows a run of
    its own kind (steady state: allocator and collector as that side leaves them)."""
    clock = time.perf_counter
    await fn()
    times = []
    for _ in range(runs):
        t0 = clock()
        await fn()
        times.append(clock() - t0)
    return times


def _measure(case: Case, repeats: int, runners: dict[str, asyncio.Runner]) -> dict[str, tuple[float, float]]:
    """Per loop, the median seconds of ``repeats`` timed engine and raw runs.

    Blocks rotate over (loop, side) pairs, so load changes on the machine hit every
    loop and both sides alike instead of biasing one of them.
    """
    per_block = max(1, (repeats + 1) // 2)
    times: dict[tuple[str, str], list[float]] = {(loop, side): [] for loop in runners for side in ("engine", "raw")}
    while min(len(t) for t in times.values()) < repeats:
        for loop, runner in runners.items():
            for side, fn in (("engine", case.engine), ("raw", case.raw)):
                times[loop, side] += runner.run(_block(fn, per_block))
    return {
        loop: (statistics.median(times[loop, "engine"]), statistics.median(times[loop, "raw"]))
        for loop in runners
    }


def measure_mode(quick: bool, loops: tuple[str, ...] = LOOPS, sizes: tuple[int, ...] | None = None,
                 repeats: int | None = None) -> list[dict[str, Any]]:
    """Every case on every loop, in this process's engine mode."""
    import dynapipeline

    mode = "compiled" if dynapipeline.compiled else "pure"
    kinds = ("noop",) if quick else KINDS
    if sizes is None:
        sizes = (10_000,) if quick else SIZES
    loops = tuple(loop for loop in loops if loop != "uvloop" or uvloop_available())
    rows = []
    with contextlib.ExitStack() as stack:
        # One persistent runner per loop kind; they take turns (never nested).
        runners = {loop: stack.enter_context(asyncio.Runner(loop_factory=loop_factory(loop))) for loop in loops}
        for case_name in CASES:
            for kind in kinds:
                for n in sizes:
                    case = make_case(case_name, kind, n)
                    reps = repeats or (4 if quick else 6)
                    # The stages built for this case are long-lived: keep them out of the
                    # collector's way so its full passes do not add noise to either side.
                    gc.collect()
                    gc.freeze()
                    try:
                        medians = _measure(case, reps, runners)
                    finally:
                        gc.unfreeze()
                    for loop, (engine, raw) in medians.items():
                        rows.append({
                            "case": case_name, "stage": kind, "n": n, "loop": loop, "mode": mode,
                            "engine_us": engine / n * 1e6, "raw_us": raw / n * 1e6,
                            "ratio": engine / raw if raw > 0 else float("nan"), "repeats": reps,
                        })
                    del case
        for n in sizes:
            reps = repeats or (4 if quick else 6)
            build = _measure_build(n, reps)
            rows.append({
                "case": BUILD, "stage": "noop", "n": n, "loop": "-", "mode": mode,
                "engine_us": build / n * 1e6, "raw_us": float("nan"), "ratio": float("nan"), "repeats": reps,
            })
    return rows


def _other_mode(mode: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    env = dict(os.environ)
    if mode == "pure":
        env["DYNAPIPELINE_NO_EXTENSIONS"] = "1"
    else:
        env.pop("DYNAPIPELINE_NO_EXTENSIONS", None)
    # The large-item table measures the transfer, not the engine: once, in this process.
    cmd = [sys.executable, "-m", "dynapipeline", "bench", "--mode", mode, "--json", "-",
           "--loops", ",".join(args.loops), "--large-items", "0"]
    if args.quick:
        cmd.append("--quick")
    if args.sizes:
        cmd += ["--sizes", ",".join(map(str, args.sizes))]
    if args.repeats:
        cmd += ["--repeats", str(args.repeats)]
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
    return list(json.loads(out)["rows"])


def machine() -> dict[str, Any]:
    import dynapipeline

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "dynapipeline": dynapipeline.__version__, "python": platform.python_version(),
        "platform": platform.platform(), "cpu": cpu, "cpus": os.cpu_count(),
    }


def format_table(rows: list[dict[str, Any]]) -> str:
    head = ("strategy", "stage", "n", "loop", "mode", "µs/stage", "raw µs/stage", "ratio")
    body = [
        (r["case"], r["stage"], f"{r['n']:,}", r["loop"], r["mode"],
         f"{r['engine_us']:.3f}", _number(r["raw_us"], "{:.3f}"), _number(r["ratio"], "{:.2f}×"))
        for r in rows
    ]
    return _format_table(head, body, right=(2, 5, 6, 7), rule=True)


def _number(value: float, fmt: str) -> str:
    # NaN marks a row without a raw twin (build).
    return "-" if math.isnan(value) else fmt.format(value)


def _measure_all(args: argparse.Namespace, here: str, notes: list[str]) -> list[dict[str, Any]]:
    """One pass over the wanted modes: this process's mode here, the other in a subprocess."""
    wanted = ("compiled", "pure") if args.mode == "both" else (args.mode,)
    rows: list[dict[str, Any]] = []
    for mode in wanted:
        if mode == here:
            rows += measure_mode(args.quick, args.loops, args.sizes, args.repeats)
        elif args.mode == "both":
            try:
                rows += _other_mode(mode, args)
            except subprocess.CalledProcessError as error:
                note = f"{mode} engine not measured: {error.stderr.strip().splitlines()[-1:]}"
                if note not in notes:
                    notes.append(note)
        else:
            note = f"{mode} engine not available in this process (engine is {here})"
            if note not in notes:
                notes.append(note)
    return rows


def _key(r: dict[str, Any]) -> tuple[Any, ...]:
    return (r["case"], r["stage"], r["n"], r["loop"], r["mode"])


def _median_rows(passes: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """One row per key: the first pass's row, with engine, raw and ratio the medians over passes."""
    by_key: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for rows in passes:
        seen = set()
        for r in rows:
            # A subprocess that fell back to this process's mode would repeat its rows: keep one.
            if _key(r) not in seen:
                seen.add(_key(r))
                by_key.setdefault(_key(r), []).append(r)
    out = []
    for same in by_key.values():
        row = dict(same[0])
        for field in ("engine_us", "raw_us", "ratio"):
            row[field] = statistics.median(r[field] for r in same)
        row["runs"] = len(same)
        out.append(row)
    order = {name: i for i, name in enumerate((*CASES, BUILD))}
    out.sort(key=lambda r: (order[r["case"]], r["stage"] != "noop", r["n"], r["loop"], r["mode"]))
    return out


def run_bench(args: argparse.Namespace) -> int:
    import dynapipeline

    started = time.perf_counter()
    here = "compiled" if dynapipeline.compiled else "pure"
    notes: list[str] = []
    passes = [_measure_all(args, here, notes) for _ in range(args.runs)]
    rows = _median_rows(passes)
    large = None
    count = args.large_items if args.large_items is not None else (QUICK_COUNT if args.quick else DEFAULT_COUNT)
    if count > 0 and args.large_mb > 0:
        large = measure_large(max(1, round(args.large_mb * 1e6)), count, args.runs, args.loops[0])
    elapsed = time.perf_counter() - started
    report = {"machine": machine(), "quick": args.quick, "runs": args.runs, "seconds": elapsed, "rows": rows,
              "large": large}
    if args.json == "-":
        json.dump(report, sys.stdout)
        return 0
    m = report["machine"]
    print(f"dynapipeline {m['dynapipeline']} bench — Python {m['python']}, {m['cpu']} ({m['cpus']} CPUs), "
          f"{m['platform']}")
    print("µs per stage (per cycle for `cycles`), median of timed runs in alternating blocks"
          + (f", then median over {args.runs} runs" if args.runs > 1 else "")
          + "; ratio = engine / raw asyncio\n")
    print(format_table(rows))
    for note in notes:
        print(f"note: {note}")
    if large is not None:
        print("\n" + format_large(large))
    print(f"\n{elapsed:.1f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
        print(f"wrote {args.json}")
    return 0


def add_parser(sub: Any) -> None:
    p = sub.add_parser("bench", help="engine µs per stage against raw asyncio, per strategy, loop and mode; "
                                     "then MB/s of large items on 2 processes beside the peers")
    p.add_argument("--quick", action="store_true", help="10,000 no-op stages only, fewer repeats (< 15 s)")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON ('-': JSON to stdout only)")
    p.add_argument("--mode", choices=("both", "compiled", "pure"), default="both",
                   help="engine modes to measure (default both; the other one runs in a subprocess)")
    p.add_argument("--loops", type=_names(LOOPS), default=LOOPS, metavar="LOOPS",
                   help="comma-separated event loops (default: asyncio,uvloop)")
    p.add_argument("--sizes", type=_sizes, default=None, metavar="N[,N]",
                   help="stages per group (default 1000,10000; --quick: 10000)")
    p.add_argument("--repeats", type=int, default=None, help="timed runs per side and loop (default 6; --quick: 4)")
    p.add_argument("--runs", type=int, default=1,
                   help="repeat the whole measurement and report per-row medians (default 1)")
    p.add_argument("--large-mb", type=float, default=DEFAULT_SIZE / 1e6, metavar="MB",
                   help=f"size of each item of the large-item table (default {DEFAULT_SIZE / 1e6:g} MB)")
    p.add_argument("--large-items", type=int, default=None, metavar="N",
                   help=f"items per run of the large-item table (default {DEFAULT_COUNT}; --quick: {QUICK_COUNT}; "
                        "0: no such table)")
    p.set_defaults(func=run_bench)


def _names(choices: tuple[str, ...]) -> Callable[[str], tuple[str, ...]]:
    def parse(text: str) -> tuple[str, ...]:
        names = tuple(x.strip() for x in text.split(",") if x.strip())
        bad = [x for x in names if x not in choices]
        if bad or not names:
            raise argparse.ArgumentTypeError(f"choose from {', '.join(choices)}")
        return names

    return parse


def _sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError("a comma-separated list of integers") from None
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError("sizes must be >= 1")
    return sizes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dynapipeline")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["bench", *(argv or [])])
    return int(args.func(args))
