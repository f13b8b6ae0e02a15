"""Training examples made ahead of use in a background thread, in a fixed order.

Examples are a function of their index alone (:func:`.examples.make_example`), so the
thread changes only when they are made, never what they are; a resumed run restarts the
thread at the first example not yet used.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any, Self


class Prefetcher:
    """Calls ``make(k)`` for ``k = start, start + 1, ...`` in a daemon thread; :meth:`next`
    returns the results in that order (re-raising the thread's errors). ``depth`` bounds
    how many wait ready. Use as a context manager, or call :meth:`close`."""

    def __init__(self, make: Callable[[int], Any], start: int, depth: int = 8) -> None:
        self._make = make
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self._stop = threading.Event()
        self.next_index = start
        self._thread = threading.Thread(
            target=self._work, args=(start,), daemon=True, name="ffn-examples"
        )
        self._thread.start()

    def _work(self, k: int) -> None:
        while not self._stop.is_set():
            try:
                item = (k, self._make(k), None)
            except Exception as exc:  # noqa: BLE001 - handed to the consumer, re-raised there
                item = (k, None, exc)
            while not self._stop.is_set():
                try:
                    self._queue.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if item[2] is not None:
                return
            k += 1

    def next(self) -> Any:
        """The next example, in index order."""
        k, value, exc = self._queue.get()
        if exc is not None:
            raise exc
        assert k == self.next_index, (k, self.next_index)
        self.next_index += 1
        return value

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
