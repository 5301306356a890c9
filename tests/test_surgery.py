"""Network surgery: merge, duplicate, unmerge, permutations, matching up to permutation, pair selection."""
import itertools

import pytest
import torch

from permsym_core import surgery
from permsym_core.landscape import Landscape
from permsym_core.mlp import MLPSpec


@pytest.fixture
def net():
    spec = MLPSpec((3, 5, 4, 2), "tanh", (True, False, True))
    gen = torch.Generator().manual_seed(3)
    theta = torch.randn(spec.n_params, generator=gen, dtype=torch.float64)
    X = torch.randn(40, 3, generator=gen, dtype=torch.float64)
    return spec, theta, X


@pytest.mark.parametrize("layer", [1, 2])
def test_permutation_preserves_function(net, layer):
    spec, theta, X = net
    from permsym_core.mlp import forward
    perm = list(reversed(range(spec.widths[layer])))
    out = forward(spec, surgery.permute(spec, theta, layer, perm), X)
    assert torch.allclose(out, forward(spec, theta, X), rtol=0, atol=1e-13)
    swapped = surgery.swap(spec, theta, layer, 0, 2)
    assert float((surgery.swap(spec, swapped, layer, 0, 2) - theta).abs().max()) == 0.0


@pytest.mark.parametrize("layer", [1, 2])
@pytest.mark.parametrize("gamma", [0.5, 0.3, -0.7, 1.6])
def test_duplicate_preserves_function_and_merge_inverts_it(net, layer, gamma):
    spec, theta, X = net
    from permsym_core.mlp import forward
    big_spec, big = surgery.duplicate(spec, theta, layer, [1], gamma)
    assert big_spec.widths[layer] == spec.widths[layer] + 1
    assert torch.allclose(forward(big_spec, big, X), forward(spec, theta, X), rtol=0, atol=1e-12)
    back_spec, back, merged_at = surgery.merge(big_spec, big, layer, [(1, 2)])
    assert back_spec == spec and merged_at == [1]
    assert float((back - theta).abs().max()) <= 1e-15


def test_merge_formula(net):
    spec, theta, _ = net
    red_spec, red, merged_at = surgery.merge(spec, theta, 1, [(3, 0)])
    assert merged_at == [0] and red_spec.widths[1] == 4
    w_in, w_red = surgery.incoming(spec, theta, 1), surgery.incoming(red_spec, red, 1)
    a, a_red = surgery.outgoing(spec, theta, 1), surgery.outgoing(red_spec, red, 1)
    assert torch.equal(w_red[0], 0.5 * (w_in[0] + w_in[3]))
    assert torch.equal(a_red[:, 0], a[:, 0] + a[:, 3])
    assert torch.equal(w_red[1:], w_in[[1, 2, 4]])


def test_order_two_merge_and_duplicate(net):
    spec, theta, _ = net
    red_spec, red, merged_at = surgery.merge(spec, theta, 1, [(0, 1), (2, 4)])
    assert red_spec.widths[1] == 3 and merged_at == [0, 1]
    big_spec, big = surgery.duplicate(red_spec, red, 1, [0, 2], 0.5)
    assert big_spec.widths[1] == 5
    w = surgery.incoming(big_spec, big, 1)
    assert torch.equal(w[0], w[1]) and torch.equal(w[3], w[4])
    with pytest.raises(ValueError, match="pairs"):
        surgery.merge(spec, theta, 1, [(0, 1), (1, 2)])


def test_unmerge_is_symmetric_and_aligned(net):
    spec, theta, _ = net
    red_spec, red, _ = surgery.merge(spec, theta, 2, [(1, 3)])
    _, point = surgery.unmerge(red_spec, red, 2, (1, 3))
    assert float((surgery.swap(spec, point, 2, 1, 3) - point).abs().max()) == 0.0
    # neurons other than 1 and 3 are back in their own slots
    w, w0 = surgery.incoming(spec, point, 2), surgery.incoming(spec, theta, 2)
    assert torch.equal(w[[0, 2]], w0[[0, 2]])


def test_distance_up_to_permutation(net):
    spec, theta, _ = net
    shuffled = surgery.permute(spec, surgery.permute(spec, theta, 1, [4, 2, 0, 1, 3]), 2, [3, 1, 2, 0])
    assert surgery.distance_up_to_permutation(spec, theta, shuffled) == 0.0
    assert float((theta - shuffled).abs().max()) > 0.1
    other = theta + 1e-3
    assert surgery.distance_up_to_permutation(spec, theta, other) == pytest.approx(1e-3, rel=1e-9)


def test_pair_selection(net):
    spec, theta, _ = net
    assert surgery.neuron_pairs(spec, theta, 1, "all") == list(itertools.combinations(range(5), 2))
    nearest = surgery.neuron_pairs(spec, theta, 1, "nearest")
    assert 1 <= len(nearest) <= 5 and all(i < j for i, j in nearest)
    rnd = surgery.neuron_pairs(spec, theta, 1, "random:3", seed=1)
    assert len(rnd) == 3 and rnd == surgery.neuron_pairs(spec, theta, 1, "random:3", seed=1)
    sets = surgery.disjoint_pair_sets(surgery.neuron_pairs(spec, theta, 1, "all"), 2)
    assert len(sets) == 15                      # 5! / (2^2 2! 1!)
    with pytest.raises(ValueError, match="pairs"):
        surgery.neuron_pairs(spec, theta, 1, "closest")


def test_landscape_loss_is_unchanged_by_duplication(net):
    spec, theta, X = net
    Y = torch.randn(40, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    small = Landscape(spec, X, Y, device="cpu")
    big_spec, big = surgery.duplicate(spec, theta, 1, [2], 0.5)
    large = Landscape(big_spec, X, Y, device="cpu")
    assert abs(large.loss(big) - small.loss(theta)) <= 1e-14 * small.loss(theta)
