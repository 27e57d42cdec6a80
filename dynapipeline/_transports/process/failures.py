"""The errors a process step's item fails with, named for the step and the worker.

- its own exception, rebuilt from the worker's ``Failure`` (its remote traceback as its cause);
- a result that cannot be rebuilt in the parent (``PicklingError``, every item of its chunk when it was the
  chunk's pickle that broke);
- its worker's crash (``WorkerCrashedError``), with how many workers it crashed and, when the pool's workers
  die on start-up, the likely cause.
"""

from __future__ import annotations

from dynapipeline._transports._remote.messages import Failure
from dynapipeline._transports._remote.replies import remote_error, tag
from dynapipeline._transports.offloop import note_crashes
from dynapipeline._transports.process.handle import Crashed
from dynapipeline.errors import PicklingError, WorkerCrashedError

__all__ = ["crashed", "remote_failure", "unloadable"]


def remote_failure(name: str, failure: Failure, pid: int | None) -> BaseException:
    """The item's own exception, rebuilt; its remote traceback as its cause."""
    error, cause = remote_error(failure, name)
    error.__cause__ = cause
    tag(error, name, pid)
    return error


def unloadable(name: str, unpickling: Exception, pid: int | None, chunk: int) -> PicklingError:
    """A result of stage ``name`` that the parent cannot rebuild (``chunk`` items: the chunk's pickle broke)."""
    also = f"; every item of its chunk of {chunk} fails with it" if chunk > 1 else ""
    failure = PicklingError(f"stage {name!r} returned a result that cannot be rebuilt in the "
                            f"parent process ({type(unpickling).__name__}: {unpickling}){also}")
    failure.__cause__ = unpickling
    tag(failure, name, pid)
    return failure


def crashed(name: str, outcome: Crashed, crashes: int) -> WorkerCrashedError:
    """The worker running stage ``name``'s item died (the item crashed ``crashes`` workers so far)."""
    error = WorkerCrashedError(name, outcome.pid, outcome.exitcode)
    if outcome.at_start:
        error.add_note("the pool's worker processes die on start-up: in a script, start the pipeline under "
                       "`if __name__ == \"__main__\":` (worker processes import the main module)")
    note_crashes(error, crashes)
    return error
