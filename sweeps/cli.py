"""The `permsym` command line: bound, trial, sweep, ui, results, report, sync."""
from __future__ import annotations

import click


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Study the permutation points of trained MLPs (Brea, Simsek, Illing and Gerstner 2019)."""


# --- permsym bound -------------------------------------------------------------------------------

# --- permsym trial -------------------------------------------------------------------------------

# --- permsym sweep / ui / sync -------------------------------------------------------------------

# --- permsym results / report --------------------------------------------------------------------


if __name__ == "__main__":
    main()
