"""Loading batches ahead of the training step in a background thread (when there are no worker processes)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from torch.utils.data import DataLoader


class Prefetch:
    """Iterate ``iterable`` in a background thread, up to ``depth`` items ahead (for in-process loading).

    With no DataLoader workers (a 1-2 core machine) decoding and augmenting the next batch would
    otherwise wait for the model's step; torch, PIL and numpy release the GIL for most of that work,
    so a thread overlaps it with the forward/backward pass. Items arrive in the
    iterable's order (results are unchanged). Use as a context manager, or call :meth:`close`
    when stopping early: the thread stops at its next item.
    """

    _DONE = object()

    def __init__(self, iterable: Any, depth: int = 2):
        import queue
        import threading

        self._queue: "queue.Queue[Any]" = queue.Queue(maxsize=max(1, int(depth)))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(iterable,), name="medxpert-prefetch", daemon=True)
        self._thread.start()

    def _put(self, item: Any) -> bool:
        import queue

        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self, iterable: Any) -> None:
        import torch

        # One intra-op thread here (the setting is per thread): torch ops in the loader (the batch
        # augmentation) would otherwise start a second team of OpenMP threads beside the model's,
        # and the two teams' busy-waiting on the same cores slows the model's step more than the
        # loading costs.
        torch.set_num_threads(1)
        try:
            for item in iterable:
                if not self._put((item, None)):
                    return
        except BaseException as exc:  # re-raised in the consumer's thread
            self._put((self._DONE, exc))
            return
        self._put((self._DONE, None))

    def __iter__(self) -> "Prefetch":
        return self

    def __next__(self) -> Any:
        if self._stop.is_set() and self._queue.empty():  # exhausted or closed: never wait on a stopped thread
            raise StopIteration
        item, error = self._queue.get()
        if item is self._DONE:
            self._stop.set()
            if error is not None:
                raise error
            raise StopIteration
        return item

    def close(self) -> None:
        self._stop.set()
        self._thread.join()

    def __enter__(self) -> "Prefetch":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def prefetched(loader: DataLoader, depth: int = 2) -> "Prefetch | _Closable":
    """``loader``'s batches, loaded ahead in a thread when it has no worker processes (call ``close()`` after)."""
    if loader.num_workers > 0:  # worker processes already load ahead
        return _Closable(iter(loader))
    return Prefetch(loader, depth)


class _Closable:
    def __init__(self, iterator: Iterator[Any]):
        self._iterator = iterator

    def __iter__(self) -> Iterator[Any]:
        return self._iterator

    def close(self) -> None:
        pass
