import numpy as np
import pytest
import torch

from sparse_vqvae.sparse_coding import fista, lasso

from .synthetic import DEVICES, make_sparse_signals
from .test_fista import lasso_objective, worst_gap_to_scikit_learn


@pytest.mark.parametrize("alpha", [0.02, 0.1, 0.5])
def test_objective_matches_scikit_learn_lasso(alpha):
    x, dictionary, _ = make_sparse_signals(40, 32, 96, 4, noise=0.05)
    assert worst_gap_to_scikit_learn(lasso(x, dictionary, alpha), x, dictionary, alpha) <= 1e-4


def test_equals_fista_exact_to_rounding():
    x, dictionary, _ = make_sparse_signals(300, 32, 96, 4, noise=0.05)
    torch.testing.assert_close(lasso(x, dictionary, 0.1), fista(x, dictionary, 0.1, n_iter=3000), atol=1e-9, rtol=0)


def test_max_nonzero_gives_the_exact_lasso_code_at_a_larger_penalty():
    x, dictionary, _ = make_sparse_signals(200, 32, 96, 6, noise=0.05)
    code = lasso(x, dictionary, 0.01, max_nonzero=3)
    count = (code != 0).sum(dim=1)
    assert (count <= 3).all() and (count == 3).float().mean() > 0.9
    # On its path point the code solves the LASSO for lambda' = max |d_j^T r| >= alpha (KKT).
    correlation = (x - code @ dictionary.t()) @ dictionary
    level = correlation.abs().amax(dim=1, keepdim=True)
    assert (level >= 0.01 - 1e-12).all()
    active = code != 0
    np.testing.assert_allclose(correlation[active].numpy(), (level * code.sign()).expand_as(code)[active].numpy(),
                               rtol=1e-7)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("device", DEVICES)
def test_dtypes_devices_and_degenerate_rows(dtype, device):
    x, dictionary, _ = make_sparse_signals(300, 16, 48, 3, noise=0.05, dtype=dtype)
    x[0] = 0
    doubled = torch.cat([dictionary, dictionary[:, :4]], dim=1)  # duplicated atoms
    code = lasso(x.to(device), doubled.to(device), 0.1, chunk_size=128)
    assert code.shape == (300, 52) and code.dtype == dtype and code.device.type == device
    assert torch.isfinite(code).all() and (code[0] == 0).all()
    best = lasso_objective(fista(x.double(), doubled.double(), 0.1, n_iter=3000), x.double(), doubled.double(), 0.1)
    ours = lasso_objective(code.cpu().double(), x.double(), doubled.double(), 0.1)
    assert ((ours - best) / best.clamp_min(1e-12)).max().item() < 1e-4


def test_alpha_above_every_correlation_gives_zero():
    x, dictionary, _ = make_sparse_signals(20, 16, 48, 3, noise=0.05)
    alpha = (x @ dictionary).abs().max().item() * 1.01
    assert torch.equal(lasso(x, dictionary, alpha), torch.zeros(20, 48, dtype=torch.float64))


@pytest.mark.parametrize(
    "kwargs, name",
    [(dict(alpha=-0.1), "alpha"), (dict(alpha=0.1, max_nonzero=0), "max_nonzero"),
     (dict(alpha=0.1, max_nonzero=17), "max_nonzero"), (dict(alpha=0.1, max_steps=0), "max_steps")],
)
def test_bad_input_names_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=name):
        lasso(torch.randn(4, 8), torch.randn(8, 16), **kwargs)
