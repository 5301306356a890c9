"""The sweep spec: a YAML file validated before anything starts.

```yaml
name: toy-widths                # letters, digits, '-', '_' and '.'; the MLflow parent run, the Ray Tune
                                # experiment and the Optuna study are named after it
task: toy                       # toy | teacher | mnist
task_options: {}                # passed to the task
grid:                           # every combination of the lists below is one trial
  widths: [[3], [4], [5, 5]]    # hidden widths per trial (a list of lists, so depth varies too);
                                # a bare integer n stands for [n]
  activations: [sigmoid, g]
  seeds: [0, 1]
  orders: [[1]]                 # the orders K of each trial: [[1, 2]] both in every trial, [[1], [2]] a
                                # grid over them; a flat list of several ([1, 2]) is ambiguous and rejected
  pairs: all
  adam_steps: 3000              # any other trial option: a scalar or a list of values
search: {kind: grid}            # or {kind: optuna, sampler: tpe, n_trials: 20, metric: frac_first_order, mode: max}
resources: {cpus: 1, gpus: 0}   # per trial
max_concurrent: null            # at most this many trials at once (default: as many as the resources allow)
max_failures: 1                 # retries of a trial whose worker crashed
trial_time_limit_s: null        # a trial running longer is stopped and recorded FAILED ("time_limit")
trials_per_task: auto           # grid trials per Ray Tune trial: auto (long chunks first, single trials at
                                # the end: sweeps.chunks) or a positive integer
figures: true                   # draw each FINISHED run's PNG figures for the UI (~0.7 s of CPU per toy width-5 run,
                                # beside the trials: sweeps.figure_writer); false for large sweeps, whose
                                # `permsym report` still draws its figures from the records
```

Every error is one line `<field path>: expected <what>, got <value>` raised as `SpecError`. Files are read
with `yaml.safe_load` only.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Optional, Union

import yaml
from pydantic import (BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator)
from pydantic_core import PydanticCustomError

from permsym_core.activations import ACTIVATIONS
from permsym_core.config import TASKS, TrialConfig
from tracking.metrics import TRIAL_METRICS

ActivationName = Literal[tuple(sorted(ACTIVATIONS))]  # type: ignore[valid-type]
TaskName = Literal[TASKS]  # type: ignore[valid-type]

#: Scalars a trial reports to Tune (and Optuna may optimise); defined once in tracking.metrics.trial_metrics.
METRICS = TRIAL_METRICS

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
#: The experiment name becomes a folder of the artifact root: no '..', no '/' or '\\'.
EXPERIMENT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_. -]{0,199}$")


class SpecError(ValueError):
    """A sweep spec that cannot run; the message is one line naming the field and what was expected."""


# ---- value normalisers (run before pydantic's strict checks, so that its errors point at the item) ----

def _as_list(v: Any) -> Any:
    return v if isinstance(v, list) else [v]


def _widths_list(v: Any) -> Any:
    if isinstance(v, int) and not isinstance(v, bool):
        return [[v]]
    if isinstance(v, list):
        return [[x] if isinstance(x, int) and not isinstance(x, bool) else x for x in v]
    return v


def _orders_list(v: Any) -> Any:
    if isinstance(v, int) and not isinstance(v, bool):
        return [[v]]
    if isinstance(v, list) and len(v) == 1 and isinstance(v[0], int) and not isinstance(v[0], bool):
        return [v]                      # [1]: the one order of every trial
    if isinstance(v, list) and len(v) > 1 and all(isinstance(x, int) and not isinstance(x, bool) for x in v):
        # [1, 2] could mean the orders of every trial or a grid over them: rejected, not guessed
        raise PydanticCustomError("permsym", "grid.orders: ambiguous {got}; expected {one} (these orders in every "
                                  "trial) or {grid} (one trial per order)",
                                  {"got": repr(v), "one": repr([v]), "grid": repr([[x] for x in v])})
    return v


def _number(v: Any) -> Any:
    """YAML 1.1 reads `1e-10` as a string; accept numeric strings for real-valued options."""
    if isinstance(v, str):
        try:
            return float(v)
        except ValueError:
            return v
    return v


def _on_off_list(v: Any) -> Any:
    """batch_reduced values: YAML 1.1 reads a bare on/off as true/false; they mean "on"/"off" here."""
    return [{True: "on", False: "off"}.get(x, x) if isinstance(x, bool) else x for x in _as_list(v)]


def _numbers_list(v: Any) -> Any:
    return [_number(x) for x in _as_list(v)]


PosInt = Annotated[int, Field(ge=1)]
NonNegInt = Annotated[int, Field(ge=0)]
PosFloat = Annotated[float, Field(gt=0.0, allow_inf_nan=False)]


def _values(item: Any, norm=_as_list) -> Any:
    """A grid dimension: a non-empty list of `item` (a scalar is a list of one)."""
    return Optional[Annotated[list[item], Field(min_length=1), BeforeValidator(norm)]]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class Grid(_Model):
    """Trial options; each a list of values (the grid's dimensions) or a scalar. Unset: TrialConfig's default."""

    widths: _values(Annotated[list[PosInt], Field(min_length=1)], _widths_list) = None
    activations: _values(ActivationName) = None
    seeds: _values(NonNegInt) = None
    orders: _values(Annotated[list[PosInt], Field(min_length=1)], _orders_list) = None
    pairs: _values(str) = None
    bias: _values(Optional[bool]) = None
    grad_tol: _values(PosFloat, _numbers_list) = None
    max_iter: _values(NonNegInt) = None
    adam_steps: _values(NonNegInt) = None
    lr: _values(PosFloat, _numbers_list) = None
    init_scale: _values(PosFloat, _numbers_list) = None
    weight_decay: _values(Annotated[float, Field(ge=0.0, allow_inf_nan=False)], _numbers_list) = None
    time_limit_s: _values(Optional[PosFloat], _numbers_list) = None
    gamma_scan: _values(Optional[bool]) = None
    path_relax: _values(bool) = None
    path_points: _values(Annotated[int, Field(ge=3)]) = None
    save_params: _values(bool) = None
    device: _values(Literal["auto", "cpu", "cuda"]) = None
    dense_max_params: _values(Optional[PosInt]) = None
    batch_reduced: _values(Literal["auto", "on", "off"], _on_off_list) = None
    max_pair_sets: _values(Optional[PosInt]) = None

    #: grid key -> TrialConfig field
    FIELD_OF: ClassVar[dict[str, str]] = {"widths": "widths", "activations": "activation", "seeds": "seed", "orders": "orders"}

    def dimensions(self) -> dict[str, list]:
        """The set options in a fixed order: {TrialConfig field: [values]}."""
        out = {}
        for key in type(self).model_fields:
            values = getattr(self, key)
            if values is not None:
                out[self.FIELD_OF.get(key, key)] = [list(v) if isinstance(v, list) else v for v in values]
        return out


class Search(_Model):
    kind: Literal["grid", "optuna"] = "grid"
    sampler: Literal["tpe", "cmaes", "random", "grid"] = "tpe"
    n_trials: Optional[PosInt] = None
    metric: Literal[METRICS] = "frac_first_order"  # type: ignore[valid-type]
    mode: Literal["max", "min"] = "max"
    seed: Optional[NonNegInt] = None


def _per_task(v: Any) -> Any:
    """trials_per_task: grid trials per Ray Tune trial (sweeps.chunks)."""
    if v == "auto" or (isinstance(v, int) and not isinstance(v, bool) and v >= 1):
        return v
    raise PydanticCustomError("permsym", "trials_per_task: expected 'auto' or a positive integer, got {got}",
                              {"got": repr(v)})


class Resources(_Model):
    cpus: Annotated[float, Field(gt=0.0, allow_inf_nan=False)] = 1.0
    gpus: Annotated[float, Field(ge=0.0, allow_inf_nan=False)] = 0.0


class SweepSpec(_Model):
    name: str
    task: TaskName = "toy"
    task_options: dict[str, Any] = Field(default_factory=dict)
    grid: Grid
    search: Search = Field(default_factory=Search)
    resources: Resources = Field(default_factory=Resources)
    max_concurrent: Optional[PosInt] = None
    max_failures: NonNegInt = 1
    trial_time_limit_s: Optional[PosFloat] = None
    trials_per_task: Annotated[Union[Literal["auto"], int], BeforeValidator(_per_task)] = "auto"
    experiment: Optional[str] = None          # MLflow experiment (default: the sweep's name)
    figures: Annotated[bool, Field(strict=True)] = True   # per-run PNGs for the UI (not part of any trial key)

    @model_validator(mode="before")
    @classmethod
    def _before(cls, data: Any) -> Any:
        if isinstance(data, dict):
            name = data.get("name")
            if isinstance(name, str) and not NAME_RE.match(name):
                raise PydanticCustomError("permsym", "name: expected letters, digits, '-', '_' or '.' "
                                          "(at most 100, starting with a letter or digit), got {got}",
                                          {"got": repr(name)})
            exp = data.get("experiment")
            if exp is not None and (not isinstance(exp, str) or not EXPERIMENT_RE.match(exp) or ".." in exp):
                raise PydanticCustomError("permsym", "experiment: expected an MLflow experiment name of letters, "
                                          "digits, spaces, '-', '_' or '.' (at most 200, no '..' or path "
                                          "separator), got {got}", {"got": repr(exp)[:200]})
            grid = data.get("grid", ...)
            if grid is None or grid == {}:
                raise PydanticCustomError("permsym", "grid: expected a non-empty mapping of trial options "
                                          "(widths, activations, seeds, ...), got {got}", {"got": repr(grid)})
            for name, what in (("device", "one device"), ("batch_reduced", "one batch_reduced")):
                val = grid.get(name) if isinstance(grid, dict) else None
                if isinstance(val, list) and len(val) > 1:  # not in the trial key: two values, one key twice
                    val = _on_off_list(val) if name == "batch_reduced" else val
                    raise PydanticCustomError("permsym", "grid.{name}: expected {what} for the whole sweep (it is "
                                              "not part of the trial key), got {got}",
                                              {"name": name, "what": what, "got": repr(val)})
            if "trial_time_limit_s" in data:
                data = {**data, "trial_time_limit_s": _number(data["trial_time_limit_s"])}
        return data

    @property
    def experiment_name(self) -> str:
        return self.experiment or self.name

    def to_dict(self) -> dict:
        return self.model_dump(mode="json")


# ---- error formatting ----------------------------------------------------------------------------

_MODELS = {(): SweepSpec, ("grid",): Grid, ("search",): Search, ("resources",): Resources}


def _path(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "<spec>"


def _got(v: Any) -> str:
    s = repr(v)
    return s if len(s) <= 80 else s[:77] + "..."


def _bound(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


_EXPECTED = {
    "int_type": "an integer", "int_parsing": "an integer", "int_from_float": "an integer",
    "float_type": "a number", "float_parsing": "a number", "finite_number": "a finite number",
    "bool_type": "true or false", "bool_parsing": "true or false",
    "string_type": "a string", "list_type": "a list", "dict_type": "a mapping",
    "model_type": "a mapping", "model_attributes_type": "a mapping",
    "none_required": "null",
}


def format_error(err: ValidationError) -> str:
    """The first error of a pydantic ValidationError as one line `<path>: expected ..., got ...`."""
    errors = err.errors(include_url=False)
    # In a union (`X | None`) pydantic reports one error per member; the non-None member is the useful one.
    errors = [e for e in errors if e["type"] != "none_required"] or errors
    e = errors[0]
    loc = tuple(p for p in e["loc"] if not (isinstance(p, str) and ("[" in p or p in ("int", "float", "bool", "str"))))
    path, t, ctx, got = _path(loc), e["type"], e.get("ctx") or {}, e.get("input")
    if t == "permsym":
        return e["msg"]
    if t == "missing":
        return f"{path}: required; expected a value, got nothing"
    if t == "extra_forbidden":
        model = _MODELS.get(loc[:-1])
        allowed = ", ".join(model.model_fields) if model else "none"
        return f"{path}: unknown key; expected one of {allowed}"
    if t == "literal_error":
        return f"{path}: expected one of {ctx.get('expected')}, got {_got(got)}"
    if t in ("greater_than_equal", "greater_than"):
        op, b = (">=", ctx.get("ge")) if t == "greater_than_equal" else (">", ctx.get("gt"))
        kind = "an integer" if isinstance(b, int) and isinstance(got, int) else "a number"
        return f"{path}: expected {kind} {op} {_bound(b)}, got {_got(got)}"
    if t == "too_short":
        return f"{path}: expected a non-empty list, got {_got(got)}"
    if t in _EXPECTED:
        return f"{path}: expected {_EXPECTED[t]}, got {_got(got)}"
    return f"{path}: {e['msg']}, got {_got(got)}"


# ---- loading -------------------------------------------------------------------------------------

class _SafeLoader(yaml.SafeLoader):
    pass


def _no_duplicates(loader, node, deep=False):
    keys = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in keys:
            raise SpecError(f"{key}: duplicate key (line {key_node.start_mark.line + 1})")
        keys.add(key)
    return loader.construct_mapping(node, deep)


_SafeLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _no_duplicates)


def parse_yaml(text: str, source: str = "<spec>") -> Any:
    """`yaml.safe_load` (plus a duplicate-key check); any YAML error becomes a one-line SpecError."""
    try:
        return yaml.load(text, Loader=_SafeLoader)  # noqa: S506 (a SafeLoader subclass)
    except SpecError:
        raise
    except yaml.constructor.ConstructorError as e:
        where = f" (line {e.problem_mark.line + 1})" if e.problem_mark else ""
        tag = ""
        m = re.search(r"tag '([^']+)'", str(e.problem or ""))
        if m:
            tag = " " + m.group(1).replace("tag:yaml.org,2002:", "!!")
        raise SpecError(f"{source}: YAML tag{tag} not allowed{where}; expected plain YAML "
                        f"(mappings, lists, strings, numbers)") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise SpecError(f"{source}: invalid YAML{where}: {problem}") from None


def spec_from_dict(data: Any) -> SweepSpec:
    if not isinstance(data, dict):
        raise SpecError(f"<spec>: expected a mapping with name, task, grid, ..., got {_got(data)}")
    bad = [k for k in data if not isinstance(k, str)]
    if bad:
        raise SpecError(f"{bad[0]!r}: expected a string key, got {_got(bad[0])}")
    try:
        spec = SweepSpec.model_validate(data)
    except ValidationError as e:
        raise SpecError(format_error(e)) from None
    from .spec_checks import check_trials

    check_trials(spec)
    return spec


def load_spec(source: str | os.PathLike | dict | SweepSpec) -> SweepSpec:
    """A validated SweepSpec from a path, a YAML string's dict, or a spec (returned as is)."""
    if isinstance(source, SweepSpec):
        return source
    if isinstance(source, dict):
        return spec_from_dict(source)
    path = Path(source)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(f"{path}: no such spec file") from None
    except UnicodeDecodeError:
        raise SpecError(f"{path}: expected a UTF-8 text file") from None
    except OSError as e:
        raise SpecError(f"{path}: cannot read ({e.strerror})") from None
    return spec_from_dict(parse_yaml(text, str(path)))
