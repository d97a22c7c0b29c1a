"""Progress bars that read well where they end up: widgets in an interactive notebook, text in batch runs.

In JupyterLab ``tqdm.auto`` draws a widget, but a notebook executed by the chain or a sweep keeps
only the widget's first text form ("0%|...") -- its state is not saved -- so a reader of the
executed notebook never sees how far a stage got or how fast. The chain starts its kernels with
``MEDXPERT_BATCH=1`` (see :func:`medxpert_utils.pipeline.kernel_manager_class`); there
:func:`tqdm` is a plain text bar on stdout that redraws at most every ``BATCH_INTERVAL_S`` seconds
and leaves its final line (count, elapsed time, rate and postfix) in the saved output.
"""

from __future__ import annotations

import os
import sys
from typing import Any

BATCH_ENV = "MEDXPERT_BATCH"
BATCH_INTERVAL_S = 10.0


def batch_mode() -> bool:
    """True in a kernel started by the chain or a sweep (``MEDXPERT_BATCH=1``)."""
    return os.environ.get(BATCH_ENV) == "1"


def tqdm(*args: Any, **kwargs: Any) -> Any:
    """``tqdm.auto.tqdm`` interactively; a text bar for saved notebooks in batch runs (same arguments)."""
    if batch_mode():
        from tqdm.std import tqdm as text_bar

        kwargs.setdefault("mininterval", BATCH_INTERVAL_S)
        kwargs.setdefault("file", sys.stdout)
        kwargs["leave"] = True  # the final line is the record
        if kwargs.pop("dynamic_ncols", False) or "ncols" not in kwargs:
            kwargs["ncols"] = 100  # no terminal to size the bar from
        return text_bar(*args, **kwargs)
    from tqdm.auto import tqdm as auto_bar

    return auto_bar(*args, **kwargs)
