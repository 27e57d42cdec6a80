"""Runs made on Dask, handed to the parent's handlers that record runs made elsewhere (``Handler.ran_elsewhere``).

A task tells its worker's pid; the worker's address (what names a Dask worker)
comes from asking the workers their pids once (``Client.run``), kept per client.
Nothing here runs unless such a handler is attached.
"""

from __future__ import annotations

import logging
import os
import weakref
from typing import Any

from dynapipeline._model.handlers import report_elsewhere, reports_elsewhere
from dynapipeline._transports._remote.messages import RunStats
from dynapipeline._transports._remote.replies import report_reply

__all__ = ["report_items", "report_task", "worker_attributes"]

logger = logging.getLogger("dynapipeline")

_addresses: weakref.WeakKeyDictionary[Any, dict[int, str]] = weakref.WeakKeyDictionary()


async def worker_attributes(client: Any, pid: int) -> dict[str, Any]:
    """``dynapipeline.worker_pid`` and, when the cluster still has that worker, ``dynapipeline.worker_address``."""
    attributes: dict[str, Any] = {"dynapipeline.worker_pid": pid}
    known = _addresses.setdefault(client, {})
    if pid not in known:
        try:
            known.update({worker_pid: address for address, worker_pid in (await client.run(os.getpid)).items()})
        except Exception as error:  # noqa: BLE001 - a worker lost meanwhile: the span goes without its address
            logger.debug("asking the Dask workers their pids: %r", error)
    address = known.get(pid)
    if address is not None:
        attributes["dynapipeline.worker_address"] = address
    return attributes


async def report_task(client: Any, runners: list[Any], reply: Any, pid: int) -> None:
    """Hand the runs of one task's reply (a batch of components) to ``ran_elsewhere``."""
    if any(reports_elsewhere(r.owner) for r in runners):
        report_reply(runners, reply, await worker_attributes(client, pid))


async def report_items(client: Any, stage: Any, replies: list[Any], out: list[tuple[bool, Any]], pid: int,
                       first_run: int) -> None:
    """Hand each item's run of a stream step's task to ``ran_elsewhere``: its start, end and error."""
    if not reports_elsewhere(stage):
        return
    attributes = await worker_attributes(client, pid)
    run = first_run
    for reply, (ok, value) in zip(replies, out, strict=False):
        if reply.unloadable or not reply.timings:
            continue  # nothing ran
        stats, _durations, _slowest = reply.timings[0][0]  # the stage's (the task's only component's) own timing
        own = RunStats._make(stats)
        report_elsewhere(stage, own.start_time, own.end_time, None if ok else value,
                         {**attributes, "dynapipeline.run": run})
        run += 1
