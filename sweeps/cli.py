"""The `permsym` command line: bound, trial, point, sweep, sync, results, report; the cockpit commands
(status, sweeps, sweep --dry-run) live in sweeps.cli_status and `ui` in sweeps.cli_ui."""
from __future__ import annotations

import sys

import click

from sweeps.cli_point import _parse_task_options, point_cmd


class OneLineErrors(click.Group):
    """A click group whose errors print as one line, `error: <message>`, with exit status 2 for bad usage."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.ClickException as err:
            click.echo(f"error: {err.format_message()}", err=True)
            sys.exit(err.exit_code)
        except click.exceptions.Abort:
            click.echo("error: aborted", err=True)
            sys.exit(1)
        sys.exit(rv if isinstance(rv, int) else 0)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    from tracking.runs import code_version

    try:
        v = version("permsym")
    except PackageNotFoundError:
        v = "unknown"
    return f"{v} (code {code_version()})"


def _print_version(ctx, param, value) -> None:
    if value and not ctx.resilient_parsing:
        click.echo(f"permsym {_version()}")
        ctx.exit(0)


@click.group(cls=OneLineErrors, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--version", is_flag=True, expose_value=False, is_eager=True, callback=_print_version,
              help="Print permsym's version (and the git commit it runs from) and exit.")
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

@main.command("trial")
@click.option("--task", default="toy", show_default=True, help="toy, teacher or mnist.")
@click.option("--widths", default="4", show_default=True, callback=_parse_widths,
              help="Student hidden widths, comma-separated (e.g. 4 or 5,3).")
@click.option("--activation", default="sigmoid", show_default=True,
              help="sigmoid, tanh, softplus, gelu or g.")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(min=0))
@click.option("--orders", default="1", show_default=True, help="Orders K, comma-separated (e.g. 1,2).")
@click.option("--pairs", default="all", show_default=True, help="Pairs to merge: all, nearest or random:N.")
@click.option("--bias/--no-bias", default=None, help="Biases in every layer (default: the task's).")
@click.option("--task-option", "task_options", multiple=True, callback=_parse_task_options,
              metavar="KEY=VALUE", help="A task option, e.g. n_samples=500 (repeatable).")
@click.option("--grad-tol", default=1e-10, show_default=True, type=click.FloatRange(min=0, min_open=True))
@click.option("--adam-steps", default=3000, show_default=True, type=click.IntRange(min=0))
@click.option("--max-iter", default=2000, show_default=True, type=click.IntRange(min=0))
@click.option("--time-limit", default=None, type=click.FloatRange(min=0, min_open=True),
              help="Wall-time budget of each minimisation, seconds.")
@click.option("--gamma-scan/--no-gamma-scan", default=None, help="Scan the gamma-line (default: single-output).")
@click.option("--path-relax/--no-path-relax", default=True, show_default=True,
              help="Relax the path into a minimum-energy path (nudged elastic band).")
@click.option("--save-params", is_flag=True, help="Include every point's parameters (JSON layout).")
@click.option("--json", "as_json", is_flag=True, help="Print the trial record as JSON.")
def trial_cmd(task, widths, activation, seed, orders, pairs, bias, task_options, grad_tol, adam_steps,
              max_iter, time_limit, gamma_scan, path_relax, save_params, as_json) -> None:
    """Run one trial: train, build the permutation points, measure their Hessians, count."""
    import json

    from permsym_core.config import ConfigError, TrialConfig

    try:
        order_list = tuple(int(k) for k in orders.split(","))
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers such as 1,2, got {orders!r}",
                                 param_hint="'--orders'") from None
    try:
        cfg = TrialConfig(task=task, widths=widths, activation=activation, seed=seed, bias=bias,
                          task_options=task_options, orders=order_list, pairs=pairs, grad_tol=grad_tol,
                          max_iter=max_iter, adam_steps=adam_steps, time_limit_s=time_limit,
                          gamma_scan=gamma_scan, path_relax=path_relax, save_params=save_params)
        from permsym_core.study import run_trial

        record = run_trial(cfg)
    except (ConfigError, ValueError) as err:
        raise click.UsageError(str(err)) from None
    if as_json:
        click.echo(json.dumps(record))
    else:
        from permsym_core.report_text import format_record

        click.echo(format_record(record))
    if record.get("failure"):
        click.echo(f"trial did not converge: {record['failure']}", err=True)


# --- permsym sweep / ui / sync -------------------------------------------------------------------

class SpecUsageError(click.ClickException):
    """A sweep spec that cannot run: one line, exit status 2, nothing started."""

    exit_code = 2


@main.command("sweep")
@click.argument("spec_file", metavar="SPEC.yaml", type=click.Path(dir_okay=False))
@click.option("--address", default=None, envvar="RAY_ADDRESS", show_envvar=True,
              help="Join this Ray cluster (default: start a local Ray on all cores).")
@click.option("--tracking-uri", default=None, envvar="MLFLOW_TRACKING_URI", show_envvar=True,
              help="MLflow tracking URI (default: sqlite:///<results>/mlflow.db).")
@click.option("--results", "results_dir", default="./permsym-results", show_default=True,
              type=click.Path(file_okay=False), help="Folder for the MLflow store, artifacts and Tune state.")
@click.option("--resume", is_flag=True, help="Restore the interrupted Tune experiment (trials with a FINISHED "
              "run are never run again, with or without this flag).")
@click.option("--max-concurrent", default=None, type=click.IntRange(min=1),
              help="At most this many trials at once (overrides the spec's max_concurrent).")
@click.option("--quiet", is_flag=True, help="No progress lines, only the summary.")
@click.option("--dry-run", is_flag=True, help="Print the planned trials, how many are already done and an "
              "estimated cost; start nothing, write nothing.")
def sweep_cmd(spec_file, address, tracking_uri, results_dir, resume, max_concurrent, quiet, dry_run) -> None:
    """Run the sweep SPEC.yaml: one MLflow child run per trial, skipping trials already FINISHED.
    Ctrl-C stops it (exit status 130), with no run left RUNNING."""
    import sys

    from sweeps.spec import SpecError, load_spec
    from tracking.runs import TrackingUnavailable

    try:
        spec = load_spec(spec_file)            # validated before anything starts
    except SpecError as e:
        raise SpecUsageError(str(e)) from None
    if dry_run:
        from sweeps.cli_status import dry_run as plan_text
        from tracking.store import clean_uri, results_uri

        uri = clean_uri(tracking_uri or results_uri(results_dir))
        try:
            click.echo(plan_text(spec, uri, results_dir))
        except TrackingUnavailable as e:
            raise click.ClickException(str(e)) from None
        return
    from sweeps.runner import format_summary, run_sweep
    from sweeps.summary import sync_command

    try:
        summary = run_sweep(spec, address=address, tracking_uri=tracking_uri, results_dir=results_dir,
                            resume=resume, progress=not quiet, max_concurrent=max_concurrent)
    except SpecError as e:                     # checks that need the machine, the cluster or the stored study
        raise SpecUsageError(str(e)) from None
    except TrackingUnavailable as e:
        raise click.ClickException(str(e)) from None
    except KeyboardInterrupt:
        click.echo("interrupted: runs left open were marked KILLED; relaunch to finish the missing trials",
                   err=True)
        sys.exit(130)
    if quiet:
        click.echo(format_summary(summary))
    if summary.interrupted:
        sys.exit(130)
    if summary.pending:
        click.echo(f"sweep {summary.sweep}: {summary.pending} record(s) pending in the spool; run: "
                   f"{sync_command(summary)}", err=True)
        sys.exit(3)
    if summary.failed or summary.errored:
        click.echo(f"sweep {summary.sweep}: {summary.failed} trial(s) failed, {summary.errored} errored "
                   "(see failure_reason on their runs)", err=True)
        sys.exit(1)
    sys.exit(0)


@main.command("sync")
@click.option("--results", "results_dir", default="./permsym-results", show_default=True,
              type=click.Path(file_okay=False), help="The results folder holding the spool.")
@click.option("--tracking-uri", default=None, envvar="MLFLOW_TRACKING_URI", show_envvar=True,
              help="Where to log the spooled records (default: the URI recorded with each record, else "
                   "sqlite:///<results>/mlflow.db).")
def sync_cmd(results_dir, tracking_uri) -> None:
    """Log the trial records spooled while the tracking server was unreachable (to the tracking URI each
    record was meant for, unless --tracking-uri says another)."""
    import sys

    from tracking import spool
    from tracking.runs import TrackingUnavailable
    from tracking.store import clean_uri, redact_uri, results_uri

    recorded = sorted(spool.spooled_uris(results_dir))
    if tracking_uri:
        uri = clean_uri(tracking_uri)
    elif recorded:
        uri = None                             # each record goes where its sweep was logging
    else:
        uri = results_uri(results_dir)
    try:
        n = spool.sync(results_dir, uri)
    except TrackingUnavailable as e:
        raise click.ClickException(str(e)) from None
    left = len(spool.spooled(results_dir))
    where = uri or ", ".join(redact_uri(u) for u in recorded)
    click.echo(f"logged {n} spooled record(s) to {where}; {left} left in the spool")
    if left:
        sys.exit(1)


# --- permsym results / report --------------------------------------------------------------------

def _tracking_uri_for(results: str | None, tracking_uri: str | None) -> str:
    """--tracking-uri, else $MLFLOW_TRACKING_URI (when --results is not given), else the results folder's SQLite."""
    from tracking.query import resolve_tracking_uri
    from tracking.store import clean_uri

    return clean_uri(resolve_tracking_uri(tracking_uri, results))


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
    from tracking.runs import server_guard

    try:
        with server_guard(uri):
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
    from tracking.runs import server_guard

    try:
        with server_guard(uri):
            md = write_report(out, sweep=sweep, tracking_uri=uri)
    except TrackingUnavailable as err:
        raise click.ClickException(str(err)) from None
    click.echo(f"report: {md}")


from sweeps.cli_status import status_cmd, sweeps_cmd  # noqa: E402  (commands defined apart, attached here)
from sweeps.cli_ui import UI_DEFAULT_HOST, ui_cmd, ui_server_command  # noqa: E402,F401

main.add_command(point_cmd)
main.add_command(status_cmd)
main.add_command(sweeps_cmd)
main.add_command(ui_cmd)

if __name__ == "__main__":
    main()
