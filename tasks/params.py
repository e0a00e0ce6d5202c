"""params.yaml -> one typed, validated object: every tunable of the pipeline, by stage.

Loading checks the whole file before any stage does work: an unknown section or key, a wrong type
or a bad value fails at once, naming ``section.key`` and what is allowed.
"""

from __future__ import annotations

import inspect
import os
import re
import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import yaml

from sparse_vqvae.config import (DataConfig, EvaluateConfig, ExtractConfig, JudgeParams, ModelConfig, PretrainConfig,
                                 PriorTrainConfig, TrainConfig, check_at_least,
                                 section_from_mapping)

PARAMS_FILE = Path("params.yaml")


@dataclass(frozen=True)
class RayConfig:
    """How stage 1's training is split: a parameter, since the results depend on it. train.batch_size is split
    between the workers; the global batch holds the same images for any worker count (a DistributedSampler
    deals one permutation out), but the per-image random draws (stage dropout, qmp's training multipliers,
    crops of photos) come from each worker's generator and the gradient sums in another order. Where the
    workers run is a setting (RaySettings), not a parameter."""

    num_workers: int = 2  # training workers (DDP); train.batch_size is split between them (changes the results)

    def __post_init__(self) -> None:
        check_at_least("ray", "num_workers", self.num_workers, 1)

    @staticmethod
    def renamed(mapping: Any) -> Any:
        """params.yaml's ray section less the keys that are settings now (RaySettings): checked as settings,
        warned about (FutureWarning), and still used by ``ray_settings`` where the environment sets nothing."""
        if not isinstance(mapping, dict):
            return mapping
        moved = {key: mapping[key] for key in MOVED_RAY_KEYS if key in mapping}
        if moved:
            section_from_mapping(RaySettings, "ray", moved)
            names = ", ".join(f"ray.{key} ({SETTINGS_ENV}RAY_{key.upper()})" for key in moved)
            many = len(moved) > 1
            warnings.warn(f"params.yaml: {names} {'are settings' if many else 'is a setting'} now, not parameters "
                          f"(a change would rerun every stage after stage 1): set the environment "
                          f"variable{'s' if many else ''} instead and delete the key{'s' if many else ''}; "
                          f"params.yaml's value{'s are' if many else ' is'} used until then", FutureWarning,
                          stacklevel=2)
        return {key: value for key, value in mapping.items() if key not in moved}


SETTINGS_ENV = "SPARSE_VQVAE_"  # settings: SPARSE_VQVAE_<SECTION>_<KEY>, a YAML value (null, true, 4, host:6379)
MOVED_RAY_KEYS = ("address", "cpus_per_worker", "use_gpu", "max_failures")  # params.yaml's ray keys until issue 28


@dataclass(frozen=True)
class RaySettings:
    """Where stage 1 runs: settings, not parameters. They change where and how fast the workers run, not what
    they compute (but for rounding: thread counts and devices sum in other orders), so DVC reruns nothing when
    they change and the model files do not record them. From the environment: SPARSE_VQVAE_RAY_<KEY>."""

    address: str | None = None  # "host:port" of a running cluster; null: $RAY_ADDRESS, else a local Ray instance
    cpus_per_worker: int = 1  # also each worker's torch threads
    use_gpu: str | bool = "auto"  # auto: GPU workers when the cluster has a GPU per worker
    max_failures: int = 1  # restarts of the workers from their last checkpoint within one run
    storage_path: str | None = None  # checkpoints every node reads: a shared path or s3://, gs:// URI; null: <project>/checkpoints
    ship_code: str | bool = "auto"  # sparse_vqvae/ and tasks/ to the workers as Ray py_modules; auto: when joining a cluster

    def __post_init__(self) -> None:
        if self.use_gpu not in ("auto", True, False):
            raise ValueError(f"ray.use_gpu must be one of auto, true, false; got {self.use_gpu!r}")
        if self.ship_code not in ("auto", True, False):
            raise ValueError(f"ray.ship_code must be one of auto, true, false; got {self.ship_code!r}")
        check_at_least("ray", "cpus_per_worker", self.cpus_per_worker, 1)
        check_at_least("ray", "max_failures", self.max_failures, 0)


@dataclass(frozen=True)
class FlowSettings:
    """How the Prefect flows run their stages: settings, from the environment (SPARSE_VQVAE_FLOW_<KEY>)."""

    stage_timeout: float | None = 86400.0  # seconds a stage may run before the flow stops it (null: no limit)
    sweep_concurrency: int = 1  # sweep variants run at once (each a pipeline: CPUs, memory, Ray instances)
    mlflow_ui: str = "http://127.0.0.1:5000"  # where the flows' links go when MLflow's store is a local file (make mlflow-ui)

    def __post_init__(self) -> None:
        if self.stage_timeout is not None:
            check_at_least("flow", "stage_timeout", self.stage_timeout, 1, float)
        check_at_least("flow", "sweep_concurrency", self.sweep_concurrency, 1)


@dataclass(frozen=True)
class DataSettings:
    """How prepare_data decodes images: a setting (SPARSE_VQVAE_DATA_<KEY>), since the prepared files are the
    same bytes for any value."""

    workers: int | None = None  # processes decoding images; null: up to 4, no more than the CPUs

    def __post_init__(self) -> None:
        if self.workers is not None:
            check_at_least("data", "workers", self.workers, 0)


def _from_environment(cls: type, section: str, env: Mapping[str, str], base: dict | None = None) -> Any:
    """Section ``cls`` from ``SPARSE_VQVAE_<SECTION>_<KEY>`` variables over ``base``; errors name the variable."""
    values = dict(base or {})
    for field in fields(cls):
        name = f"{SETTINGS_ENV}{section.upper()}_{field.name.upper()}"
        if name in env:
            try:
                values[field.name] = yaml.safe_load(env[name]) if env[name].strip() else None
            except yaml.YAMLError as error:
                raise ValueError(f"${name} is not a YAML value: {error}") from error
            try:
                section_from_mapping(cls, section, {field.name: values[field.name]})
            except ValueError as error:
                raise ValueError(f"${name}: {error}") from error
    return section_from_mapping(cls, section, values)


def ray_settings(env: Mapping[str, str] | None = None, params_file: str | Path = PARAMS_FILE) -> RaySettings:
    """Where stage 1 runs: $SPARSE_VQVAE_RAY_<KEY>, else params.yaml's old ray keys (warned about when the
    parameters load), else the defaults; the address falls back to $RAY_ADDRESS, as Ray's own tools do."""
    env = os.environ if env is None else env
    legacy = {}
    if Path(params_file).is_file():
        raw = yaml.safe_load(Path(params_file).read_text()) or {}
        ray_section = raw.get("ray") if isinstance(raw, dict) else None
        if isinstance(ray_section, dict):
            legacy = {key: ray_section[key] for key in MOVED_RAY_KEYS if key in ray_section}
    settings = _from_environment(RaySettings, "ray", env, legacy)
    if settings.address is None and env.get("RAY_ADDRESS"):
        settings = replace(settings, address=env["RAY_ADDRESS"])
    return settings


def flow_settings(env: Mapping[str, str] | None = None) -> FlowSettings:
    return _from_environment(FlowSettings, "flow", os.environ if env is None else env)


def data_settings(env: Mapping[str, str] | None = None) -> DataSettings:
    return _from_environment(DataSettings, "data", os.environ if env is None else env)


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
    judge: JudgeParams
    mlflow: TrackingConfig

    def flat(self) -> dict[str, Any]:
        """``{"section.key": value}`` for every parameter (MLflow params, sweep tables)."""
        return {f"{section}.{key}": value for section, values in asdict(self).items() for key, value in values.items()}

    def for_outputs(self) -> dict[str, Any]:
        """The parameters to record inside a stage's outputs (a checkpoint's config): all but where runs
        are recorded (``mlflow``: absolute paths and host names that differ between two clones of the same
        pipeline, and would give the same model two DVC hashes)."""
        recorded = asdict(self)
        del recorded["mlflow"]
        return recorded


_CLASSES = {"data": DataConfig, "model": ModelConfig, "pretrain": PretrainConfig, "train": TrainConfig,
            "ray": RayConfig, "extract": ExtractConfig, "prior": PriorTrainConfig, "evaluate": EvaluateConfig,
            "judge": JudgeParams, "mlflow": TrackingConfig}


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
