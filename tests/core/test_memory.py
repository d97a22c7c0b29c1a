"""The peak memory of a process started while the block runs (what the chain records for each stage's kernel)."""

from __future__ import annotations

import subprocess
import sys

from medxpert_utils.core.memory import PeakMemory


def test_peak_memory_of_a_process_started_meanwhile():
    with PeakMemory() as memory:
        subprocess.run([sys.executable, "-c", "import time\nb = b'x' * (200 * 2**20)\ntime.sleep(1)"], check=True)
    assert memory.peak_rss_mb is not None and memory.peak_rss_mb >= 200
    assert memory.peak_rss_tree_mb is not None and memory.peak_rss_tree_mb >= 200
    assert memory.peak_rss_mb == round(memory.peak_rss_mb, 1)
    with PeakMemory() as nothing:  # no process started: nothing measured
        pass
    assert nothing.peak_rss_mb is None and nothing.peak_rss_tree_mb is None
