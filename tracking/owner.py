"""Who owns a RUNNING trial run, and when its owner is provably gone.

A run's owner is one launch of a sweep's driver: tag `permsym.owner` = `host:pid:driver_id` (driver_id random
per launch), with a heartbeat tag `permsym.heartbeat` (unix seconds) that the trial refreshes while it runs.
"""
from __future__ import annotations

import contextlib
import os
import socket
import time
import uuid
from dataclasses import dataclass

OWNER_TAG = "permsym.owner"
HEARTBEAT_TAG = "permsym.heartbeat"
HEARTBEAT_S = 30.0               # a running trial refreshes its heartbeat this often
DEFAULT_STALE_S = 300.0          # ... and counts as abandoned when it is older than this (PERMSYM_STALE_S)


def stale_s() -> float:
    with contextlib.suppress(ValueError):
        return float(os.environ.get("PERMSYM_STALE_S", DEFAULT_STALE_S))
    return DEFAULT_STALE_S


def pid_alive(pid: int) -> bool:
    """Whether a process of this id exists on this host."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass(frozen=True)
class Owner:
    """Who owns a run: a sweep's driver, one launch of it (`driver_id` is random per launch)."""

    host: str
    pid: int
    driver_id: str

    @classmethod
    def this_process(cls) -> "Owner":
        return cls(socket.gethostname(), os.getpid(), uuid.uuid4().hex[:12])

    def tag(self) -> str:
        return f"{self.host}:{self.pid}:{self.driver_id}"

    @classmethod
    def parse(cls, text: str) -> "Owner | None":
        host, _, rest = str(text).rpartition(":")
        host, _, pid = host.rpartition(":")
        try:
            return cls(host, int(pid), rest) if host and rest else None
        except ValueError:
            return None


_NODE_ALIVE = None       # set by the sweep layer (sweeps.trainable): node_id -> False when that node is gone


def set_node_liveness(fn) -> None:
    """Let `owner_alive` ask the cluster whether a run's Ray node still exists (fn(node_id) -> bool)."""
    global _NODE_ALIVE
    _NODE_ALIVE = fn


def owner_alive(tags: dict, me: Owner | None = None, now: float | None = None, *, mine_gone: bool = False) -> bool:
    """Whether the owner of a RUNNING run (its tags) may still be running it, as seen by `me`.

    A run of `me`'s own driver launch is not dead for that alone: one driver runs several trials of one key at
    once (a grid over an option outside the trial key, e.g. `device`). It is dead when it is this very worker
    process's run (an earlier attempt this worker replaces: one trial runs per worker at a time), when its
    worker pid is gone, when its Ray node is gone (`set_node_liveness`), or by the usual rules;
    `mine_gone=True` (the driver is ending) counts all of `me`'s runs as gone."""
    owner = Owner.parse(tags.get(OWNER_TAG, ""))
    if owner is None:
        return False                                  # logged outside a sweep: nobody runs it
    here = socket.gethostname()
    if me is not None and owner.driver_id == me.driver_id:
        if mine_gone:
            return False                              # my driver is ending: nobody runs my runs any more
        if tags.get("hostname") == here and str(tags.get("worker_pid", "")) == str(os.getpid()):
            return False                              # this very worker's earlier attempt of the key
    now = time.time() if now is None else now
    try:
        beat = float(tags.get(HEARTBEAT_TAG) or 0)
    except ValueError:
        beat = 0.0
    if now - beat > stale_s():
        return False
    if owner.host == here and not pid_alive(owner.pid):
        return False
    wpid = tags.get("worker_pid")
    if tags.get("hostname") == here and wpid and wpid.isdigit() and not pid_alive(int(wpid)):
        return False
    node = tags.get("node_id")
    if node and _NODE_ALIVE is not None:
        try:
            if _NODE_ALIVE(node) is False:        # its Ray node was removed: whatever still runs there is lost
                return False
        except Exception:                         # noqa: BLE001 - no answer from the cluster: no verdict
            pass
    return True


class RunClosed(RuntimeError):
    """The run is no longer its owner's to end: KILLED, FAILED, or its key FINISHED by another run."""
