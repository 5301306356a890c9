"""Run one trial (`permsym_core.study.run_trial`) in a child process with a deadline.

The child forks from a forkserver that has torch and permsym_core preloaded; its phases come back over a
pipe; a child that dies without an answer raises TrialCrashed (Tune retries the trial).
"""
from __future__ import annotations

import contextlib
import multiprocessing
import os
import threading
import time

from ._child import child_main


class TrialCrashed(RuntimeError):
    """The trial's process died without a result (killed, out of memory, segfault): Tune retries it."""


_MP = None
_MP_LOCK = threading.Lock()


def _mp_context():
    """A forkserver context that has torch and permsym_core preloaded: each trial forks from a clean,
    single-threaded server (cheap, and safe inside a multi-threaded Ray worker).

    torch._dynamo is not preloaded (it cost every worker's first trial 1.0 s): a trial with dense Hessians
    never imports it (measured on the toy trial); one past the dense limit does, through torch.func's
    Hessian-vector products, and pays that second itself against its minutes of work.
    The server is started with OMP_WAIT_POLICY=PASSIVE unless set (permsym_core's default, which must be in
    the environment before torch is imported, and the server imports torch first)."""
    global _MP
    with _MP_LOCK:
        if _MP is None:
            os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
            ctx = multiprocessing.get_context("forkserver")
            ctx.set_forkserver_preload(["torch", "permsym_core.study", "permsym_core.hessian", "sweeps._child"])
            _MP = ctx
        return _MP


def warm() -> None:
    """Start the forkserver now, without waiting for it: its preload (torch, permsym_core; ~2 s) then runs while
    the worker claims its first trial in the store, instead of after. The first trial's fork waits for the
    preload to finish (the server accepts only then)."""
    from multiprocessing import forkserver

    _mp_context()
    with _without_main_module():
        forkserver.ensure_running()


@contextlib.contextmanager
def _without_main_module():
    """Children need nothing from __main__ (in a Ray worker it is Ray's worker script); do not re-import it."""
    import multiprocessing.spawn as mps

    orig = mps.get_preparation_data

    def prep(name):
        d = orig(name)
        d.pop("init_main_from_path", None)
        d.pop("init_main_from_name", None)
        return d

    mps.get_preparation_data = prep
    try:
        yield
    finally:
        mps.get_preparation_data = orig


def run_isolated(options: dict, threads: int = 1, time_limit_s: float | None = None, on_start=None,
                 on_phase=None) -> tuple:
    """Run `run_trial(options)` in a child process. Returns ("ok", record), ("error", reason, traceback) or
    ("time_limit", reason). Raises TrialCrashed if the child died without an answer. `on_start(pid)` is
    called with the child's process id once it is started, `on_phase(phase, k, n)` as the trial reports its
    phases (run_trial's on_phase, relayed through the pipe)."""
    ctx = _mp_context()
    r, w = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=child_main, args=(w, options, threads), daemon=True, name="permsym-trial")
    with _without_main_module():
        proc.start()
    w.close()
    if on_start is not None:
        with contextlib.suppress(Exception):
            on_start(proc.pid)
    msg = None
    try:
        # the forkserver's first start (torch import) does not count against the trial's limit
        started = r.poll(300)
        if started:
            try:
                r.recv()
            except EOFError:
                started = False
        deadline = None if time_limit_s is None else time.monotonic() + time_limit_s
        while started:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not r.poll(left):
                msg = ("time_limit", f"time_limit: trial exceeded trial_time_limit_s={time_limit_s:g}")
                break
            try:
                got = r.recv()
            except EOFError:
                break
            if got[0] == "phase":
                if on_phase is not None:
                    with contextlib.suppress(Exception):
                        on_phase(*got[1:])
                continue
            msg = got
            break
    finally:
        if msg is not None and msg[0] != "time_limit":
            proc.join(timeout=10)
        if proc.is_alive():
            proc.kill()
        proc.join(timeout=30)
        r.close()
    if msg is None:
        code = proc.exitcode
        how = f"signal {-code}" if code is not None and code < 0 else f"exit code {code}"
        raise TrialCrashed(f"trial process died without a result ({how})")
    return msg
