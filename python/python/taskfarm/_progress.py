"""A progress bar for futures: ``taskfarm.progress(futures)``."""

from __future__ import annotations

import sys
import threading
from typing import Iterable

from ._client import Future


def progress(futures: Iterable[Future] | Future, *, notebook: bool | None = None, file=None) -> None:
    """Show a progress bar until every future is done (tqdm's, in a terminal
    or in Jupyter, when tqdm is installed; else a line on stderr that updates
    in place). Returns when all are done; does not raise their errors."""
    fs = [futures] if isinstance(futures, Future) else list(futures)
    total = len(fs)
    done = threading.Semaphore(0)
    for f in fs:
        f.add_done_callback(lambda _f: done.release())
    bar = None
    try:
        if notebook:
            from tqdm.notebook import tqdm
        else:
            from tqdm.auto import tqdm
        bar = tqdm(total=total, file=file, unit="task")
    except ImportError:
        pass
    out = file or sys.stderr
    for i in range(1, total + 1):
        done.acquire()
        if bar is not None:
            bar.update(1)
        elif i == total or i % max(1, total // 100) == 0:
            out.write(f"\r[{'#' * (40 * i // total):<40}] {i}/{total}")
            out.flush()
    if bar is not None:
        bar.close()
    elif total:
        out.write("\n")
