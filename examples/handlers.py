"""Handlers: logging, timing, and retry-on-error with ``around``.

A handler's hooks run for the component it is attached to (a handler on a group
does not run for the group's stages): ``before``, ``after`` and ``on_error`` in
attach order, ``around`` nested with the first attached outermost. ``around``
receives ``execute`` and decides when (and how often) to call it, so it can time
a run or retry it.
Run: ``python examples/handlers.py``.
"""

import asyncio
import logging
import time

import dynapipeline
from dynapipeline import Handler, Stage


class LogCalls(Handler):
    """Logs the start, the result and the error of each run."""

    def before(self, component, *args, **kwargs):
        logging.info("%s: start", component.name)

    def after(self, component, result, *args, **kwargs):
        logging.info("%s: returned %r", component.name, result)

    def on_error(self, component, error, *args, **kwargs):
        logging.error("%s: failed with %r", component.name, error)


class Timing(Handler):
    """Measures each run with ``around`` (the engine's own timing is in ``component.stats``)."""

    async def around(self, component, execute, *args, **kwargs):
        start = time.perf_counter()
        try:
            return await execute(*args, **kwargs)
        finally:
            logging.info("%s: took %.3f s", component.name, time.perf_counter() - start)


class RetryOn(Handler):
    """Retries a run that raised one of ``errors``, up to ``times`` more times.

    (A Stage's own ``retries=`` retries any exception; a handler can choose which.)
    """

    errors: tuple[type[BaseException], ...] = (ConnectionError,)
    times: int = 2

    async def around(self, component, execute, *args, **kwargs):
        for attempt in range(self.times + 1):
            try:
                return await execute(*args, **kwargs)
            except self.errors as error:
                if attempt == self.times:
                    raise
                logging.warning("%s: %r, retrying", component.name, error)
                await asyncio.sleep(0.01)


class Download(Stage):
    """Drops the connection on its first ``failures`` tries."""

    failures: int = 1
    tries: int = 0

    async def execute(self, url):
        self.tries += 1
        await asyncio.sleep(0.02)
        if self.tries <= self.failures:
            raise ConnectionError(f"connection reset (try {self.tries})")
        return f"{len(url)} bytes from {url}"


async def main():
    # Attach order matters: LogCalls outermost sees the final outcome once; RetryOn innermost retries.
    download = Download(name="download", handlers=[LogCalls(), Timing(), RetryOn(times=2)])
    print(await download.run("https://example.org"))

    broken = Download(name="broken", failures=5, handlers=[LogCalls(), RetryOn(times=1)])
    try:
        await broken.run("https://example.org")
    except ConnectionError as error:
        print("broken:", error)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    dynapipeline.run(main())
