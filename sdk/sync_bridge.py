"""Crossing between sync and async code, in one place.

hanlin's agent loop is async, its runtimes and most tools are blocking, and its users call it from both worlds (a
script, a notebook with a running loop, a web server). Three crossings cover every case:

- ``run_sync``: finish a coroutine from sync code, even when the calling thread already runs an event loop;
- ``iterate_sync``: consume an async generator from sync code, stopping it when the consumer stops early;
- ``iterate_in_thread``: consume a blocking iterator from async code without blocking the loop.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from typing import Any, TypeVar

T = TypeVar("T")

_DONE = object()


def run_sync(coro: Coroutine[Any, Any, T], *, thread_name: str = "hanlin-run-sync") -> T:
    """The coroutine's result. Inside a running event loop (Jupyter, an async app) it runs on a new loop in a
    worker thread: the caller's loop cannot be re-entered."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    result: list[T] = []
    errors: list[BaseException] = []

    def target() -> None:
        try:
            result.append(asyncio.run(coro))
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=target, name=thread_name)
    thread.start()
    thread.join()
    if errors:
        raise errors[0]
    return result[0]


def iterate_sync(agen: AsyncIterator[T], *, thread_name: str = "hanlin-iterate-sync") -> Iterator[T]:
    """The async generator's items, produced on a background event loop while the caller iterates. Closing the
    returned iterator (or abandoning it) stops the generator and joins the thread."""
    items: queue.Queue[Any] = queue.Queue(maxsize=256)
    stop = threading.Event()

    async def pump() -> None:
        try:
            async for item in agen:
                while not stop.is_set():
                    try:
                        items.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        await asyncio.sleep(0)
                if stop.is_set():
                    break
        except BaseException as exc:
            items.put(exc)
            return
        finally:
            await agen.aclose()  # type: ignore[attr-defined]
        items.put(_DONE)

    thread = threading.Thread(target=asyncio.run, args=(pump(),), name=thread_name, daemon=True)
    thread.start()
    try:
        while True:
            item = items.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # drain so the producer is never stuck on a full queue
            try:
                items.get(timeout=0.05)
            except queue.Empty:
                pass
        thread.join()


async def iterate_in_thread(make: Callable[[], Iterator[T]]) -> AsyncIterator[T]:
    """The blocking iterator's items, produced in a worker thread; it stops at its next item once the consumer goes
    away, and the consumer waits for it to stop (a runtime must not be left generating into nothing)."""
    loop = asyncio.get_running_loop()
    handoff: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
    cancelled = threading.Event()

    def produce() -> None:
        try:
            for item in make():
                if cancelled.is_set():
                    break
                loop.call_soon_threadsafe(handoff.put_nowait, ("item", item))
        except BaseException as exc:  # handed to the consumer, re-raised there
            loop.call_soon_threadsafe(handoff.put_nowait, ("error", exc))
        else:
            loop.call_soon_threadsafe(handoff.put_nowait, ("done", None))

    worker = loop.run_in_executor(None, produce)
    try:
        while True:
            kind, value = await handoff.get()
            if kind == "item":
                yield value
            elif kind == "error":
                raise value
            else:
                break
    finally:
        cancelled.set()
        await asyncio.shield(worker)
