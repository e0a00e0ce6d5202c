"""sparse-vqvae: VQ-VAE-2 whose quantizer codes each latent with a few atoms of a learned dictionary."""

__version__ = "0.1.0"  # the package's version: pyproject.toml reads it from here
