"""What a sweep did (`SweepSummary`, one `TrialRow` per trial Tune reported) and its text form.

Both are dataclasses; `summary["finished"]` / `summary.get("trials")` also work (read access by name) for
scripts written against the earlier dict.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields


class _ByName:
    def __getitem__(self, name: str):
        try:
            return getattr(self, name)
        except AttributeError:
            raise KeyError(name) from None

    def __setitem__(self, name: str, value) -> None:
        setattr(self, name, value)

    def get(self, name: str, default=None):
        return getattr(self, name, default)

    def __contains__(self, name: str) -> bool:
        return hasattr(self, name)

    def to_dict(self) -> dict:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        if "trials" in out:
            out["trials"] = [t.to_dict() for t in out["trials"]]
        return out


@dataclass
class TrialRow(_ByName):
    trial_key: str | None = None
    label: str | None = None
    status: str | None = None                # finished, spooled, failed, skipped, elsewhere
    wall_s: float | None = None
    min_loss: float | None = None
    n_points: float | None = None
    n_saddle: float | None = None
    n_first_order: float | None = None
    frac_first_order: float | None = None
    failure: str | None = None
    node_id: str | None = None

    @classmethod
    def from_result(cls, m: dict) -> "TrialRow":
        return cls(**{f.name: m.get(f.name) for f in fields(cls)})


@dataclass
class SweepSummary(_ByName):
    sweep: str
    experiment: str
    experiment_id: str
    parent_run_id: str
    tracking_uri: str
    results_dir: str
    search: str
    planned: int = 0
    already_finished: int = 0
    ran: int = 0
    finished: int = 0
    failed: int = 0
    errored: int = 0
    skipped: int = 0
    elsewhere: int = 0                       # keys held by another live driver's run (not run here)
    spooled: int = 0
    synced: int = 0                          # spooled records logged by the driver once the server was back
    pending: int = 0                         # spooled records still waiting for the server
    pending_keys: list[str] = field(default_factory=list)
    missing: int = 0
    interrupted: bool = False
    wall_s: float = 0.0
    trials: list[TrialRow] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.interrupted or self.failed or self.errored)


def ui_command(summary: SweepSummary) -> str:
    uri = summary.tracking_uri
    if uri.startswith(("http://", "https://")):
        return f"open {uri} in a browser"
    return f"permsym ui --results {summary.results_dir}"


def sync_command(summary: SweepSummary) -> str:
    """The exact command that logs the sweep's spooled records."""
    import shlex

    return (f"permsym sync --results {shlex.quote(summary.results_dir)} "
            f"--tracking-uri {shlex.quote(summary.tracking_uri)}")


def _n(x) -> str:
    return f"{int(x)}" if isinstance(x, (int, float)) and math.isfinite(x) else "-"


def format_summary(summary: SweepSummary) -> str:
    lines = []
    trials = summary.trials
    if trials:
        lines.append(f"{'key':16}  {'trial':36} {'status':9} {'time s':>7} {'loss':>10} {'points':>6} "
                     f"{'saddles':>7} {'1st-ord':>7}")
        for t in sorted(trials, key=lambda t: t.label or ""):
            loss = t.min_loss
            loss_s = f"{loss:10.3g}" if isinstance(loss, float) and math.isfinite(loss) else f"{'-':>10}"
            lines.append(f"{(t.trial_key or '')[:16]:16}  {(t.label or '')[:36]:36} "
                         f"{t.status or '':9} {t.wall_s or 0:7.1f} {loss_s} {_n(t.n_points):>6} "
                         f"{_n(t.n_saddle):>7} {_n(t.n_first_order):>7}")
            if t.failure:
                lines.append(f"{'':18}{t.failure[:100]}")
    times = [t.wall_s for t in trials if t.status == "finished" and t.wall_s]
    per = f"; {sum(times) / len(times):.1f} s per trial" if times else ""
    lines.append(
        f"sweep {summary.sweep}: {summary.planned} planned, {summary.already_finished} already finished, "
        f"{summary.finished} finished now, {summary.failed} failed, {summary.errored} errored"
        + (f", {summary.elsewhere} held by another driver" if summary.elsewhere else "")
        + (f", {summary.spooled} spooled" if summary.spooled else "")
        + (f" ({summary.synced} logged since)" if summary.synced else "")
        + (f", {summary.missing} still missing" if summary.missing else "")
        + f"; {summary.wall_s:.1f} s{per}")
    if summary.pending:
        lines.append(f"{summary.pending} record(s) pending in {summary.results_dir}/spool (the tracking server "
                     f"was unreachable); once it is back: {sync_command(summary)}")
    if summary.interrupted:
        lines.append("interrupted: relaunch with --resume to finish the missing trials")
    lines.append(f"browse the runs: {ui_command(summary)}")
    return "\n".join(lines)
