"""Recycling worker processes: a worker retires after ``max_tasks_per_worker`` stage runs, or once its resident
memory passes ``max_memory_per_worker``, and the pool replaces it; no item fails or runs twice because of it.

::

    worker: run_message ─► Budget.spent(reply) ─► reply(retiring=True) ══ pipe ══► parent, then the worker exits
    parent: _on_readable: reply.retiring ─► retire(w): out of the pool's workers, a replacement starts (fill)
            the pipe's end (EOF) ─► reap(w): not a crash; the blocks it still held are freed

Invariants:

- A worker holds one job at a time and says it retires in the reply to it: the
  parent never sends it anything after that reply, so no job is lost in between.
- A stream step's chunk is cut at the budget (the worker runs only as many items
  as it has runs left, and stops before the next item once its RSS is over the
  limit): the reply says fewer items ran than were sent, and the parent sends the
  rest again (the path a full item log takes). A group's batch is never cut: the
  worker retires after the batch that reaches its limit (batches are planned at
  most ``max_tasks_per_worker`` components long).
- The RSS is read only when ``max_memory_per_worker`` is set (``/proc/self/statm``;
  the peak from ``getrusage`` where there is no ``/proc``): the default path reads
  nothing per item.

See docs/threads-and-processes.md ("Recycling workers").
"""

from __future__ import annotations

import os
import resource
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from dynapipeline._transports._remote.messages import MapReply, Recycling, Reply

if TYPE_CHECKING:
    from dynapipeline._transports.process.handle import PoolJob, Worker

__all__ = ["Budget", "cap_batches", "fits"]


class Budget:
    """A worker's limits (``Recycling``): the stage runs it has left, and its RSS against the memory limit."""

    def __init__(self, recycling: Recycling) -> None:
        self.left = recycling.max_tasks
        self.max_memory = recycling.max_memory
        self._statm: int | None = None
        self._page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
        if self.max_memory is not None:
            try:
                self._statm = os.open("/proc/self/statm", os.O_RDONLY)
            except OSError:  # no /proc (macOS): the peak RSS serves
                self._statm = None
        # Before each item but a chunk's first: whether the worker must stop there (None: never asked).
        self.stop: Callable[[], bool] | None = self.over_memory if self.max_memory is not None else None

    def rss(self) -> int:
        """This process's resident memory now, in bytes (its peak where ``/proc`` is missing)."""
        if self._statm is not None:
            return int(os.pread(self._statm, 64, 0).split()[1]) * self._page
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return int(peak) if sys.platform == "darwin" else int(peak) * 1024

    def over_memory(self) -> bool:
        return self.max_memory is not None and self.rss() > self.max_memory

    def items(self, items: list[Any]) -> list[Any]:
        """The items of a chunk this worker runs: as many as it has runs left (the parent sends the rest again)."""
        left = self.left
        return items if left is None or len(items) <= left else items[:max(1, left)]

    def spent(self, reply: Reply | MapReply) -> bool:
        """Count the runs the reply reports; whether the worker retires after it."""
        if self.left is not None:
            self.left -= reply.ran if isinstance(reply, MapReply) else len(reply.timings)
            if self.left <= 0:
                return True
        return self.over_memory()


def cap_batches(batches: list[list[int]], most: int | None) -> list[list[int]]:
    """Batches of at most ``most`` components (a worker retires after the batch that reaches its limit)."""
    if most is None or all(len(batch) <= most for batch in batches):
        return batches
    return [batch[i:i + most] for batch in batches for i in range(0, len(batch), most)]


def fits(recycling: Recycling, w: Worker, job: PoolJob) -> bool:
    """Whether ``w`` may take ``job``: a group's batch that would take a worker which has run stages already past
    ``max_tasks`` goes to a fresh worker instead (a stream step's chunk is cut in the worker)."""
    size = len(getattr(job, "indices", ()))
    return recycling.max_tasks is None or not w.tasks or w.tasks + size <= recycling.max_tasks
