"""Sparse coding in PyTorch: batched OMP and LASSO (FISTA, homotopy), and their task-driven gradients."""

from .dictionary import init_dictionary_from_data, kmeans, normalize_atoms, random_dictionary
from .fista import fista
from .lars import lasso
from .omp import SparseCode, omp
from .tddl import sparse_code, sparse_pairs

__all__ = [
    "SparseCode",
    "fista",
    "init_dictionary_from_data",
    "kmeans",
    "lasso",
    "normalize_atoms",
    "omp",
    "random_dictionary",
    "sparse_code",
    "sparse_pairs",
]
