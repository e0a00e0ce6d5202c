"""params.yaml -> one typed, validated object: every tunable of the pipeline, by stage.

Loading checks the whole file before any stage does work: an unknown section or key, a wrong type
or a bad value fails at once, naming ``section.key`` and what is allowed.
"""

from __future__ import annotations

import inspect
import re
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import yaml

from sparse_vqvae.config import (DataConfig, EvaluateConfig, ExtractConfig, ModelConfig, PretrainConfig,
                                 PriorTrainConfig, TrainConfig, check_at_least,
                                 section_from_mapping)

PARAMS_FILE = Path("params.yaml")


@dataclass(frozen=True)
class RayConfig:
    """Where stage 1 runs: a local Ray instance, or an existing cluster joined by address."""

    address: str | None = None  # "host:port" of a running cluster (`ray start --head`); null: local ray.init()
    num_workers: int = 2  # training workers (DDP); train.batch_size is split between them
    cpus_per_worker: int = 1  # also each worker's torch threads
    use_gpu: str | bool = "auto"  # auto: GPU workers when the cluster has GPUs
    max_failures: int = 1  # restarts of the workers from their last checkpoint within one run

    def __post_init__(self) -> None:
        if self.use_gpu not in ("auto", True, False):
            raise ValueError(f"ray.use_gpu must be one of auto, true, false; got {self.use_gpu!r}")
        check_at_least("ray", "num_workers", self.num_workers, 1)
        check_at_least("ray", "cpus_per_worker", self.cpus_per_worker, 1)
        check_at_least("ray", "max_failures", self.max_failures, 0)


@dataclass(frozen=True)
class TrackingConfig:
    """MLflow: where runs are recorded."""

    tracking_uri: str | None = None  # null: $MLFLOW_TRACKING_URI, else sqlite:///<workspace>/mlflow.db
    experiment: str = "sparse-vqvae"
    log_every: int = 10  # stage-1 steps between metric logs

    def __post_init__(self) -> None:
        if not isinstance(self.experiment, str) or not self.experiment:
            raise ValueError(f"mlflow.experiment must be a non-empty string; got {self.experiment!r}")
        check_at_least("mlflow", "log_every", self.log_every, 1)


@dataclass(frozen=True)
class PipelineParams:
    data: DataConfig
    model: ModelConfig
    pretrain: PretrainConfig
    train: TrainConfig
    ray: RayConfig
    extract: ExtractConfig
    prior: PriorTrainConfig
    evaluate: EvaluateConfig
    mlflow: TrackingConfig

    def flat(self) -> dict[str, Any]:
        """``{"section.key": value}`` for every parameter (MLflow params, sweep tables)."""
        return {f"{section}.{key}": value for section, values in asdict(self).items() for key, value in values.items()}

    def for_outputs(self) -> dict[str, Any]:
        """The parameters to record inside a stage's outputs (a checkpoint's config): all but where runs
        are recorded and which cluster runs them (``mlflow``, ``ray.address``). Those are absolute paths
        and host names that differ between two clones of the same pipeline, and would give the same
        model two DVC hashes."""
        recorded = asdict(self)
        del recorded["mlflow"]
        recorded["ray"].pop("address")
        return recorded


_CLASSES = {"data": DataConfig, "model": ModelConfig, "pretrain": PretrainConfig, "train": TrainConfig,
            "ray": RayConfig, "extract": ExtractConfig, "prior": PriorTrainConfig, "evaluate": EvaluateConfig,
            "mlflow": TrackingConfig}


def parse_params(raw: Any) -> PipelineParams:
    """Validate a params mapping (as read from YAML) into PipelineParams."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ValueError(f"params must be a mapping of sections ({', '.join(_CLASSES)}); got {raw!r}")
    for section in raw:
        if section not in _CLASSES:
            raise ValueError(f"{section} is not a known section of params.yaml; allowed: {', '.join(_CLASSES)}")
    return PipelineParams(**{name: section_from_mapping(cls, name, raw.get(name)) for name, cls in _CLASSES.items()})


def load_params(path: str | Path = PARAMS_FILE) -> PipelineParams:
    """Read and validate params.yaml; every error names the file and the key."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"no parameter file at {path.resolve()}")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ValueError(f"{path} is not valid YAML: {error}") from error
    try:
        return parse_params(raw)
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from error


HEADER = """\
# Every tunable of the pipeline, by stage; validated into typed objects at load (tasks/params.py):
# an unknown key, a wrong type or a bad value fails before any stage works, naming the key.
# The defaults and their comments are written from the dataclasses (sparse_vqvae/config.py,
# tasks/params.py), the one place they are defined: `python -m tasks.params --write-defaults`.
"""


def _field_comments(cls: type) -> dict[str, str]:
    """Each field's trailing comment in the class source: the one description of a key."""
    pattern = re.compile(r"^\s+(\w+): [^=]+=.*?#\s*(.+)$")
    return {m.group(1): m.group(2).strip() for line in inspect.getsource(cls).splitlines()
            if (m := pattern.match(line))}


def render_defaults() -> str:
    """params.yaml with every default, each key commented as in its dataclass."""
    lines = [HEADER.rstrip("\n")]
    for section, cls in _CLASSES.items():
        lines.append(f"{section}:")
        comments = _field_comments(cls)
        for field in fields(cls):
            value = yaml.safe_dump(getattr(cls(), field.name), default_flow_style=True).strip()
            value = value.removesuffix("\n...").strip()
            comment = f" # {comments[field.name]}" if field.name in comments else ""
            lines.append(f"  {field.name}: {value}{comment}")
    return "\n".join(lines) + "\n"


def main() -> None:
    """``python -m tasks.params [FILE]``: validate a parameter file and say what is wrong, if anything;
    ``--write-defaults`` writes params.yaml from the dataclasses' defaults."""
    import sys

    if sys.argv[1:] == ["--write-defaults"]:
        PARAMS_FILE.write_text(render_defaults())
        print(f"wrote {PARAMS_FILE} from the defaults")
        return
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else PARAMS_FILE
    try:
        load_params(path)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    print(f"{path}: valid")


if __name__ == "__main__":
    main()
