"""A generation job's writer thread: PNG encoding and file writes while the GPU runs the next batch.

`concurrent.futures.ThreadPoolExecutor` would do with one worker, but its queue is unbounded: a
GPU faster than the disk would pile up decoded images in memory without limit. Here at most
`depth` batches wait; `submit` blocks beyond that, so the GPU never runs further ahead than the
writer can follow. Work runs in submission order, so journal rows keep the order of the items.

Nothing is lost when the process dies, however it dies: a batch still in the queue has no journal
row yet, so the resumed job renders it again (an image is kept only if its journal row exists and
its bytes still hash to it, see `fewstep.jobs.generate`).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from types import TracebackType

#: zlib level of generated PNGs: 1 encodes ~4x faster than the default 6 for ~10% larger files
PNG_COMPRESS_LEVEL = 1


class ImageWriter:
    """Runs submitted callables one by one in a worker thread, at most `depth` waiting.

    The first error a callable raises is raised again in the submitting thread, by the next
    `submit` or by `close` (leaving the ``with`` block); later work is dropped.
    """

    def __init__(self, depth: int = 2):
        self._queue: queue.Queue[Callable[[], None] | None] = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._work, name="fewstep-image-writer", daemon=True)
        self._thread.start()

    def _work(self) -> None:
        while (task := self._queue.get()) is not None:
            if self._error is None:
                try:
                    task()
                except BaseException as err:  # re-raised in the submitting thread
                    self._error = err

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error

    def submit(self, task: Callable[[], None]) -> None:
        self._raise()
        self._queue.put(task)

    def close(self) -> None:
        """Wait for every submitted task; raise the first error one of them raised."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()
        self._raise()

    def __enter__(self) -> ImageWriter:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        if kind is None:
            self.close()
        else:  # already failing: finish what was handed over, keep the original error
            self._queue.put(None)
            self._thread.join()
