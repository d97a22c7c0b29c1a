"""Serving the dashboard for a room, without a server: the Voilà command built from ``dashboard.*`` params, the
session count behind the busy page, culling of kernels whose page closed, and the preheated page (notebook 06's
``preheat`` / ``page``). The served behaviour itself is checked in Chromium by
``tests/e2e/test_dashboard_load_browser.py``."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest
from jupyter_server._tz import utcnow

from medxpert_utils.app.dashboard import server, voila_app
from medxpert_utils.app.dashboard import warm as page_module
from medxpert_utils.core import keys, stages
from medxpert_utils.core.config import DashboardParams
from medxpert_utils.core.errors import UserError
from medxpert_utils.core.notices import DISCLAIMER
from tests.app.test_dashboard import FakeAssistant, _fabricate_run


def _flag(cmd: list[str], name: str) -> str | None:
    return next((part.split("=", 1)[1] for part in cmd if part.startswith(f"--{name}=")), None)


def test_voila_command_sets_pool_culling_and_cap():
    board = DashboardParams(pool=3, max_sessions=5, idle_timeout_s=40, open_idle_timeout_s=900, refill_delay_s=12)
    cmd = server.voila_command(9999, board)
    assert cmd[1:3] == ["-m", "medxpert_utils.app.dashboard.voila_app"] and "--Voila.ip=127.0.0.1" in cmd
    assert _flag(cmd, "VoilaConfiguration.preheat_kernel") == "True"
    assert _flag(cmd, "VoilaConfiguration.default_pool_size") == "3"
    assert _flag(cmd, "VoilaKernelManager.fill_delay") == "12"
    assert _flag(cmd, "DashboardKernelManager.cull_disconnected_timeout") == "40"
    assert _flag(cmd, "DashboardKernelManager.cull_idle_timeout") == "900"
    assert int(_flag(cmd, "DashboardKernelManager.cull_interval")) <= 10  # checks often enough for a 40 s timeout
    assert _flag(cmd, "DashboardVoila.max_sessions") == "5"
    assert int(_flag(cmd, "VoilaExecutor.iopub_timeout")) >= 30  # a loaded machine delivers a page's widgets late
    assert _flag(cmd, "VoilaConfiguration.multi_kernel_manager_class").endswith("voila_app.DashboardKernelManager")


def test_no_pool_means_no_preheating():
    cmd = server.voila_command(9999, DashboardParams(pool=0))
    assert _flag(cmd, "VoilaConfiguration.preheat_kernel") is None and cmd[-1].endswith("06_dashboard.ipynb")


def test_serving_params_come_from_the_run_then_the_overrides(isolated_dirs):
    run_dir = _fabricate_run(isolated_dirs, dashboard__pool=4, dashboard__max_sessions=9)
    board = server.serving_params(run_dir, ["dashboard.max_sessions=2", "dashboard.idle_timeout_s=5"])
    assert (board.pool, board.max_sessions, board.idle_timeout_s) == (4, 2, 5.0)
    assert server.serving_params(None) == DashboardParams()


@pytest.mark.parametrize("item, expected", [
    ("train.lr=1", "dashboard.KEY=VALUE"), ("dashboard.nope=1", "dashboard.KEY=VALUE"),
    ("dashboard.pool=-1", "pool"), ("dashboard.pool", "KEY=VALUE")])
def test_serving_overrides_are_checked(item, expected):
    with pytest.raises(UserError, match=expected):
        server.serving_params(None, [item])


def test_serving_settings_do_not_make_the_run_stale(isolated_dirs):
    """Pool size, cap and timeouts change no result: they are volatile params of stage 06, out of its key."""
    from medxpert_utils.core import config

    run_dir = _fabricate_run(isolated_dirs)
    stage = stages.get("06")

    def values(overrides: dict) -> dict:
        return keys.declared_values(stage, keys.flatten(config.from_run(run_dir, overrides).to_dict()))

    before = values({})
    for key, value in [("dashboard.pool", 7), ("dashboard.max_sessions", 2), ("dashboard.idle_timeout_s", 9.0),
                       ("dashboard.open_idle_timeout_s", 99.0), ("dashboard.refill_delay_s", 0.0)]:
        assert values({key: value}) == before, key
    assert values({"dashboard.default_k": 9}) != before


# --- sessions and the busy page --------------------------------------------------------------------

def _done(kernel_id: str) -> asyncio.Future:
    loop = asyncio.new_event_loop()
    future = loop.create_future()
    future.set_result({"kernel_id": kernel_id})
    loop.close()
    return future


def _pending() -> asyncio.Future:
    loop = asyncio.new_event_loop()
    future = loop.create_future()
    loop.close()
    return future


def test_sessions_count_every_kernel_but_the_waiting_pool():
    manager = SimpleNamespace(list_kernel_ids=lambda: ["a", "b", "c", "d"],
                              _pools={"notebooks/06_dashboard.ipynb": [_done("c"), _done("d"), _pending()]})
    assert voila_app.pooled_kernels(manager) == {"c", "d"}
    assert voila_app.sessions(manager) == 2
    no_pool = SimpleNamespace(list_kernel_ids=lambda: ["a", "b"])
    assert voila_app.sessions(no_pool) == 2


def test_sessions_are_the_visitors_kernels_not_the_ones_the_pool_is_starting(monkeypatch):
    """A refill's kernel is listed before its pool entry is done: it must not count against the cap."""
    manager = voila_app.DashboardKernelManager()
    started = iter(["pool-1", "visitor-1", "pool-2"])

    async def parent_start(self, *args, **kwargs):
        return next(started)

    monkeypatch.setattr(voila_app.AsyncMappingKernelManager, "start_kernel", parent_start)
    asyncio.run(manager.start_kernel(kernel_name="python3", env={"VOILA_PREHEAT": "True"}))
    asyncio.run(manager.start_kernel(kernel_name="python3", env={"VOILA_PREHEAT": "False"}))  # no pool kernel left
    asyncio.run(manager.start_kernel(kernel_name="python3", env={"VOILA_PREHEAT": "True"}))
    running = ["pool-1", "visitor-1", "pool-2"]
    monkeypatch.setattr(manager, "list_kernel_ids", lambda: list(running))
    assert voila_app.sessions(manager) == 1

    async def take(*args, **kwargs):  # Voilà handing its preheated pool-1 to a visitor
        return "render-task", [], "pool-1"

    manager.get_rendered_notebook = take
    voila_app.track_handouts(manager)
    assert asyncio.run(manager.get_rendered_notebook("06_dashboard.ipynb"))[2] == "pool-1"
    assert voila_app.sessions(manager) == 2
    running.remove("visitor-1")  # culled
    assert voila_app.sessions(manager) == 1


def test_busy_page_says_what_to_do():
    html = voila_app.busy_page(6)
    assert "MedXpert is busy" in html and "All 6 dashboard sessions are in use" in html
    assert "Try again shortly" in html and 'http-equiv="refresh"' in html and DISCLAIMER[:40] in html


# --- culling ---------------------------------------------------------------------------------------

def _manager(monkeypatch, state: str = "idle", timeout: float = 60.0):
    """A kernel manager holding kernel k1 (its last activity long ago), recording shutdowns and what it leaves to
    Jupyter's own rule."""
    manager = voila_app.DashboardKernelManager(cull_disconnected_timeout=timeout)
    manager._kernels["k1"] = SimpleNamespace(last_activity=utcnow() - timedelta(hours=1), execution_state=state)
    manager._kernel_connections["k1"] = 0
    shut: list[str] = []
    passed: list[str] = []

    async def parent_shutdown(self, kernel_id, *args, **kwargs):
        shut.append(kernel_id)

    async def parent_cull(self, kernel_id):
        passed.append(kernel_id)

    monkeypatch.setattr(voila_app.AsyncMappingKernelManager, "shutdown_kernel", parent_shutdown)
    monkeypatch.setattr(voila_app.AsyncMappingKernelManager, "cull_kernel_if_idle", parent_cull)
    return manager, shut, passed


def _ago(seconds: float):
    return utcnow() - timedelta(seconds=seconds)


@pytest.mark.parametrize("closed_s, state, culled", [
    (61, "idle", True),    # page closed a minute ago, nothing running: shut down
    (30, "idle", False),   # page closed a moment ago
    (61, "busy", False),   # still working on a query
])
def test_a_closed_pages_kernel_is_culled_after_the_timeout(monkeypatch, closed_s, state, culled):
    manager, shut, passed = _manager(monkeypatch, state)
    manager.notify_connect("k1")
    manager.notify_disconnect("k1")
    manager._closed_at["k1"] = _ago(closed_s)
    asyncio.run(manager.cull_kernel_if_idle("k1"))
    assert shut == (["k1"] if culled else [])
    assert passed == ([] if culled else ["k1"])  # otherwise Jupyter's own (open-page) rule applies


def test_an_open_page_is_left_to_jupyters_longer_timeout(monkeypatch):
    manager, shut, passed = _manager(monkeypatch)
    manager.notify_connect("k1")
    asyncio.run(manager.cull_kernel_if_idle("k1"))
    assert shut == [] and passed == ["k1"]


def test_a_kernel_just_handed_out_is_not_culled_before_its_page_connects(monkeypatch):
    """Its last activity dates from its time in the pool: the grace counts from when the culler first sees it."""
    manager, shut, _ = _manager(monkeypatch)
    asyncio.run(manager.cull_kernel_if_idle("k1"))
    assert shut == []
    manager._unclaimed_since["k1"] = _ago(manager.UNCLAIMED_GRACE_S + 1)  # the visitor left while it loaded
    asyncio.run(manager.cull_kernel_if_idle("k1"))
    assert shut == ["k1"] and "k1" not in manager._unclaimed_since


# --- the preheated page ------------------------------------------------------------------------------

class WarmAssistant(FakeAssistant):
    warmed: list[str] = []

    def warm_up(self, model: str = "fine_tuned") -> None:
        WarmAssistant.warmed.append(model)


def test_preheat_loads_nothing_outside_a_pooled_kernel(isolated_dirs, monkeypatch):
    _fabricate_run(isolated_dirs)
    monkeypatch.delenv("VOILA_PREHEAT", raising=False)
    assert page_module.preheat() is None
    monkeypatch.setenv("VOILA_PREHEAT", "True")
    assert page_module.preheat("smoke") is None  # papermill's RUN: the pipeline never preheats


def test_stage_06_builds_a_random_weights_whisper_and_nothing_else(isolated_dirs, monkeypatch):
    from medxpert_utils.models import whisper

    built = []
    monkeypatch.setattr(whisper, "prepare_model", lambda cfg: built.append(cfg.asr.model))
    page_module.prepare_run(str(_fabricate_run(isolated_dirs, name="plain")))
    hub = _fabricate_run(isolated_dirs, name="hub", asr__backend="whisper")
    page_module.prepare_run(str(hub))
    assert built == []  # a hub Whisper loads on the first spoken query; the offline recogniser builds its own
    rehearsal = _fabricate_run(isolated_dirs, name="rehearsal", asr__backend="whisper",
                               asr__model="random:openai/whisper-small.en")
    monkeypatch.delenv("VOILA_PREHEAT", raising=False)
    assert page_module.preheat(str(rehearsal)) is None  # papermill's RUN: build, load nothing
    assert built == ["random:openai/whisper-small.en"]


def test_pooled_kernel_warms_the_run_then_serves_its_visitor_with_it(isolated_dirs, monkeypatch):
    run_dir = _fabricate_run(isolated_dirs, name="warm")
    other = _fabricate_run(isolated_dirs, name="other")
    monkeypatch.setenv("VOILA_PREHEAT", "True")
    monkeypatch.setenv("MEDXPERT_RUN", str(run_dir))
    monkeypatch.setattr(page_module, "Assistant", WarmAssistant)
    WarmAssistant.warmed = []
    warm = page_module.preheat()
    assert isinstance(warm, WarmAssistant) and WarmAssistant.warmed == ["fine_tuned"]

    waited: list[bool] = []
    import voila.utils

    monkeypatch.setattr(voila.utils, "wait_for_request", lambda url=None: waited.append(True))
    board = page_module.page("", warm).dashboard
    assert waited == [True] and board.assistant is warm  # the visitor's run is the preheated one
    board.runs.value = str(Path(other).resolve())
    assert board.assistant is not warm and isinstance(board.assistant, WarmAssistant)


def test_pooled_kernel_with_no_ready_run_preheats_nothing(isolated_dirs, monkeypatch):
    _fabricate_run(isolated_dirs, name="partial", with_index=False)
    monkeypatch.setenv("VOILA_PREHEAT", "True")
    monkeypatch.setenv("MEDXPERT_RUN", str(isolated_dirs / "partial"))
    assert page_module.preheat() is None


def test_a_full_room_reclaims_the_kernels_of_closed_pages_at_once(monkeypatch):
    """Visitors one after another: a closed page's kernel gives its place to the next visitor without waiting for
    the idle timeout; an open page's kernel, or one still answering, keeps it."""
    manager, shut, _ = _manager(monkeypatch)
    for kernel_id, state in (("k2", "idle"), ("k3", "busy")):
        manager._kernels[kernel_id] = SimpleNamespace(last_activity=utcnow(), execution_state=state)
        manager._kernel_connections[kernel_id] = 0
    for kernel_id in ("k1", "k2", "k3"):
        manager.notify_connect(kernel_id)
    manager.notify_disconnect("k1")  # closed a second ago
    manager.notify_disconnect("k3")  # closed, but its query still runs
    assert asyncio.run(manager.reclaim_closed()) == 1
    assert shut == ["k1"]
