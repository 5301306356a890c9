"""Environment variables set for the length of a block and put back after (an MLflow call's fail-fast
settings, the variables an embedded Ray's processes inherit at its start)."""
from __future__ import annotations

import contextlib
import os


@contextlib.contextmanager
def environ_set(values: dict[str, str], *, keep_existing: bool = False):
    """Set `values` in os.environ inside the block (with keep_existing, only those not set already); after it,
    every key has its value from before again (or is unset, if it was)."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update({k: v for k, v in values.items() if not (keep_existing and saved[k] is not None)})
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
