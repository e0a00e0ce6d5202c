"""Prefect flows that chain the stages in tasks/ (the pipeline, and sweeps over quantizers)."""
