"""The driver's figure writer: draws each FINISHED trial's figures beside the sweep, not inside the trial.

Drawing a trial's PNGs took 0.5-0.8 s against 0.07 s for logging the rest of its record (measured on toy
width-2 trials, SQLite store), i.e. most of what a short trial paid after run_trial. Trials now log their
record without figures and report their run id; the driver hands each id to one child process (spawned:
the driver runs Ray's threads, so it is not forked), which runs at a lower CPU priority (nice +10), reads the
record back from the store and adds `figures/*.png` to the run (`tracking.figures.log_figures`). Trials keep
the cores; the figures are drawn in their gaps. The sweep waits for the figures still queued before it
returns, so every FINISHED run of a completed sweep shows its figures in the UI. A run whose figures could
not be drawn (the driver interrupted, a figure error) keeps its record and metrics; `permsym report` draws
from the records, not from these PNGs.
"""
from __future__ import annotations

import contextlib
import multiprocessing
import os
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from .isolation import _without_main_module

NICE = 10


def _lower_priority() -> None:
    """The child's initializer: a lower CPU priority, and Ctrl-C left to the driver (the terminal signals the
    whole process group; the driver ends this process itself, without a KeyboardInterrupt traceback here)."""
    import signal

    with contextlib.suppress(OSError, AttributeError):
        os.nice(NICE)
    with contextlib.suppress(ValueError, OSError):
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def _draw(tracking_uri: str, run_id: str) -> int:
    from tracking.figures import log_figures

    return log_figures(tracking_uri, run_id)


class FigureWriter:
    """`submit(outcome)` for every trial outcome the driver sees; `close()` waits for what is queued."""

    def __init__(self, tracking_uri: str):
        self.tracking_uri = tracking_uri
        self._pool: ProcessPoolExecutor | None = None
        self._futures: list[Future] = []
        self.drawn = self.failed = 0

    def submit(self, outcome: dict) -> None:
        run_id = outcome.get("run_id")
        if outcome.get("status") != "finished" or not run_id:
            return
        for _ in range(2):                        # a child that died (OOM, a segfault) breaks the pool: a new one
            if self._pool is None:
                self._pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"),
                                                 initializer=_lower_priority)
            try:
                with _without_main_module():      # the child needs nothing from the driver's __main__
                    self._futures.append(self._pool.submit(_draw, self.tracking_uri, str(run_id)))
                return
            except BrokenProcessPool:
                with contextlib.suppress(Exception):
                    self._pool.shutdown(wait=False, cancel_futures=True)
                self._pool = None
        self.failed += 1

    @property
    def queued(self) -> int:
        return sum(not f.done() for f in self._futures)

    def close(self, wait: bool = True) -> None:
        """Wait for the queued figures (or, `wait=False`, drop those not started) and end the process."""
        if self._pool is None:
            return
        self._pool.shutdown(wait=wait, cancel_futures=not wait)
        for f in self._futures:
            if not f.done() or f.cancelled():
                continue
            if f.exception() is None:
                self.drawn += 1
            else:
                self.failed += 1
        self._pool, self._futures = None, []
