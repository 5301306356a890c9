"""permsym_core: the science of permutation points (MLPs, exact Hessians, spectra, counting), importable alone.

OpenMP threads that spin while waiting make small torch operations about 100 times slower when the cores are
shared (measured here: loss_grad of a 12-parameter net 31 ms instead of 0.18 ms at load 7 on 2 cores), so
the passive wait policy is the default unless the user set one; it must be set before torch is imported.
"""
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
