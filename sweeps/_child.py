"""The body of a trial's child process. Kept free of heavy imports (no Ray, no pydantic): the forkserver
preloads this module with torch and permsym_core.study, so a trial's process starts in milliseconds."""
from __future__ import annotations

import contextlib
import signal
import sys
import traceback


def die_with_parent() -> None:
    if sys.platform.startswith("linux"):
        with contextlib.suppress(Exception):
            import ctypes

            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def child_main(conn, options: dict, threads: int) -> None:
    die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)       # the driver's Ctrl-C is for the driver
    conn.send(("started",))                             # the time limit counts from here
    try:
        import torch

        torch.set_num_threads(max(1, threads))
        from permsym_core.study import run_trial

        def on_phase(phase, k, n):                        # relayed to the worker, which tags the run
            with contextlib.suppress(Exception):
                conn.send(("phase", phase, k, n))

        msg = ("ok", run_trial(options, on_phase=on_phase))
    except BaseException as e:  # noqa: BLE001 - everything goes back to the parent as a recorded failure
        msg = ("error", f"{type(e).__name__}: {e}", traceback.format_exc())
    try:
        conn.send(msg)
    finally:
        conn.close()
