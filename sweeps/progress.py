"""Progress lines on the driver: a Tune callback that prints trials started, done, failed, and the phases
of the running trials (read from their `phase` tags in the store)."""
from __future__ import annotations

import contextlib
import json
import math
import sys
import time
from typing import Any

from ray import tune

from tracking.sweepstore import SweepStore

_STREAMS: dict[int, Any] = {}     # progress streams by id: Tune pickles its callbacks with the run config
_HOOKS: dict[int, Any] = {}       # outcome hooks by id (the driver's figure writer), for the same reason


class Progress(tune.Callback):
    """Progress lines on the driver: trials done, failed, running, time per trial. Defined at module level so
    that Tune pickles it by reference (its stream stays in _STREAMS, never pickled)."""

    POLL_S = 5.0         # how often the driver reads the running trials' `phase` tags from the store
    REPEAT_S = 30.0      # a trial still in the same phase is shown again after this long

    def __init__(self, total: int, enabled: bool, stream_id: int = 0, watch: SweepStore | None = None):
        self.total, self.enabled, self.stream_id = total, enabled, stream_id
        self.watch = watch                   # the sweep's store: where the running trials' phases are read
        self._polled, self._shown = 0.0, {}
        self.t0 = time.time()
        self.running, self.done, self.failed, self.errored, self.skipped = 0, 0, 0, 0, 0
        self.outcomes: dict[tuple, dict] = {}      # (Tune trial id, trial key) -> its reported outcome
        self.hook_id = 0                            # _HOOKS[hook_id](outcome) for every outcome (figures)
        self.times: list[float] = []
        self.before: frozenset[str] = frozenset()   # keys FINISHED before this launch (not among `total`)

    def _line(self, msg: str) -> None:
        if self.enabled:
            el = time.time() - self.t0
            mean = f", {sum(self.times) / len(self.times):.1f} s/trial" if self.times else ""
            out = _STREAMS.get(self.stream_id) or sys.stdout
            print(f"[{el:7.1f}s] {self.done + self.failed + self.skipped}/{self.total} done "
                  f"({self.failed} failed, {self.running} running{mean}) {msg}", file=out, flush=True)

    def on_step_end(self, iteration, trials, **info):
        """Every POLL_S: one line per running trial whose phase changed (or every REPEAT_S)."""
        now = time.monotonic()
        if not (self.enabled and self.watch) or now - self._polled < self.POLL_S:
            return
        self._polled = now
        try:
            found = self.watch.running()
        except Exception:
            return
        for r in found:
            phase = r.data.tags.get("phase")
            if not phase:
                continue
            name = phase.rsplit(" ", 1)[0] if phase[-1].isdigit() else phase
            seen = self._shown.get(r.info.run_id)
            if seen is None or seen[0] != name or now - seen[1] >= self.REPEAT_S:
                self._shown[r.info.run_id] = (name, now)
                self._line(f"{(r.data.tags.get('trial_key') or '')[:8]} {r.info.run_name}: {phase}")

    def on_trial_start(self, iteration, trials, trial, **info):
        self.running += 1
        self._line(f"start {_trial_label(trial)}")

    def on_trial_result(self, iteration, trials, trial, result, **info):
        """Every report is one permsym trial's outcome (a Tune trial may carry a chunk of them)."""
        res = dict(result)
        slot = (trial.trial_id, res.get("trial_key") or "")
        before = self.outcomes.get(slot, {}).get("status")
        if before in ("finished", "spooled", "failed") and res.get("status") == "skipped":
            return                  # a retried chunk passing over a trial it had already finished
        self.outcomes[slot] = res
        if res.get("status") == "skipped" and slot[1] in self.before:
            return                  # a restored chunk passing over a key finished before this launch
        hook = _HOOKS.get(self.hook_id)
        if hook is not None:
            with contextlib.suppress(Exception):
                hook(res)
        status = res.get("status", "?")
        if status == "failed":
            self.failed += 1
            what = f"FAILED ({res.get('failure', '')})"
        elif status == "skipped":
            self.skipped += 1
            what = "already finished, skipped"
        elif status == "elsewhere":
            self.skipped += 1
            what = "held by another driver's run, skipped"
        else:
            self.done += 1
            self.times.append(float(res.get("wall_s", 0.0)))
            loss = res.get("min_loss")
            what = (f"{status} in {res.get('wall_s', 0):.1f} s: loss {loss:.3g}, {int(res.get('n_points', 0))} "
                    f"points, {int(res.get('n_first_order', 0))} first-order"
                    if isinstance(loss, float) and math.isfinite(loss) else
                    f"{status} in {res.get('wall_s', 0):.1f} s: {res.get('failure') or 'not converged'}")
        self._line(f"{_result_label(res, trial)} {what}")

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.running = max(0, self.running - 1)

    def on_trial_error(self, iteration, trials, trial, **info):
        self.running = max(0, self.running - 1)
        self.errored += 1
        self._line(f"{_trial_label(trial)} ERROR after retries (see the Ray logs)")

    def on_trial_recover(self, iteration, trials, trial, **info):
        self.running = max(0, self.running - 1)
        self._line(f"{_trial_label(trial)} crashed, retrying")


def make_progress(total: int, enabled: bool, stream=None, watch: SweepStore | None = None,
                  on_outcome=None, before: frozenset[str] = frozenset()) -> Progress:
    """The driver's progress callback; `on_outcome(result)` is called with every trial's reported outcome;
    `before`: the keys FINISHED before this launch (a restored chunk's re-reports of them are not counted)."""
    stream_id = id(stream) if stream is not None else 0
    if stream is not None:
        _STREAMS[stream_id] = stream
    cb = Progress(total, enabled, stream_id, watch)
    cb.before = frozenset(before)
    if on_outcome is not None:
        cb.hook_id = id(on_outcome)
        _HOOKS[cb.hook_id] = on_outcome
    return cb


def _result_label(res: dict, trial) -> str:
    key = res.get("trial_key") or ""
    return f"{key[:8]} {res['label']}" if res.get("label") else _trial_label(trial)


def _trial_label(trial) -> str:
    cfg = trial.config or {}
    if "trials" in cfg:
        first, n = cfg["trials"][0], len(cfg["trials"])
        c = first["config"]
        more = f" (+{n - 1} more)" if n > 1 else ""
        return f"{first['key'][:8]} widths={c['widths']} {c['activation']} seed={c['seed']}{more}"
    if "trial" in cfg:
        c = cfg["trial"]["config"]
        return f"{cfg['trial']['key'][:8]} widths={c['widths']} {c['activation']} seed={c['seed']}"
    return f"{trial.trial_id} {json.dumps({k: v for k, v in cfg.items()})}"
