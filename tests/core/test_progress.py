"""Progress bars: text with a kept final line in batch runs, tqdm.auto otherwise."""

from __future__ import annotations

import io

from medxpert_utils.core import progress


def test_batch_runs_get_text_bars_that_keep_their_last_line(monkeypatch):
    monkeypatch.setenv(progress.BATCH_ENV, "1")
    out = io.StringIO()
    bar = progress.tqdm(range(3), desc="epoch 1/2", file=out, leave=False, dynamic_ncols=True)
    assert bar.mininterval == progress.BATCH_INTERVAL_S and bar.ncols == 100
    for step in bar:
        bar.set_postfix(loss=f"{3 - step:.3f}")
    printed = [line for line in out.getvalue().split("\r") if line.strip()]
    assert len(printed) == 1  # a short bar: no empty start, no line per postfix change
    assert "epoch 1/2: 100%" in printed[0] and "3/3" in printed[0] and "loss=1.000" in printed[0]
    assert printed[0].endswith("\n")  # left in place


def test_interactive_sessions_keep_tqdm_auto(monkeypatch):
    from tqdm.auto import tqdm as auto

    monkeypatch.delenv(progress.BATCH_ENV, raising=False)
    bar = progress.tqdm(total=2, file=io.StringIO())
    assert isinstance(bar, auto) and bar.mininterval != progress.BATCH_INTERVAL_S
