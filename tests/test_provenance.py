"""Checkpoints belong to the code that made them: the library's source fingerprint (the whole-pipeline
check, retraining after a library change and resuming otherwise, is in test_pipeline_rvq.py)."""

from __future__ import annotations

import shutil

from sparse_vqvae.provenance import PACKAGE, source_fingerprint


def test_the_source_fingerprint_follows_every_library_file(tmp_path):
    copy = tmp_path / "sparse_vqvae"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    assert source_fingerprint(copy) == source_fingerprint()
    with (copy / "sparse_coding" / "omp.py").open("a") as handle:
        handle.write("\n# an edit\n")
    assert source_fingerprint(copy) != source_fingerprint()
