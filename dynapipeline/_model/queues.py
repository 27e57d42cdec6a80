"""A closable ``asyncio.Queue``: the end of a stream's items is the queue closing, not a marker in it.

::

    senders ──put──► [ ClosableQueue ] ──get──► receivers
       └── the last one to finish calls shutdown()      └── get() returns what is left, then raises QueueShutDown

- On Python 3.13+ this is ``asyncio.Queue`` itself (``shutdown()`` and
  ``asyncio.QueueShutDown`` are built in); on 3.11 and 3.12 a small subclass adds
  the same non-immediate ``shutdown()``.
- As with anyio's memory streams, the queue closes when its last sender is done:
  whoever closes it puts nothing after (the 3.11/3.12 subclass does not check puts).
- After ``shutdown()``, blocked and later ``get()`` calls return the items left,
  then raise ``QueueShutDown``. ``get_nowait()`` on an empty closed queue raises
  ``QueueShutDown`` on 3.13 and ``QueueEmpty`` on 3.11/3.12: callers catch both.

See docs/streams.md.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any, TypeVar

__all__ = ["ClosableQueue", "QueueShutDown"]

_T = TypeVar("_T")

if sys.version_info >= (3, 13):
    from asyncio import Queue as ClosableQueue
    from asyncio import QueueShutDown
else:
    class QueueShutDown(Exception):
        """Raised by ``get()`` on a closed queue that has no item left."""

    class ClosableQueue(asyncio.Queue[_T]):
        """``asyncio.Queue`` with Python 3.13's ``shutdown()`` (the non-immediate kind) on 3.11 and 3.12."""

        _is_shutdown = False

        def shutdown(self) -> None:
            """Close the queue: getters take what is left, then get ``QueueShutDown``."""
            self._is_shutdown = True
            me: Any = self  # asyncio.Queue's private list of waiting getters, which typeshed does not list
            waiters = me._getters
            while waiters:
                waiter = waiters.popleft()
                if not waiter.done():
                    waiter.set_result(None)

        async def get(self) -> _T:
            """An item; once the queue is closed and empty, ``QueueShutDown`` (3.13's ``Queue.get``)."""
            me: Any = self  # asyncio.Queue's private helpers, which typeshed does not list
            while self.empty():
                if self._is_shutdown:
                    raise QueueShutDown
                getter = me._get_loop().create_future()
                me._getters.append(getter)
                try:
                    await getter
                except BaseException:
                    getter.cancel()
                    try:
                        me._getters.remove(getter)
                    except ValueError:
                        pass  # a put_nowait() or shutdown() took it off the list already
                    if not self.empty() and not getter.cancelled():
                        me._wakeup_next(me._getters)  # woken for an item we will not take: pass the turn on
                    raise
            return self.get_nowait()
