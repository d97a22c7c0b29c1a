"""Peak memory of a process tree while a block runs: what the chain records for each stage's kernel.

:class:`PeakMemory` watches a process started inside its ``with`` block (a papermill kernel, a launcher and its
workers) from a sampling thread; :func:`sample_running` makes every running sampler look once more (the chain's
kernel manager calls it just before it shuts a kernel down, so a peak in a notebook's last moments is not lost).
"""

from __future__ import annotations

import os
import sys
import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import psutil

_MB = 2**20
_INTERVAL_S = 0.25  # how often PeakMemory looks
_SAMPLERS: set[PeakMemory] = set()  # running in this process; the kernel manager has them look before a shutdown
_SAMPLERS_LOCK = threading.Lock()


def sample_running() -> None:
    """Have every :class:`PeakMemory` running in this process look now (a kernel manager calls it just before it
    shuts a kernel down)."""
    with _SAMPLERS_LOCK:
        samplers = list(_SAMPLERS)
    for sampler in samplers:
        sampler.sample()


class PeakMemory:
    """Peak memory of a process started by ``root`` (default: this process) while the ``with`` block runs.

    A thread looks every ``interval`` seconds (default 0.25), and once more whenever :func:`sample_running` is
    called (the chain's kernel manager does, just before it shuts a kernel down). The process watched is the first
    descendant of ``root``, started since the block began, whose command line runs ipykernel; until one does, the
    largest such child. Results in MB (2**20 bytes), one decimal, None when nothing could be measured (psutil
    missing, the process gone before the first look):

    * ``peak_rss_mb``: its own peak resident set: Linux's ``VmHWM`` (monotonic, so the last reading is the peak
      until then); elsewhere the largest RSS seen (``peak_wset`` on Windows);
    * ``peak_rss_tree_mb``: the largest sum of the current RSS of it and all its descendants seen.
    """

    def __init__(self, root: int | None = None, interval: float | None = None):
        self.root = os.getpid() if root is None else root
        self.interval = _INTERVAL_S if interval is None else interval
        self._peak: int | None = None
        self._tree: int | None = None
        self._process: psutil.Process | None = None
        self._is_kernel = False
        self._before: set[int] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def peak_rss_mb(self) -> float | None:
        return None if self._peak is None else round(self._peak / _MB, 1)

    @property
    def peak_rss_tree_mb(self) -> float | None:
        return None if self._tree is None else round(self._tree / _MB, 1)

    def __enter__(self) -> PeakMemory:
        try:
            import psutil

            self._before = {p.pid for p in psutil.Process(self.root).children(recursive=True)}
        except Exception:  # no psutil, or no such root: nothing to measure, the notebook runs all the same
            return self
        with _SAMPLERS_LOCK:
            _SAMPLERS.add(self)
        self._thread = threading.Thread(target=self._run, name="medxpert-peak-memory", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        with _SAMPLERS_LOCK:
            _SAMPLERS.discard(self)
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def sample(self) -> None:
        """Look once (never raises: a process that ends meanwhile is simply not counted)."""
        import psutil

        with self._lock:
            try:
                process = self._find()
                if process is None:
                    return
                own = _peak_bytes(process)
                tree = process.memory_info().rss
                for child in process.children(recursive=True):
                    try:
                        tree += child.memory_info().rss
                    except psutil.Error:
                        pass
            except (psutil.Error, OSError, ValueError):
                return
            if own is not None:
                self._peak = own if self._peak is None else max(self._peak, own)
            self._tree = tree if self._tree is None else max(self._tree, tree)

    def _find(self) -> psutil.Process | None:
        import psutil

        if self._process is not None and self._is_kernel and self._process.is_running():
            return self._process
        root = psutil.Process(self.root)
        new = [p for p in root.children(recursive=True) if p.pid not in self._before]
        for process in new:
            try:
                command = " ".join(process.cmdline())
            except psutil.Error:
                continue
            if "ipykernel" in command:
                self._process, self._is_kernel = process, True
                return process
        sizes = []
        for process in new:
            try:
                if process.ppid() == self.root:
                    sizes.append((process.memory_info().rss, process.pid, process))
            except psutil.Error:
                pass
        self._process = max(sizes, key=lambda size: size[:2])[2] if sizes else self._process
        return self._process


def _peak_bytes(process: psutil.Process) -> int | None:
    """The process's peak resident set so far, in bytes (None once it has exited: a zombie has no VmHWM)."""
    if sys.platform.startswith("linux"):
        with open(f"/proc/{process.pid}/status", encoding="ascii", errors="replace") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024  # in kB
        return None
    info = process.memory_info()
    return int(getattr(info, "peak_wset", None) or info.rss)
