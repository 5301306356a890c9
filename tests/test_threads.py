"""torch's thread count per landscape (permsym_core.threads): one thread for small work, the rest back after."""
import pytest
import torch

import permsym_core.strings as strings
from permsym_core.config import TrialConfig
from permsym_core.landscape import Landscape
from permsym_core.mlp import MLPSpec
from permsym_core.study import run_trial
from permsym_core.tasks import make_task
from permsym_core.threads import SMALL_ELEMENTS, landscape_threads, threads_for, torch_threads


def test_threads_for_follows_the_measured_thresholds():
    # the toy task's 1,681 samples through a 2-10-1 net with biases (P = 41): N x P = 68,921, one thread
    assert threads_for(1681 * 41, 41, "cpu", available=2) == 1
    # 1,000 MNIST images (784 inputs) through 784-30-10: the count given
    assert threads_for(1000 * 23860, 23860, "cpu", available=2) == 2
    # a large P (eigh of P >= 1,000 gains from threads), even on few samples: the count given
    assert threads_for(10 * 1000, 1000, "cpu", available=2) == 2
    assert threads_for(SMALL_ELEMENTS - 1, 999, "cpu", available=4) == 1
    assert threads_for(SMALL_ELEMENTS, 999, "cpu", available=4) == 4
    # on CUDA the CPU threads only launch kernels: left as they are
    assert threads_for(10, 10, "cuda", available=2) == 2


def test_the_largest_tensor_is_the_hessians_per_sample_jacobian():
    task = make_task("toy", seed=0, activation="sigmoid")
    with torch_threads(2):
        # activations of 1,681 x 50 and 1,681 x 60 entries are both small; what decides is the Hessian's
        # per-sample Jacobian, N x P: 2-50-1 without biases has P = 150 (252,150 entries, one thread), 2-60-1
        # with biases P = 241 (405,121 entries, two)
        wide = Landscape(MLPSpec((2, 50, 1), "sigmoid", (False, False)), task.X, task.Y, device="cpu")
        with landscape_threads(wide) as n:
            assert wide.n_params == 150 and 1681 * 150 < SMALL_ELEMENTS and n == 1
        wider = Landscape(MLPSpec((2, 60, 1), "sigmoid", (True, True)), task.X, task.Y, device="cpu")
        with landscape_threads(wider) as n:
            assert wider.n_params == 241 and 1681 * 241 >= SMALL_ELEMENTS and n == 2


def test_the_documented_limits_hold_on_the_real_tasks():
    """README: one-hidden-layer toy trials up to width 51 run on one thread (no biases, P = 3w), and the default
    MNIST trial (10 principal components of all 5,000 images, widths [8, 6], 10 classes, biases) keeps the
    cores: N x P = 1,060,000."""
    toy = make_task("toy", seed=0, activation="sigmoid")
    mnist = make_task("mnist", seed=0, activation="tanh", pca=10, n_samples=None)
    with torch_threads(2):
        for width, expected in ((51, 1), (52, 2)):
            land = Landscape(MLPSpec((2, width, 1), "sigmoid", toy.default_bias), toy.X, toy.Y, device="cpu")
            with landscape_threads(land) as n:
                assert (land.n_params, n) == (3 * width, expected)
        spec = MLPSpec((mnist.n_in, 8, 6, mnist.n_out), "tanh", mnist.default_bias, mnist.output)
        land = Landscape(spec, mnist.X, mnist.Y, device="cpu")
        with landscape_threads(land) as n:
            assert (land.N, land.n_params, n) == (5000, 212, 2)


def test_torch_threads_puts_the_count_back_after_an_exception():
    with torch_threads(2):
        with pytest.raises(RuntimeError):
            with torch_threads(1):
                assert torch.get_num_threads() == 1
                raise RuntimeError("inside")
        assert torch.get_num_threads() == 2


def _toy_landscape(width: int) -> Landscape:
    task = make_task("toy", seed=0, activation="sigmoid")
    return Landscape(MLPSpec((2, width, 1), "sigmoid"), task.X, task.Y, device="cpu")


def test_a_batch_inside_a_one_thread_block_gets_the_outer_count_back():
    land = _toy_landscape(4)             # N x P = 1,681 x 12 = 20,172 entries: small
    with torch_threads(2):
        with landscape_threads(land) as n:
            assert n == 1 and torch.get_num_threads() == 1
            with landscape_threads(land, batch=2 * 21) as m:       # 2 paths of 21 images: 847,224 entries
                assert m == 2 and torch.get_num_threads() == 2
            with landscape_threads(land, batch=5) as m:            # 5 points of a segment: 100,860
                assert m == 1 and torch.get_num_threads() == 1
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2


def test_a_toy_trial_runs_on_one_thread_and_its_strings_on_two(monkeypatch):
    seen = {"phases": set(), "strings": []}
    relax = strings.string_paths

    def observed(*args, **kwargs):
        seen["strings"].append(torch.get_num_threads())
        return relax(*args, **kwargs)

    monkeypatch.setattr(strings, "string_paths", observed)
    with torch_threads(2):
        rec = run_trial(TrialConfig(task="toy", widths=(3,), activation="sigmoid", seed=0),
                        on_phase=lambda p, k, n: seen["phases"].add(torch.get_num_threads()))
        assert torch.get_num_threads() == 2                 # put back after the trial
    assert rec["threads"] == 1 and seen["phases"] == {1}
    assert seen["strings"] and set(seen["strings"]) == {2}  # 21 images x 1,681 x 9 > SMALL_ELEMENTS already
    assert rec["minimum"]["converged"]


def test_a_trial_that_raises_puts_the_count_back():
    def fail(phase, k, n):
        raise RuntimeError(f"stop at {phase}")

    with torch_threads(2):
        with pytest.raises(RuntimeError, match="stop at minimum"):
            run_trial(TrialConfig(task="toy", widths=(3,), activation="sigmoid", seed=0), on_phase=fail)
        assert torch.get_num_threads() == 2
    # no ceiling left over from the failed trial: a leaked ceiling of 2 would hand a large batch two threads
    with torch_threads(1):
        with landscape_threads(_toy_landscape(4), batch=2 * 21) as m:
            assert m == 1
