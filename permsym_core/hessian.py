"""TEMPORARY shim (replaced by the structured build): dense Hessian via the torch.func oracle."""
from .autodiff import autodiff_hessian


def structured_hessian(landscape, theta):
    return autodiff_hessian(landscape, theta)
