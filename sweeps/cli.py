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


if __name__ == "__main__":
    main()
