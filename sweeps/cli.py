"""The `permsym` command line: bound, trial, sweep, ui, results, report, sync."""
from __future__ import annotations

import click


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Study the permutation points of trained MLPs (Brea, Simsek, Illing and Gerstner 2019)."""


# --- permsym bound -------------------------------------------------------------------------------

def _parse_widths(ctx, param, value: str) -> tuple[int, ...]:
    try:
        widths = tuple(int(part) for part in value.split(","))
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers such as 6,4, got {value!r}") from None
    if any(n < 1 for n in widths):
        raise click.BadParameter(f"expected hidden widths >= 1, got {value!r}")
    return widths


@main.command("bound")
@click.option("--widths", required=True, callback=_parse_widths,
              help="Hidden-layer widths n_1,..,n_{d-1}, comma-separated (e.g. 6,4).")
@click.option("--order", default=1, show_default=True, type=click.IntRange(min=1),
              help="Order K of the permutation points (K neurons duplicated at once).")
@click.option("--json", "as_json", is_flag=True, help="Print the numbers as JSON.")
def bound_cmd(widths: tuple[int, ...], order: int, as_json: bool) -> None:
    """Lower bound on the number of K-th order permutation points, per layer and in total."""
    import json

    from permsym_core.theory import bound

    b = bound(widths, order)
    if as_json:
        click.echo(json.dumps(b, indent=2))
        return

    def fmt_log(x):
        return "-inf" if x is None else f"{x:.4f}"

    def fmt_int(x):
        return "-" if x is None else str(x)

    click.echo(f"hidden widths {','.join(map(str, b['widths']))}, order K = {b['order']}")
    click.echo(f"{'':8} {'width':>6} {'log10 bound':>12} {'log10 mult.':>12}  exact count")
    for lay in b["layers"]:
        click.echo(f"layer {lay['layer']:<2} {lay['width']:>6} {fmt_log(lay['log10_bound']):>12} "
                   f"{lay['log10_point_multiplicity']:>12.4f}  {fmt_int(lay['bound'])}")
    click.echo(f"{'total':8} {'':>6} {fmt_log(b['log10_bound']):>12} {'':>12}  {fmt_int(b['bound'])}")
    click.echo(f"{'minima':8} {'':>6} {b['log10_minima']:>12.4f} {'':>12}  {fmt_int(b['minima'])}")


# --- permsym trial -------------------------------------------------------------------------------

# --- permsym sweep / ui / sync -------------------------------------------------------------------

# --- permsym results / report --------------------------------------------------------------------

def _tracking_uri_for(results: str | None, tracking_uri: str | None) -> str:
    """--tracking-uri, else $MLFLOW_TRACKING_URI (when --results is not given), else the results folder's SQLite."""
    from tracking.query import resolve_tracking_uri

    return resolve_tracking_uri(tracking_uri, results)


def _results_options(f):
    f = click.option("--sweep", default=None, help="Only this sweep (default: every sweep in the store).")(f)
    f = click.option("--tracking-uri", default=None,
                     help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else the results folder).")(f)
    f = click.option("--results", default=None, type=click.Path(file_okay=False),
                     help="Results folder of the SQLite store (default: ./permsym-results).")(f)
    return f


def _check_store(uri: str) -> None:
    from tracking.store import sqlite_path

    db = sqlite_path(uri)
    if db is not None and not db.exists():
        raise click.UsageError(f"no results store at {db} (run a sweep first, or pass --results / --tracking-uri)")


@main.command("results")
@_results_options
@click.option("--by", default="task,activation,widths", show_default=True,
              help="Comma-separated run columns to group by (task, activation, widths, depth, seed, orders, ...).")
@click.option("--format", "fmt", default="table", show_default=True, type=click.Choice(["table", "csv", "json"]))
def results_cmd(results, tracking_uri, sweep, by, fmt) -> None:
    """Print the summary: empirical permutation-point counts against the lower bound."""
    import json

    import pandas as pd

    from tracking import query
    from tracking.runs import TrackingUnavailable

    uri = _tracking_uri_for(results, tracking_uri)
    _check_store(uri)
    by_cols = tuple(c.strip() for c in by.split(",") if c.strip())
    if not by_cols:
        raise click.BadParameter("expected at least one column name", param_hint="'--by'")
    try:
        summ = query.summary(sweep, tracking_uri=uri, by=by_cols)
    except ValueError as err:
        raise click.BadParameter(str(err), param_hint="'--by'") from None
    except TrackingUnavailable as err:
        raise click.ClickException(str(err)) from None
    if fmt == "json":
        click.echo(json.dumps(query.to_jsonable(summ)))
    elif fmt == "csv":
        click.echo(summ.to_csv(index=False), nl=False)
    elif summ.empty:
        click.echo("no converged trials found" + (f" for sweep {sweep!r}" if sweep else ""))
    else:
        cols = [*by_cols, "layer", "order", "n_seeds", "log10_minima", "log10_bound", "log10_critical",
                "log10_saddle", "log10_first_order", "log10_ratio_saddle", "frac_first_order", "frac_claim_zero",
                "fa_agreement"]
        with pd.option_context("display.width", 250, "display.max_columns", 50):
            click.echo(summ[[c for c in cols if c in summ.columns]].to_string(index=False, float_format="%.3g"))
        click.echo("log10 counts: multiplicity-scaled, mean over seeds in linear space; "
                   "ratio = log10(count) - log10(bound)")


@main.command("report")
@_results_options
@click.option("--out", default=None, type=click.Path(file_okay=False),
              help="Folder for report.md and its figures (default: <results>/report[-<sweep>]).")
def report_cmd(results, tracking_uri, sweep, out) -> None:
    """Write a Markdown report with figures, and log it to the sweep's parent run."""
    from pathlib import Path

    from tracking.report import write_report
    from tracking.runs import TrackingUnavailable
    from tracking.store import default_results_dir

    uri = _tracking_uri_for(results, tracking_uri)
    _check_store(uri)
    if out is None:
        base = Path(results).resolve() if results else default_results_dir()
        out = base / ("report" + (f"-{sweep}" if sweep else ""))
    try:
        md = write_report(out, sweep=sweep, tracking_uri=uri)
    except TrackingUnavailable as err:
        raise click.ClickException(str(err)) from None
    click.echo(f"report: {md}")


if __name__ == "__main__":
    main()
