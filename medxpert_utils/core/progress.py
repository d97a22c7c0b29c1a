"""Progress bars that read well where they end up: widgets in an interactive notebook, text in batch runs.

In JupyterLab ``tqdm.auto`` draws a widget, but a notebook executed by the chain or a sweep keeps
only the widget's first text form ("0%|...") -- its state is not saved -- so a reader of the
executed notebook never sees how far a stage got or how fast. The chain starts its kernels with
``MEDXPERT_BATCH=1`` (see :func:`medxpert_utils.app.pipeline.kernel_manager_class`); there
:func:`tqdm` is a plain text bar on stdout that prints at most every ``BATCH_INTERVAL_S`` seconds
(never its empty start; postfix changes wait for the next print) and always its final line --
count, elapsed time, rate and postfix -- so a notebook keeps one line per short bar.
"""

from __future__ import annotations

import functools
import os
import sys
from typing import Any

BATCH_ENV = "MEDXPERT_BATCH"
BATCH_INTERVAL_S = 10.0


def batch_mode() -> bool:
    """True in a kernel started by the chain or a sweep (``MEDXPERT_BATCH=1``)."""
    return os.environ.get(BATCH_ENV) == "1"


@functools.cache
def _batch_bar_class() -> type:
    from tqdm.std import tqdm as text_bar

    class BatchBar(text_bar):
        """Text bar for saved output: quiet for ``delay`` seconds, then every ``mininterval``; final line always."""

        def set_postfix(self, ordered_dict: Any = None, refresh: bool = False, **kwargs: Any) -> None:
            super().set_postfix(ordered_dict, refresh=False, **kwargs)  # shown with the next timed print

        def set_description(self, desc: str | None = None, refresh: bool = False) -> None:
            super().set_description(desc, refresh=False)

        def close(self) -> None:
            if not self.disable and hasattr(self, "last_print_t"):
                # tqdm skips the final line of a bar that ended within its delay; it is the one we want
                last: float = getattr(self, "last_print_t")  # noqa: B009 (set by tqdm while it prints)
                self.last_print_t = max(last, self.start_t + self.delay)
            super().close()

    return BatchBar


def tqdm(*args: Any, **kwargs: Any) -> Any:
    """``tqdm.auto.tqdm`` interactively; a text bar for saved notebooks in batch runs (same arguments)."""
    if batch_mode():
        kwargs["mininterval"] = max(kwargs.get("mininterval", 0.0), BATCH_INTERVAL_S)  # a terminal's pace is too chatty
        kwargs.setdefault("delay", BATCH_INTERVAL_S)
        kwargs.setdefault("file", sys.stdout)
        kwargs["leave"] = True  # the final line is the record
        if kwargs.pop("dynamic_ncols", False) or "ncols" not in kwargs:
            kwargs["ncols"] = 100  # no terminal to size the bar from
        return _batch_bar_class()(*args, **kwargs)
    from tqdm.auto import tqdm as auto_bar

    return auto_bar(*args, **kwargs)
