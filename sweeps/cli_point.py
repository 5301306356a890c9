"""`permsym point`: re-check a saved point (loss, |grad|_inf, index, flat directions, tau, gap); also the
KEY=VALUE task-option parser that `trial` shares. Attached to the `permsym` group by sweeps.cli."""
from __future__ import annotations

import click


def _parse_task_options(ctx, param, values) -> dict:
    import yaml

    out = {}
    for item in values:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"expected KEY=VALUE, got {item!r}")
        out[key] = yaml.safe_load(raw)
    return out


def _load_point(path: str, activation: str | None):
    """A saved point (the `params` layout of `permsym trial --save-params --json`, or a point/minimum object
    holding it under "params"): (MLPSpec, theta). Errors: one line naming the file and the field."""
    import json
    import math

    from permsym_core.mlp import params_from_json

    def bad(msg: str):
        return click.UsageError(f"{path}: {msg}")

    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise bad(f"cannot read the file ({getattr(e, 'strerror', None) or type(e).__name__})") from None
    try:
        obj = json.loads(text, parse_constant=lambda c: math.nan)
    except json.JSONDecodeError as e:
        raise bad(f"expected a JSON object, not valid JSON ({e.msg} at line {e.lineno} column {e.colno})"
                  ) from None
    if isinstance(obj, dict) and "layers" not in obj and isinstance(obj.get("params"), dict):
        obj = obj["params"]
    if isinstance(obj, dict):
        for field in ("activation", "output"):
            if field in obj and not isinstance(obj[field], str):
                raise bad(f"{field}: expected a string, got {obj[field]!r}"[:300])
    try:
        spec, theta = params_from_json(obj, activation=activation)
    except ValueError as e:
        raise bad(" ".join(str(e).split())[:300]) from None
    return spec, theta


def _check_point(path: str, spec, task) -> None:
    """The point's input, output width and output kind against the task's (one line naming the field)."""
    def bad(msg: str):
        return click.UsageError(f"{path}: {msg}")

    if spec.widths[0] != task.n_in:
        raise bad(f"layers[0].W: expected {task.n_in} columns (the input width of task {task.name!r}), "
                  f"got {spec.widths[0]}")
    if spec.widths[-1] != task.n_out:
        raise bad(f"layers[{spec.depth - 1}].W: expected {task.n_out} rows (the output width of task "
                  f"{task.name!r}), got {spec.widths[-1]}")
    if spec.output != task.output:
        raise bad(f"output: expected {task.output!r} (task {task.name!r}), got {spec.output!r}")


@click.command("point")
@click.argument("params_file", metavar="PARAMS.json", type=click.Path(dir_okay=False))
@click.option("--task", default="toy", show_default=True, help="toy, teacher or mnist.")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(min=0),
              help="The task's seed (teacher, mnist subsampling).")
@click.option("--task-option", "task_options", multiple=True, callback=_parse_task_options,
              metavar="KEY=VALUE", help="A task option, e.g. n_samples=500 (repeatable).")
@click.option("--activation", default=None, help="Override the file's activation.")
@click.option("--grad-tol", default=1e-10, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="A point is critical when |grad|_inf <= this.")
@click.option("--json", "as_json", is_flag=True, help="Print the numbers as JSON.")
def point_cmd(params_file, task, seed, task_options, activation, grad_tol, as_json) -> None:
    """Re-check a saved point: loss, |grad|_inf, saddle index, flat directions, tau and gap."""
    import json

    from permsym_core.landscape import Landscape
    from permsym_core.spectra import analyse_landscape
    from permsym_core.tasks import make_task

    if activation is not None:
        from permsym_core.activations import get_activation

        try:
            get_activation(activation)
        except ValueError as err:
            raise click.BadParameter(str(err), param_hint="'--activation'") from None
    spec, theta = _load_point(params_file, activation)
    try:   # the teacher task's default teacher has the student's depth: rebuild the trial's teacher
        t = make_task(task, seed=seed, activation=activation, student_widths=tuple(spec.hidden), **task_options)
    except ValueError as err:
        raise click.UsageError(str(err)) from None
    _check_point(params_file, spec, t)
    land = Landscape(spec, t.X, t.Y)
    loss, grad = land.loss_grad(theta)
    grad_inf = float(grad.abs().max())
    rep = analyse_landscape(land, theta, grad_inf)
    out = {"file": params_file, "task": task, "widths": list(spec.widths), "activation": spec.activation,
           "n_params": spec.n_params, "loss": float(loss), "grad_inf": grad_inf, "grad_tol": grad_tol,
           "critical": grad_inf <= grad_tol, "index": rep.index, "n_zero": rep.n_zero, "n_pos": rep.n_pos,
           "tau": rep.tau, "gap": rep.gap_ratio, "ambiguous": rep.ambiguous, "method": rep.method,
           "lowest_eigenvalues": rep.lowest_eigenvalues}
    if as_json:
        click.echo(json.dumps(out))
        return
    click.echo(f"{params_file}: widths {','.join(map(str, spec.widths))} {spec.activation}, P = {spec.n_params}, "
               f"task {task}")
    click.echo(f"loss {out['loss']:.10g}  |grad|_inf {grad_inf:.3g} "
               f"({'critical' if out['critical'] else 'NOT critical'} at grad_tol {grad_tol:g})")
    click.echo(f"index {rep.index}  n_zero {rep.n_zero}  n_pos {rep.n_pos}  tau {rep.tau:.3g}  "
               f"gap {rep.gap_ratio:.3g}{'  (ambiguous)' if rep.ambiguous else ''}  [{rep.method}]")
