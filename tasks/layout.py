"""Where each stage reads and writes, relative to the workspace root (the folder holding dvc.yaml).

dvc.yaml names the same paths; a test checks that every stage's outputs listed here are its outs there.
What outlives a run - MLflow's store, the checkpoints a rerun resumes from - belongs to the project, not to
the folder a stage runs in: see ``project_root``.
"""

import os
from pathlib import Path

from sparse_vqvae.maps import MAP_NAMES, prior_file  # noqa: F401 (MAP_NAMES: the stages name their metrics after it)

PREPARED = Path("data/prepared")
TRAIN_IMAGES = PREPARED / "train.npy"
TEST_IMAGES = PREPARED / "test.npy"
DATA_SUMMARY = PREPARED / "summary.json"
PRETRAINED_DIR = Path("models/pretrained")  # the model, pictures of its dictionaries
PRETRAINED = PRETRAINED_DIR / "model.pt"
VQVAE_DIR = Path("models/vqvae")  # the trained model, its dictionaries, its training curves
VQVAE = VQVAE_DIR / "model.pt"
CHECKPOINTS = Path("checkpoints")  # under the project root: not a DVC out, so it survives a rerun (resume)
TRAIN_CODES = Path("codes/train")
TEST_CODES = Path("codes/test")
PRIORS = Path("models/prior")  # top.pt, bottom.pt (conditioned on the top), codec.pt
FREQUENCY_MODEL = PRIORS / "codec.pt"  # the compressed-file format's factorised entropy model
JUDGE_DIR = Path("models/judge")  # the sample-quality judge (CIFAR-10 data only) and judge.json: which, or why none
JUDGE = JUDGE_DIR / "judge.pt"
JUDGE_SUMMARY = JUDGE_DIR / "judge.json"
EVAL = Path("eval")
METRICS = Path("metrics")  # one <stage>.json per stage: its figures (DVC metrics, committed)
TIMINGS = METRICS / "timings"  # one <stage>.json per stage: its wall time (not tracked: differs every run)
PLOTS = Path("plots")  # CSV curves for `dvc plots show`


def labels_path(split: str) -> Path:
    """A split's class labels (int64 .npy), where its source has classes."""
    return PREPARED / f"{split}_labels.npy"


def prior_path(index: int) -> Path:
    return prior_file(PRIORS, index)


def stage_metrics(stage: str) -> Path:
    return METRICS / f"{stage}.json"


def stage_timings(stage: str) -> Path:
    return TIMINGS / f"{stage}.json"


def project_root() -> Path:
    """The project the stages run for: the working directory, except in the copy that ``dvc exp run --temp`` or
    ``--queue`` runs in (``<project>/.dvc/tmp/exps/<tmp>/``, deleted afterwards), where it is the project that DVC
    names in $DVC_ROOT (set for every stage command: in experiments, the parent repository). A $DVC_ROOT that the
    working directory is not inside (inherited from another repository's DVC) is ignored."""
    cwd = Path.cwd().resolve()
    named = os.environ.get("DVC_ROOT")
    if named:
        root = Path(named).resolve()
        if cwd == root or cwd.is_relative_to(root / ".dvc" / "tmp"):
            return root
    return cwd


def checkpoints() -> Path:
    """The project's checkpoint folder (absolute): a queued or temporary experiment resumes from, and leaves, its
    checkpoints there, not in its copy."""
    return project_root() / CHECKPOINTS
