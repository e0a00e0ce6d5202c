import pytest
import torch

from sparse_vqvae.sparse_coding import fista, normalize_atoms, omp, random_dictionary, sparse_code

from .synthetic import DEVICES, make_sparse_signals

SOLVERS = {
    "omp": dict(n_nonzero=3),
    "fista": dict(alpha=0.2, n_iter=5000, tol=1e-15),
}


def small_problem(seed=0):
    g = torch.Generator().manual_seed(seed)
    dictionary = random_dictionary(8, 12, generator=g, dtype=torch.float64)
    x = torch.randn(5, 8, generator=g, dtype=torch.float64)
    return x.requires_grad_(), dictionary.requires_grad_()


@pytest.mark.parametrize("method", ["omp", "fista"])
def test_gradcheck(method):
    x, dictionary = small_problem()
    with torch.no_grad():  # a stable support: no code entry near zero, so eps moves do not flip it
        code = sparse_code(x, dictionary, method, **SOLVERS[method])
        assert ((code == 0) | (code.abs() > 1e-3)).all()
    assert torch.autograd.gradcheck(
        lambda a, b: sparse_code(a, b, method, ridge=0.0, **SOLVERS[method]), (x, dictionary), eps=1e-6, atol=1e-6
    )


@pytest.mark.parametrize("method", ["omp", "fista"])
def test_forward_equals_the_plain_solver(method):
    x, dictionary = small_problem(1)
    code = sparse_code(x, dictionary, method, **SOLVERS[method])
    if method == "omp":
        plain = omp(x.detach(), dictionary.detach(), 3).to_dense(12)
    else:
        plain = fista(x.detach(), dictionary.detach(), **SOLVERS[method])
    assert torch.equal(code, plain)


@pytest.mark.parametrize("method", ["omp", "fista"])
def test_default_ridge_barely_moves_the_gradient(method):
    x, dictionary = small_problem(2)
    weights = torch.randn(5, 12, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    grads = []
    for ridge in (0.0, 1e-6):
        loss = (sparse_code(x, dictionary, method, ridge=ridge, **SOLVERS[method]) * weights).sum()
        grads.append(torch.autograd.grad(loss, (x, dictionary)))
    for exact, ridged in zip(*grads):  # within 0.1% of the gradient's scale
        assert (exact - ridged).abs().max() <= 1e-3 * exact.abs().max()


@pytest.mark.parametrize("method", ["omp", "fista"])
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
    kwargs = dict(n_nonzero=8) if method == "omp" else dict(alpha=0.05, n_iter=300)  # 8 > d = 6
    loss = sparse_code(x, dictionary, method, **kwargs).square().sum()
    grad_x, grad_d = torch.autograd.grad(loss, (x, dictionary))
    assert torch.isfinite(grad_x).all() and torch.isfinite(grad_d).all()
    assert torch.equal(grad_x[0], torch.zeros_like(grad_x[0]))


@pytest.mark.parametrize("method", ["omp", "fista"])
def test_task_driven_gradient_learns_a_dictionary(method):
    x, true_dictionary, _ = make_sparse_signals(512, 16, 32, 2, noise=0.01)
    g = torch.Generator().manual_seed(7)
    dictionary = normalize_atoms(true_dictionary + 0.3 * torch.randn(16, 32, generator=g, dtype=torch.float64))
    dictionary.requires_grad_()
    optimizer = torch.optim.Adam([dictionary], lr=1e-2)
    kwargs = dict(n_nonzero=2) if method == "omp" else dict(alpha=0.05, n_iter=200)

    def reconstruction_error():
        code = sparse_code(x, dictionary, method, **kwargs)
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
        ("lars", dict(n_nonzero=2), "method"),
        ("omp", dict(), "n_nonzero"),
        ("fista", dict(), "alpha"),
        ("omp", dict(n_nonzero=2, alpha=0.1), "alpha"),
        ("omp", dict(n_nonzero=2, ridge=-1.0), "ridge"),
    ],
)
def test_bad_input_names_the_argument(method, kwargs, name):
    with pytest.raises(ValueError, match=name):
        sparse_code(torch.randn(3, 8), torch.randn(8, 16), method, **kwargs)
