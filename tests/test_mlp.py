"""The MLP layout and JSON format, activations and their derivatives, and trial-config validation."""
import json

import pytest
import torch

from permsym_core.activations import ACTIVATIONS, get_activation
from permsym_core.config import ConfigError, TrialConfig
from permsym_core.mlp import MLPSpec, forward, params_from_json, params_to_json


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_activation_derivatives_match_finite_differences(name):
    act = get_activation(name)
    x = torch.linspace(-6, 6, 241, dtype=torch.float64)
    h = 1e-5
    fd1 = (act.f(x + h) - act.f(x - h)) / (2 * h)
    fd2 = (act.df(x + h) - act.df(x - h)) / (2 * h)
    # central differences: error ~ h^2 f''' / 6 ~ 1e-10, plus round-off eps / h ~ 1e-11
    assert float((fd1 - act.df(x)).abs().max()) <= 1e-9
    assert float((fd2 - act.d2f(x)).abs().max()) <= 1e-9


def test_activation_values():
    x = torch.tensor([0.0, 1.0], dtype=torch.float64)
    assert get_activation("softplus").f(x).tolist() == pytest.approx([0.6931471805599453, 1.3132616875182228])
    # g(x) = sigmoid(4x) + softplus(x)
    assert float(get_activation("g").f(x)[0]) == pytest.approx(0.5 + 0.6931471805599453)
    assert float(get_activation("gelu").f(x)[1]) == pytest.approx(0.8413447460685429)
    # softplus stays exact far out (no linear threshold): derivative sigmoid(30) != 1
    assert float(get_activation("softplus").df(torch.tensor(30.0, dtype=torch.float64))) < 1.0


def test_unknown_activation_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown activation 'relu': expected one of g, gelu, sigmoid, softplus, tanh"):
        get_activation("relu")


def test_layout_and_views():
    spec = MLPSpec((3, 4, 2), "tanh", (True, False))
    assert spec.n_params == 3 * 4 + 4 + 4 * 2
    theta = torch.arange(spec.n_params, dtype=torch.float64)
    (W1, b1), (W2, b2) = spec.views(theta)
    assert W1.shape == (4, 3) and b1.tolist() == [12.0, 13.0, 14.0, 15.0] and b2 is None
    assert W1[1].tolist() == [3.0, 4.0, 5.0]          # row-major: neuron 1's incoming weights
    assert W2.shape == (2, 4) and float(W2[0, 0]) == 16.0
    W1[0, 0] = -1.0                                     # views write through
    assert float(theta[0]) == -1.0


def test_json_round_trip_is_exact():
    spec = MLPSpec((2, 5, 3, 1), "g", (True, False, True))
    theta = torch.randn(spec.n_params, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) / 3
    text = json.dumps(params_to_json(spec, theta))
    obj = json.loads(text)
    assert [len(layer["W"]) for layer in obj["layers"]] == [5, 3, 1]
    assert obj["layers"][1]["b"] is None
    spec2, theta2 = params_from_json(text)
    assert spec2 == spec
    assert torch.equal(theta2, theta)                   # bit for bit: repr of float64 round-trips
    X = torch.randn(7, 2, dtype=torch.float64)
    assert torch.equal(forward(spec2, theta2, X), forward(spec, theta, X))


@pytest.mark.parametrize("obj, message", [
    ({}, "params: expected an object with a non-empty list 'layers'"),
    ({"layers": []}, "non-empty list 'layers'"),
    ({"layers": [{"b": [1]}]}, r"layers\[0\]: expected an object with 'W' and 'b'"),
    ({"layers": [{"W": [[1, 2], [3]], "b": None}]}, r"layers\[0\].W: expected a rectangular matrix"),
    ({"layers": [{"W": [[1, 2]], "b": None}, {"W": [[1, 2, 3]], "b": None}]},
     r"layers\[1\].W: expected 1 columns \(the previous layer's width\), got 3"),
    ({"layers": [{"W": [[1, 2]], "b": [1, 2]}]}, r"layers\[0\].b: expected length 1"),
    ({"layers": [{"W": [[1, "x"]], "b": None}]}, r"layers\[0\].W: expected a rectangular matrix of numbers"),
    ({"layers": [{"W": [[1, float("nan")]], "b": None}]}, r"layers\[0\]: expected finite numbers"),
    ({"layers": [{"W": [1, 2], "b": None}]}, r"layers\[0\].W: expected a non-empty 2-d matrix"),
])
def test_json_with_wrong_shapes_is_rejected_with_a_message(obj, message):
    with pytest.raises(ValueError, match=message):
        params_from_json(obj)


@pytest.mark.parametrize("kwargs, message", [
    ({"widths": (0,)}, "widths: expected integers >= 1"),
    ({"widths": ()}, "widths: expected a non-empty list"),
    ({"activation": "relu"}, "activation: expected one of"),
    ({"task": "cifar"}, "task: expected one of toy, teacher, mnist"),
    ({"orders": (0,)}, "orders: expected a non-empty list of integers >= 1"),
    ({"pairs": "random:0"}, "pairs: expected"),
    ({"grad_tol": -1.0}, "grad_tol: expected a number > 0"),
    ({"seed": -3}, "seed: expected an integer >= 0"),
])
def test_trial_config_errors_name_the_field(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        TrialConfig(**kwargs)


def test_trial_key_is_stable_and_depends_on_science_only():
    a = TrialConfig(widths=(4,), seed=1)
    b = TrialConfig.from_dict({"widths": [4], "seed": 1})
    assert a.trial_key() == b.trial_key() and len(a.trial_key()) == 16
    assert TrialConfig(widths=(4,), seed=2).trial_key() != a.trial_key()
    with pytest.raises(ConfigError, match="colour: unknown trial option"):
        TrialConfig.from_dict({"colour": "red"})
