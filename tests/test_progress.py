"""Progress bars: text with a kept final line in batch runs, tqdm.auto otherwise."""

from __future__ import annotations

import io

from medxpert_utils import progress


def test_batch_runs_get_text_bars_that_keep_their_last_line(monkeypatch):
    monkeypatch.setenv(progress.BATCH_ENV, "1")
    out = io.StringIO()
    bar = progress.tqdm(range(3), desc="epoch 1/2", file=out, leave=False, dynamic_ncols=True)
    assert bar.mininterval == progress.BATCH_INTERVAL_S and bar.ncols == 100
    for _ in bar:
        pass
    last = out.getvalue().split("\r")[-1]
    assert "epoch 1/2: 100%" in last and "3/3" in last and last.endswith("\n")  # left in place


def test_interactive_sessions_keep_tqdm_auto(monkeypatch):
    from tqdm.auto import tqdm as auto

    monkeypatch.delenv(progress.BATCH_ENV, raising=False)
    bar = progress.tqdm(total=2, file=io.StringIO())
    assert isinstance(bar, auto) and bar.mininterval != progress.BATCH_INTERVAL_S
