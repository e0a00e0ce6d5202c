import pytest
import torch

from sparse_vqvae.sparse_coding import (fista, lasso, normalize_atoms, omp, random_dictionary, sparse_code,
                                         sparse_pairs)

from .synthetic import DEVICES, make_sparse_signals

SOLVERS = {
    "omp": dict(n_nonzero=3),
    "lasso": dict(alpha=0.2),  # the exact homotopy solver
    "lasso-fista": dict(alpha=0.2, solver="fista", n_iter=5000, tol=1e-15),
}
METHODS = ["omp", "lasso", "lasso-fista"]
# The LASSO paths solve hundreds of problems in gradcheck and in training: minutes on 2 cores.
SLOW_LASSO = ["omp", *(pytest.param(method, marks=pytest.mark.slow) for method in METHODS[1:])]


def call(x, dictionary, method, **kwargs):
    return sparse_code(x, dictionary, method.split("-")[0], **SOLVERS[method], **kwargs)


def small_problem(seed=0):
    g = torch.Generator().manual_seed(seed)
    dictionary = random_dictionary(8, 12, generator=g, dtype=torch.float64)
    x = torch.randn(5, 8, generator=g, dtype=torch.float64)
    return x.requires_grad_(), dictionary.requires_grad_()


@pytest.mark.parametrize("method", SLOW_LASSO)
def test_gradcheck(method):
    x, dictionary = small_problem()
    with torch.no_grad():  # a stable support: no code entry near zero, so eps moves do not flip it
        code = call(x, dictionary, method)
        assert ((code == 0) | (code.abs() > 1e-3)).all()
    assert torch.autograd.gradcheck(lambda a, b: call(a, b, method, ridge=0.0), (x, dictionary), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("method", METHODS)
def test_forward_equals_the_plain_solver(method):
    x, dictionary = small_problem(1)
    code = call(x, dictionary, method)
    if method == "omp":
        plain = omp(x.detach(), dictionary.detach(), 3).to_dense(12)
    elif method == "lasso":
        plain = lasso(x.detach(), dictionary.detach(), 0.2)
    else:
        plain = fista(x.detach(), dictionary.detach(), 0.2, n_iter=5000, tol=1e-15)
    assert torch.equal(code, plain)


@pytest.mark.parametrize("method", METHODS)
def test_the_pairs_are_the_codes_non_zeros_with_their_gradient(method):
    """What a quantizer reads ([B, s] pairs, no dense code) holds the dense code's non-zeros, and the
    same task-driven gradient reaches x and the dictionary through either."""
    x, dictionary = small_problem(2)
    kwargs = {**SOLVERS[method], **({"max_nonzero": 3} if method != "omp" else {})}
    atoms, values = sparse_pairs(x, dictionary, method.split("-")[0], **kwargs)
    dense = sparse_code(x, dictionary, method.split("-")[0], **kwargs)
    assert atoms.shape == values.shape == (5, 3)
    assert (atoms.sort(dim=1).values[:, 1:] != atoms.sort(dim=1).values[:, :-1]).all()  # distinct atoms
    assert torch.equal(dense.gather(1, atoms), values)
    assert torch.equal((dense != 0).sum(dim=1), (values != 0).sum(dim=1))
    weights = torch.linspace(-1, 1, 12, dtype=torch.float64)
    through_pairs = torch.autograd.grad((values * weights[atoms]).sum(), (x, dictionary))
    through_dense = torch.autograd.grad((dense * weights).sum(), (x, dictionary))
    for a, b in zip(through_pairs, through_dense):
        assert torch.allclose(a, b, atol=1e-12)
    assert through_pairs[0].abs().sum() > 0


@pytest.mark.parametrize("solver", ["homotopy", "fista"])
def test_max_nonzero_caps_the_lasso_support(solver):
    x, dictionary = small_problem(3)
    code = sparse_code(x, dictionary, "lasso", alpha=0.01, max_nonzero=2, solver=solver)
    assert ((code != 0).sum(dim=1) <= 2).all()
    assert ((code != 0).sum(dim=1) == 2).any()
    loss = code.square().sum()
    grad_x, grad_d = torch.autograd.grad(loss, (x, dictionary))
    assert torch.isfinite(grad_x).all() and torch.isfinite(grad_d).all()


@pytest.mark.parametrize("method", METHODS)
def test_default_ridge_barely_moves_the_gradient(method):
    x, dictionary = small_problem(2)
    weights = torch.randn(5, 12, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    grads = []
    for ridge in (0.0, 1e-6):
        loss = (call(x, dictionary, method, ridge=ridge) * weights).sum()
        grads.append(torch.autograd.grad(loss, (x, dictionary)))
    for exact, ridged in zip(*grads):  # within 0.1% of the gradient's scale
        assert (exact - ridged).abs().max() <= 1e-3 * exact.abs().max()


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("device", DEVICES)
def test_gradients_finite_for_degenerate_inputs(method, dtype, device):
    g = torch.Generator().manual_seed(4)
    base = random_dictionary(6, 10, generator=g, dtype=dtype)
    dictionary = torch.cat([base, base[:, :3]], dim=1).to(device).requires_grad_()  # duplicated atoms
    x = torch.randn(6, 6, generator=g, dtype=dtype)
    x[0] = 0  # a zero signal
    x[1] = base[:, 0]  # a signal that is exactly one atom (and its twin)
    x = x.to(device).requires_grad_()
    kwargs = {"omp": dict(n_nonzero=8), "lasso": dict(alpha=0.05),  # 8 > d = 6
              "lasso-fista": dict(alpha=0.05, solver="fista", n_iter=300)}[method]
    loss = sparse_code(x, dictionary, method.split("-")[0], **kwargs).square().sum()
    grad_x, grad_d = torch.autograd.grad(loss, (x, dictionary))
    assert torch.isfinite(grad_x).all() and torch.isfinite(grad_d).all()
    assert torch.equal(grad_x[0], torch.zeros_like(grad_x[0]))


@pytest.mark.parametrize("method", SLOW_LASSO)
def test_task_driven_gradient_learns_a_dictionary(method):
    x, true_dictionary, _ = make_sparse_signals(512, 16, 32, 2, noise=0.01)
    g = torch.Generator().manual_seed(7)
    dictionary = normalize_atoms(true_dictionary + 0.3 * torch.randn(16, 32, generator=g, dtype=torch.float64))
    dictionary.requires_grad_()
    optimizer = torch.optim.Adam([dictionary], lr=1e-2)
    kwargs = {"omp": dict(n_nonzero=2), "lasso": dict(alpha=0.05),
              "lasso-fista": dict(alpha=0.05, solver="fista", n_iter=200)}[method]

    def reconstruction_error():
        code = sparse_code(x, dictionary, method.split("-")[0], **kwargs)
        return ((x - code @ dictionary.t()) ** 2).sum(dim=1).mean()

    start = reconstruction_error().item()
    for _ in range(30):
        optimizer.zero_grad()
        reconstruction_error().backward()
        optimizer.step()
        with torch.no_grad():
            dictionary.copy_(normalize_atoms(dictionary))
    assert reconstruction_error().item() < 0.7 * start


@pytest.mark.parametrize(
    "method, kwargs, name",
    [
        ("fista", dict(n_nonzero=2), "method"),
        ("omp", dict(), "n_nonzero"),
        ("lasso", dict(), "alpha"),
        ("omp", dict(n_nonzero=2, alpha=0.1), "alpha"),
        ("omp", dict(n_nonzero=2, ridge=-1.0), "ridge"),
        ("lasso", dict(alpha=0.1, solver="cd"), "solver"),
        ("lasso", dict(alpha=0.1, solver="lars"), "solver"),
        ("lasso", dict(alpha=0.1, n_iter=10), "n_iter"),
    ],
)
def test_bad_input_names_the_argument(method, kwargs, name):
    with pytest.raises(ValueError, match=name):
        sparse_code(torch.randn(3, 8), torch.randn(8, 16), method, **kwargs)
