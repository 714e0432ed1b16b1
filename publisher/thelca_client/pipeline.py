"""Pipelining for the blocking Client: many commands at once, their confirms collected together.

pika's BlockingChannel waits for each publish's own confirm, so the blocking
Client's connection sends one command per round trip. Its `*_many` methods
hand their commands instead to an AsyncConnection (the asyncio client's
transport) on an event loop in a thread of the Client's own, started by the
first such call: up to `window` commands are in flight at once, and the
caller's thread blocks until every one is answered. That connection retries,
re-sends with the same message_id and raises the same errors as every other.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any, Final, TypeVar

import pika

from thelca_client.asyncio_connection import AsyncConnection
from thelca_client.commands import Outgoing

T = TypeVar("T")
X = TypeVar("X")
DEFAULT_WINDOW: Final = 200  # commands in flight at once
JOIN_WAIT: Final = 10.0


class Pipeline:
    """An AsyncConnection on an event loop in a thread of its own, used from one blocking caller."""

    def __init__(self, parameters: list[pika.URLParameters], *, queue: str) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever,
                                        name="thelca-client-pipeline", daemon=True)
        self._thread.start()
        self._connection = AsyncConnection(parameters, queue=queue)

    def call_many(self, messages: Sequence[Outgoing], *, timeout: float,
                  window: int) -> list[bytes | Exception]:
        """Each message's reply body, or the error its call ended in, in the order given."""
        return self._run(_each(messages, window,
                               lambda message: self._connection.call(message, timeout=timeout)))

    def publish_many(self, messages: Sequence[Outgoing], *, timeout: float,
                     window: int) -> list[Exception | None]:
        """None for each message the broker confirmed, or the error its publish ended in."""
        return self._run(_each(messages, window,
                               lambda message: self._connection.publish(message, timeout=timeout)))

    def close(self) -> None:
        if not self._thread.is_alive():
            return
        self._run(self._connection.close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(JOIN_WAIT)
        if not self._thread.is_alive():
            self._loop.close()

    def _run(self, work: Coroutine[Any, Any, T]) -> T:
        future = asyncio.run_coroutine_threadsafe(work, self._loop)
        try:
            return future.result()
        except BaseException:
            future.cancel()  # Ctrl-C in the caller: stop what is in flight too
            raise


async def _each(items: Sequence[X], window: int,
                action: Callable[[X], Awaitable[T]]) -> list[T | Exception]:
    """action on every item, at most `window` at once; results (or errors) in item order."""
    results: list[T | Exception] = [Exception("not run")] * len(items)
    indexes = iter(range(len(items)))

    async def worker() -> None:
        for index in indexes:  # one iterator shared: each index goes to one worker
            try:
                results[index] = await action(items[index])
            except Exception as error:  # kept in its place; the caller decides
                results[index] = error

    await asyncio.gather(*(worker() for _ in range(min(max(window, 1), len(items)))))
    return results
