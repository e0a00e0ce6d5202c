"""Where each stage reads and writes, relative to the workspace root (the folder holding dvc.yaml).

dvc.yaml names the same paths; a test checks that every stage's outputs listed here are its outs there.
"""

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
CHECKPOINTS = Path("checkpoints")  # Ray Train's storage: not a DVC out, so it survives a rerun (resume)
TRAIN_CODES = Path("codes/train")
TEST_CODES = Path("codes/test")
PRIORS = Path("models/prior")  # top.pt, bottom.pt (conditioned on the top), codec.pt
FREQUENCY_MODEL = PRIORS / "codec.pt"  # the compressed-file format's factorised entropy model
EVAL = Path("eval")
METRICS = Path("metrics")  # one <stage>.json per stage: its figures (DVC metrics, committed)
TIMINGS = METRICS / "timings"  # one <stage>.json per stage: its wall time (not tracked: differs every run)
PLOTS = Path("plots")  # CSV curves for `dvc plots show`


def prior_path(index: int) -> Path:
    return prior_file(PRIORS, index)


def stage_metrics(stage: str) -> Path:
    return METRICS / f"{stage}.json"


def stage_timings(stage: str) -> Path:
    return TIMINGS / f"{stage}.json"
