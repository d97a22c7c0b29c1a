"""End to end: the served dashboard holds a small room. Three visitors at once on the smoke run, each in its own
Chromium context, get warm kernels from the pool and an answer; a fourth beyond ``dashboard.max_sessions`` gets
the busy page; once the pages close, culling (a short ``dashboard.idle_timeout_s`` for the test) takes the
kernels back to the pool's size and the pool is preheated again.

Times are printed, not asserted (benchmarks/bench_dashboard_load.py measures them on the demo run).
"""

from __future__ import annotations

import os

import pytest

from medxpert_utils.app.dashboard import server
from tests.e2e import dashboard_load as load

pytestmark = [pytest.mark.browser, pytest.mark.slow]

SETTINGS = ["dashboard.pool=2", "dashboard.max_sessions=3", "dashboard.idle_timeout_s=3",
            "dashboard.refill_delay_s=1"]


@pytest.fixture(scope="module")
def room(smoke_run, session_data_dir, tmp_path_factory):
    """Voilà serving notebook 06 on the smoke run with a pool of 2, at most 3 sessions and quick culling."""
    if not load.CHROMIUM.exists():
        pytest.fail(f"{load.CHROMIUM} is missing: install it with 'apt-get install -y chromium'")
    board = server.serving_params(smoke_run, SETTINGS)
    port = load.free_port(18960)
    env = {k: v for k, v in os.environ.items() if k not in ("GEMINI_API_KEY", "GOOGLE_API_KEY", "QUERY_STRING")}
    env.update(MEDXPERT_OUTPUTS=str(smoke_run.parent), MEDXPERT_RUN=str(smoke_run), MEDXPERT_DATA=str(session_data_dir),
               HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    log = tmp_path_factory.mktemp("voila_room") / "voila.log"
    room = load.Server(port, log, env=env, command=server.voila_command(port, board))
    try:
        room.wait_listening()
        yield room, board
    finally:
        room.stop()
        print(f"voila log: {log}")
    assert not room.kernels(), "kernels outlived the server"


def test_three_visitors_at_once_then_culling(room):
    served, board = room
    served.wait_idle_kernels(board.pool, timeout=240)  # preheated: notebook run, models loaded
    baseline = load.memory(served)
    print(f"pool: {baseline.kernels} kernels, RSS {baseline.rss_mb} MB")
    assert baseline.kernels == board.pool

    visits, late = load.crowd(served.url, board.max_sessions, timeout_s=180, extra=1)
    for visit in visits:
        print(f"visitor {visit.user}: HTTP {visit.status}, ready {visit.ready_s} s, answer {visit.answer_s} s "
              f"({visit.timings}) {visit.error}")
        assert visit.status == 200 and not visit.error, visit
        assert visit.answer_s is not None and "matches for" in visit.timings
    # the fourth visitor, while three pages are open: the busy page, not a hang and not a fifth kernel
    assert late[0].status == 503, late[0]

    # the three pages closed: their kernels are culled and the pool is full again, no more
    waited, left = load.wait_kernels_at_most(served, board.pool, timeout=90)
    print(f"kernels back to the pool's {board.pool} in {waited:.1f} s")
    assert left <= board.pool, f"{left} kernels remain 90 s after the pages closed:\n{served.tail()}"
    served.wait_idle_kernels(board.pool, timeout=240)
    assert "Culling kernel" in served.tail(200_000)

    # a visitor after the room emptied is served again (the cap counts open sessions, not past ones)
    visits, _ = load.crowd(served.url, 1, timeout_s=180)
    assert visits[0].status == 200 and visits[0].answer_s is not None, visits[0]
