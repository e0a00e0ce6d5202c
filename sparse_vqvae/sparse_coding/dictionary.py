"""Dictionaries of unit-norm atoms (columns): normalisation and initialisation from data.

Initialisation: atoms start as distinct random training signals (the data's own directions, so
none starts dead), then a few MOD iterations (Method of Optimal Directions, Engan et al. 1999)
alternate OMP coding with the least-squares dictionary update ``D = X^T C (C^T C + eps I)^-1``.
MOD was chosen over K-SVD because its update is two GEMMs and one solve, batched and
device-agnostic; an atom that no signal uses keeps its value instead of collapsing to zero.
"""

from __future__ import annotations

import torch

from ._checks import check_positive_int
from .omp import omp


def normalize_atoms(dictionary: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Scale every column to unit L2 norm (a zero column stays zero)."""
    return dictionary / dictionary.norm(dim=0, keepdim=True).clamp_min(eps)


def random_dictionary(dim: int, num_atoms: int, *, generator: torch.Generator | None = None,
                      dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> torch.Tensor:
    """Gaussian atoms normalised to the unit sphere: the data-free starting point."""
    atoms = torch.randn(dim, num_atoms, generator=generator, dtype=dtype, device=generator.device if generator else device)
    return normalize_atoms(atoms.to(device) if device is not None else atoms)


def init_dictionary_from_data(
    x: torch.Tensor,
    num_atoms: int,
    n_nonzero: int,
    *,
    mod_iterations: int = 5,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """A [d, num_atoms] dictionary fitted to the rows of ``x`` [B, d] (see the module docstring)."""
    if x.dim() != 2:
        raise ValueError(f"x must be a 2-D tensor [B, d], got shape {list(x.shape)}")
    check_positive_int("num_atoms", num_atoms)
    check_positive_int("n_nonzero", n_nonzero, upper=num_atoms)
    if mod_iterations < 0:
        raise ValueError(f"mod_iterations must be >= 0, got {mod_iterations}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError("x contains NaN or infinite values")
    x = x.detach()
    nonzero_rows = x[x.norm(dim=1) > 0]
    if nonzero_rows.shape[0] == 0:
        raise ValueError("x has no non-zero rows to initialise a dictionary from")
    order = torch.randperm(nonzero_rows.shape[0], generator=generator, device=generator.device if generator else "cpu")
    picks = order.to(x.device)[: num_atoms]
    atoms = nonzero_rows[picks].t()
    if atoms.shape[1] < num_atoms:  # fewer signals than atoms: fill with random directions
        extra = random_dictionary(x.shape[1], num_atoms - atoms.shape[1], generator=generator, dtype=x.dtype)
        atoms = torch.cat([atoms, extra.to(x.device)], dim=1)
    dictionary = normalize_atoms(atoms)
    eye = torch.eye(num_atoms, dtype=x.dtype, device=x.device)
    for _ in range(mod_iterations):
        codes = omp(x, dictionary, n_nonzero).to_dense(num_atoms)
        updated = torch.linalg.solve(codes.t() @ codes + 1e-6 * eye, codes.t() @ x).t()
        used = codes.abs().sum(dim=0) > 0
        dictionary = normalize_atoms(torch.where(used, updated, dictionary))
    return dictionary


def kmeans(x: torch.Tensor, num_clusters: int, *, iterations: int = 10,
           generator: torch.Generator | None = None) -> torch.Tensor:
    """Lloyd's k-means on the rows of ``x`` [B, d]: the centroids as columns [d, num_clusters].

    The vanilla codebook's counterpart of ``init_dictionary_from_data``: centroids start as training
    vectors by k-means++ seeding (Arthur, Vassilvitskii 2007: each next one drawn with probability
    proportional to its squared distance from those chosen, so no two start in one cluster), and a
    cluster that empties keeps its centroid instead of collapsing.
    """
    if x.dim() != 2:
        raise ValueError(f"x must be a 2-D tensor [B, d], got shape {list(x.shape)}")
    check_positive_int("num_clusters", num_clusters)
    if iterations < 0:
        raise ValueError(f"iterations must be >= 0, got {iterations}")
    x = x.detach()
    device = generator.device if generator else torch.device("cpu")
    draws = torch.rand(num_clusters, generator=generator, device=device, dtype=torch.float64).to(x.device)
    norms = x.square().sum(dim=1)
    picks = [min(int(draws[0] * x.shape[0]), x.shape[0] - 1)]
    nearest = torch.full_like(norms, float("inf"))
    for draw in draws[1:]:
        nearest = torch.minimum(nearest, (norms - 2 * (x @ x[picks[-1]]) + norms[picks[-1]]).clamp_min(0))
        cumulative = nearest.double().cumsum(0)
        if cumulative[-1] > 0:  # inverse-CDF draw, proportional to the squared distance
            pick = int(torch.searchsorted(cumulative, draw * cumulative[-1], right=True).clamp_max(x.shape[0] - 1))
        else:  # every vector is already a centroid: any will do
            pick = int(draw * x.shape[0]) % x.shape[0]
        picks.append(pick)
    centroids = x[torch.tensor(picks, device=x.device)].t().contiguous()
    for _ in range(iterations):
        distance = centroids.square().sum(0, keepdim=True) - 2 * x @ centroids  # + |x|^2, the same for every centroid
        assignment = distance.argmin(dim=1)
        counts = torch.bincount(assignment, minlength=num_clusters).to(x.dtype)
        sums = torch.zeros_like(centroids).index_add_(1, assignment, x.t())
        centroids = torch.where(counts > 0, sums / counts.clamp_min(1), centroids)
    return centroids
