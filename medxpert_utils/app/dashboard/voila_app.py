"""Voilà as the dashboard serves it: preheated kernels, culling of kernels nobody uses, a cap on sessions.

Voilà's own machinery does the work and this module only sets it up (``python -m
medxpert_utils.app.dashboard.voila_app`` takes Voilà's options; :mod:`.server` builds the command):

- **Preheated kernels.** ``VoilaConfiguration.preheat_kernel`` keeps ``pool_size`` kernels that have
  already run notebook 06 up to :func:`voila.utils.wait_for_request` (its first cell loads the run's
  models), so a visitor gets a kernel that answers the first query warm. Voilà refills the pool
  ``VoilaKernelManager.fill_delay`` seconds after a kernel is taken; a delay keeps a refill from
  competing for the CPU with the visitors who just arrived.
- **Culling.** :class:`DashboardKernelManager` shuts down a kernel whose page has gone (no connection)
  after ``cull_disconnected_timeout`` seconds without activity, and any kernel, page open or not, after
  Jupyter's ``cull_idle_timeout``. Pooled kernels are never culled (Voilà's pool protects them).
- **A cap.** :class:`DashboardVoila` answers the page with ``503`` and a "busy, try again shortly" page
  while ``max_sessions`` visitors hold a kernel, instead of starting more kernels than the machine holds. When the
  cap is reached, kernels whose page has already closed are shut down at once to make room.
"""

from __future__ import annotations

import html
from datetime import datetime, timedelta
from typing import Any

from jupyter_server._tz import utcnow
from jupyter_server.services.kernels.kernelmanager import AsyncMappingKernelManager
from traitlets import Float, Integer
from voila.app import Voila
from voila.tornado.handler import TornadoVoilaHandler
from voila.utils import ENV_VARIABLE

from medxpert_utils.core.notices import DISCLAIMER

BUSY_RETRY_S = 30


class DashboardKernelManager(AsyncMappingKernelManager):
    """Jupyter's kernel manager, also culling the kernel of a page that has closed after a short idle time.

    A kernel counts as closed from its page's last disconnection. One handed to a visitor whose page never
    connected (the visitor left while it loaded) gets ``UNCLAIMED_GRACE_S`` from when the culler first sees it
    outside the pool: its last activity may date from its time in the pool.
    """

    cull_disconnected_timeout = Float(60.0, config=True, help="Seconds without activity after which a kernel whose "
                                                              "page has closed is shut down (0: never).")
    UNCLAIMED_GRACE_S = 120.0

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self._closed_at: dict[str, datetime] = {}
        self._unclaimed_since: dict[str, datetime] = {}
        self.visitor_kernels: set[str] = set()  # started for a visitor, or handed to one from the pool

    async def start_kernel(self, *args: Any, **kwargs: Any) -> str:  # type: ignore[override]  # async, as its parent
        kernel_id = await super().start_kernel(*args, **kwargs)
        if (kwargs.get("env") or {}).get(ENV_VARIABLE.VOILA_PREHEAT) != "True":  # not one started for the pool
            self.visitor_kernels.add(kernel_id)
        return kernel_id

    def notify_connect(self, kernel_id: str) -> None:
        super().notify_connect(kernel_id)
        self._closed_at.pop(kernel_id, None)
        self._unclaimed_since.pop(kernel_id, None)

    def notify_disconnect(self, kernel_id: str) -> None:
        super().notify_disconnect(kernel_id)
        if not self._kernel_connections.get(kernel_id):
            self._closed_at[kernel_id] = utcnow()

    async def shutdown_kernel(self, kernel_id: str, *args: Any, **kwargs: Any) -> None:  # type: ignore[override]
        self._closed_at.pop(kernel_id, None)
        self._unclaimed_since.pop(kernel_id, None)
        self.visitor_kernels.discard(kernel_id)
        await super().shutdown_kernel(kernel_id, *args, **kwargs)

    async def reclaim_closed(self) -> int:
        """Shut down now, whatever their idle time, the visitors' kernels whose page has closed (and that are not
        working on a query); returns how many. A visitor who finds every session taken gets the room they held."""
        closed = [k for k in list(self._closed_at) if k in self._kernels and not self._kernel_connections.get(k)
                  and self._kernels[k].execution_state != "busy"]
        for kernel_id in closed:
            self.log.info("Culling kernel %s: its page has closed and a new visitor needs the room", kernel_id)
            await self.shutdown_kernel(kernel_id)
        return len(closed)

    async def cull_kernel_if_idle(self, kernel_id: str) -> None:
        kernel = self._kernels.get(kernel_id)
        if kernel is None:
            return
        if self.cull_disconnected_timeout > 0 and not self._kernel_connections.get(kernel_id):
            now = utcnow()
            if kernel_id in self._closed_at:  # its page was open and has closed
                since, limit = max(self._closed_at[kernel_id], kernel.last_activity), self.cull_disconnected_timeout
            else:  # handed out, its page not connected yet
                since = self._unclaimed_since.setdefault(kernel_id, now)
                limit = max(self.cull_disconnected_timeout, self.UNCLAIMED_GRACE_S)
            if now - since > timedelta(seconds=limit) and kernel.execution_state != "busy":
                self.log.info("Culling kernel %s: no page connected for %s", kernel_id, now - since)
                await self.shutdown_kernel(kernel_id)
                return
        await super().cull_kernel_if_idle(kernel_id)


def pooled_kernels(kernel_manager: Any) -> set[str]:
    """Ids of the kernels waiting, started and preheated, in Voilà's pools (none without preheating)."""
    ids = set()
    for pool in getattr(kernel_manager, "_pools", {}).values():
        for task in pool:
            if task.done() and not task.cancelled() and task.exception() is None:
                ids.add(task.result()["kernel_id"])
    return ids


def sessions(kernel_manager: Any) -> int:
    """Running kernels that belong to a visitor: started for one, or handed to one from the pool. Kernels the pool
    is still starting count as neither (they are in the kernel list before their pool entry is done)."""
    visitors = getattr(kernel_manager, "visitor_kernels", None)
    running = set(kernel_manager.list_kernel_ids())
    if visitors is None:  # a plain kernel manager: every kernel outside the pool
        return len(running - pooled_kernels(kernel_manager))
    return len(running & visitors)


def track_handouts(kernel_manager: Any) -> None:
    """Record each kernel Voilà hands from its pool to a visitor in ``kernel_manager.visitor_kernels``."""
    take = kernel_manager.get_rendered_notebook

    async def get_rendered_notebook(*args: Any, **kwargs: Any) -> Any:
        render_task, rendered_cache, kernel_id = await take(*args, **kwargs)
        kernel_manager.visitor_kernels.add(kernel_id)
        return render_task, rendered_cache, kernel_id

    kernel_manager.get_rendered_notebook = get_rendered_notebook


def busy_page(limit: int) -> str:
    """The page a visitor sees while ``limit`` sessions are open (it retries by itself)."""
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>MedXpert - busy</title>
<meta http-equiv="refresh" content="{BUSY_RETRY_S}">
<style>body{{font-family:sans-serif;max-width:40em;margin:4em auto;color:#222}} .note{{color:#666}}</style>
</head><body class="mx-busy">
<h1>MedXpert is busy</h1>
<p>All {limit} dashboard sessions are in use. Try again shortly: this page reloads itself in {BUSY_RETRY_S} s.</p>
<p class="note">A session ends when its page is closed (or after a while without use).</p>
<p class="note">{html.escape(DISCLAIMER)}</p>
</body></html>"""


class CappedVoilaHandler(TornadoVoilaHandler):
    """Voilà's page handler, answering a busy page instead of a new kernel once ``max_sessions`` are in use."""

    async def get(self, path: str | None = None) -> None:
        limit = int(self.settings.get("medxpert_max_sessions") or 0)
        full = bool(limit) and not path and sessions(self.kernel_manager) >= limit
        if full and hasattr(self.kernel_manager, "reclaim_closed") and await self.kernel_manager.reclaim_closed():
            full = sessions(self.kernel_manager) >= limit
        if full:
            self.set_status(503)
            self.set_header("Retry-After", str(BUSY_RETRY_S))
            self.set_header("Cache-Control", "no-cache, no-store, must-revalidate")
            self.set_header("Content-Type", "text/html; charset=utf-8")
            self.finish(busy_page(limit))
            return
        await super().get(path)


class DashboardVoila(Voila):
    """Voilà serving one notebook with :class:`CappedVoilaHandler` as its page handler."""

    name = "medxpert-dashboard"
    max_sessions = Integer(0, config=True, help="Visitors served at once (0: no limit); beyond it a busy page.")

    def init_settings(self) -> dict:
        settings = super().init_settings()
        settings["medxpert_max_sessions"] = self.max_sessions
        if hasattr(self.kernel_manager, "visitor_kernels") and hasattr(self.kernel_manager, "get_rendered_notebook"):
            track_handouts(self.kernel_manager)
        return settings

    def init_handlers(self) -> list:
        return [(pattern, CappedVoilaHandler if handler is TornadoVoilaHandler else handler, *rest)
                for pattern, handler, *rest in super().init_handlers()]


def main() -> None:
    DashboardVoila.launch_instance()


if __name__ == "__main__":
    main()
