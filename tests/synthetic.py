"""Synthetic sparse-coding problems shared by the tests."""

import torch

from sparse_vqvae.sparse_coding import random_dictionary


def make_sparse_signals(batch, dim, num_atoms, k, noise, dtype=torch.float64, seed=0):
    """Exactly k-sparse combinations of a random unit-norm dictionary, plus Gaussian noise."""
    g = torch.Generator().manual_seed(seed)
    dictionary = random_dictionary(dim, num_atoms, generator=g, dtype=dtype)
    support = torch.rand(batch, num_atoms, generator=g).argsort(dim=1)[:, :k]
    magnitude = torch.rand(batch, k, generator=g, dtype=dtype) + 0.5
    sign = torch.where(torch.rand(batch, k, generator=g) < 0.5, -1.0, 1.0).to(dtype)
    codes = torch.zeros(batch, num_atoms, dtype=dtype).scatter_(1, support, magnitude * sign)
    x = codes @ dictionary.t() + noise * torch.randn(batch, dim, generator=g, dtype=dtype)
    return x, dictionary, support


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
