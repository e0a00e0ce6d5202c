import numpy as np
import pytest
import torch
from sklearn.linear_model import Lasso

from sparse_vqvae.sparse_coding import fista

from .synthetic import DEVICES, make_sparse_signals


def lasso_objective(code, x, dictionary, alpha):
    return 0.5 * ((x - code @ dictionary.t()) ** 2).sum(dim=1) + alpha * code.abs().sum(dim=1)


def worst_gap_to_scikit_learn(code, x, dictionary, alpha):
    """Largest relative excess of ``code``'s LASSO objective over scikit-learn's solution."""
    reference = scikit_learn_lasso(x, dictionary, alpha)
    f_ours = lasso_objective(code, x, dictionary, alpha)
    f_ref = lasso_objective(reference, x, dictionary, alpha)
    return ((f_ours - f_ref) / f_ref).abs().max().item()


def scikit_learn_lasso(x, dictionary, alpha):
    # scikit-learn minimises 1/(2 n) ||x - D c||^2 + a ||c||_1 with n = d samples: a = alpha / d.
    model = Lasso(alpha=alpha / x.shape[1], fit_intercept=False, tol=1e-12, max_iter=200_000)
    return torch.tensor(np.stack([model.fit(dictionary.numpy(), row).coef_.copy() for row in x.numpy()]))


@pytest.mark.parametrize("exact", [True, pytest.param(False, marks=pytest.mark.slow)])  # plain FISTA: many iterations
@pytest.mark.parametrize("alpha", [0.05, 0.3])
def test_objective_matches_scikit_learn_lasso(exact, alpha):
    x, dictionary, _ = make_sparse_signals(40, 32, 96, 4, noise=0.05)
    ours = fista(x, dictionary, alpha, n_iter=3000, tol=1e-12, exact=exact)
    assert worst_gap_to_scikit_learn(ours, x, dictionary, alpha) <= 1e-4


def test_exact_finish_hits_the_optimum_to_rounding():
    x, dictionary, _ = make_sparse_signals(200, 32, 96, 4, noise=0.05)
    alpha = 0.1
    ours = fista(x, dictionary, alpha, n_iter=500)
    # Optimality (KKT): |d_j^T r| <= alpha everywhere, = alpha with the code's sign on the support.
    correlation = (x - ours @ dictionary.t()) @ dictionary
    assert correlation.abs().max().item() <= alpha * (1 + 1e-8)
    active = ours != 0
    np.testing.assert_allclose(correlation[active].numpy(), (alpha * ours.sign())[active].numpy(), rtol=1e-8)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("device", DEVICES)
def test_dtypes_and_devices(dtype, device):
    x, dictionary, _ = make_sparse_signals(300, 16, 48, 3, noise=0.05, dtype=dtype)
    code = fista(x.to(device), dictionary.to(device), 0.1, chunk_size=128)
    assert code.shape == (300, 48) and code.dtype == dtype and code.device.type == device
    reference = fista(x.double(), dictionary.double(), 0.1)
    gap = lasso_objective(code.cpu().double(), x.double(), dictionary.double(), 0.1)
    best = lasso_objective(reference, x.double(), dictionary.double(), 0.1)
    assert ((gap - best) / best).max().item() < 1e-4


def test_large_alpha_gives_zero_and_zero_signal_gives_zero():
    x, dictionary, _ = make_sparse_signals(20, 16, 48, 3, noise=0.05)
    alpha = (x @ dictionary).abs().max().item() * 1.01
    assert torch.equal(fista(x, dictionary, alpha), torch.zeros(20, 48, dtype=torch.float64))
    assert torch.equal(fista(torch.zeros(3, 16, dtype=torch.float64), dictionary, 0.1), torch.zeros(3, 48, dtype=torch.float64))


def test_duplicate_atoms_stay_finite():
    x, dictionary, _ = make_sparse_signals(20, 16, 48, 3, noise=0.05)
    doubled = torch.cat([dictionary, dictionary], dim=1)
    code = fista(x, doubled, 0.1, n_iter=100)
    assert torch.isfinite(code).all()
    single = fista(x, dictionary, 0.1)
    # Splitting weight between twins changes nothing in the objective.
    f_doubled = lasso_objective(code, x, doubled, 0.1)
    f_single = lasso_objective(single, x, dictionary, 0.1)
    assert ((f_doubled - f_single) / f_single).max().item() < 1e-3


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(alpha=-1.0), "alpha"),
        (dict(alpha=float("nan")), "alpha"),
        (dict(alpha=0.1, n_iter=0), "n_iter"),
        (dict(alpha=0.1, tol=-1.0), "tol"),
        (dict(x=torch.zeros(4, 9), alpha=0.1), "dimension"),
        (dict(x=torch.full((4, 8), float("nan")), alpha=0.1), "x"),
        (dict(x=torch.zeros(4, 8, dtype=torch.float64), alpha=0.1), "dtype"),
    ],
)
def test_bad_input_names_the_argument(kwargs, name):
    args = dict(x=torch.randn(4, 8), dictionary=torch.randn(8, 16))
    args.update(kwargs)
    with pytest.raises(ValueError, match=name):
        fista(args.pop("x"), args.pop("dictionary"), **args)
