import subprocess
import sys

import pytest
import yaml

from sparse_vqvae.config import ModelConfig, section_from_mapping
from tasks.params import load_params, parse_params

from .pipeline_workspace import REPO


def committed() -> dict:
    return yaml.safe_load((REPO / "params.yaml").read_text())


def test_committed_params_are_valid_and_typed():
    params = load_params(REPO / "params.yaml")
    assert params.model.selection_fn in ("vanilla", "rvq", "fsq", "omp", "qmp", "lasso")
    assert params.data.name == "embedded"  # the default runs anywhere, with no download
    flat = params.flat()
    assert flat["model.n_nonzero"] == params.model.n_nonzero and "ray.num_workers" in flat


@pytest.mark.parametrize("section, key, value, message", [
    ("model", "selection_fn", "omq", "model.selection_fn must be one of vanilla, rvq, fsq, omp, qmp, lasso; got 'omq'"),
    ("model", "n_nonzero", "two", "model.n_nonzero must be an integer; got 'two'"),
    ("model", "normalize_latents", "yes", "model.normalize_latents must be true or false"),
    ("model", "n_nonzro", 2, "model.n_nonzro is not a known key; allowed keys: selection_fn, maps"),
    ("train", "lr", 0, "train.lr must be a number > 0"),
    ("data", "name", "mnist", "data.name must be one of embedded, cifar10, cifar100, imagefolder, photos, imagenet"),
    ("ray", "use_gpu", "maybe", "ray.use_gpu must be one of auto, true, false"),
    ("ray", "address", 5, "ray.address must be a string or null"),
    ("prior", "dropout", 1.5, "prior.dropout must be a number in [0, 1)"),
    ("prior", "class_conditional", "yes", "prior.class_conditional must be true or false; got 'yes'"),
    ("prior", "label_dropout", 1, "prior.label_dropout must be a number in [0, 1); got 1"),
    ("prior", "num_workers", 0, "prior.num_workers must be an integer >= 1; got 0"),
    ("prior", "num_workers", 3, "prior.batch_size (64) must be a multiple of prior.num_workers (3)"),
])
def test_a_bad_value_names_the_key_and_what_is_allowed(section, key, value, message):
    raw = committed()
    raw[section][key] = value
    with pytest.raises(ValueError) as error:
        parse_params(raw)
    assert message in str(error.value)


def test_an_unknown_section_is_refused():
    with pytest.raises(ValueError, match="trian is not a known section of params.yaml; allowed: data, model"):
        parse_params({**committed(), "trian": {"steps": 1}})


def test_a_missing_section_takes_its_defaults():
    raw = committed()
    del raw["prior"]
    assert parse_params(raw).prior.steps > 0


def test_section_loader_refuses_a_non_mapping():
    with pytest.raises(ValueError, match="model must be a mapping"):
        section_from_mapping(ModelConfig, "model", [1, 2])


def test_params_command_reports_the_file_and_key(tmp_path):
    raw = committed()
    raw["model"]["selection_fn"] = "omq"
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    done = subprocess.run([sys.executable, "-m", "tasks.params", str(path)], capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 2
    assert "params.yaml: model.selection_fn must be one of vanilla, rvq, fsq, omp, qmp, lasso; got 'omq'" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("old, new, said", [
    (dict(levels=1), dict(maps=1), "model.levels is now model.maps"),
    (dict(selection_fn="fista"), dict(selection_fn="lasso", lasso_solver="homotopy"), "fista is now lasso"),
    (dict(selection_fn="rvq", n_nonzero=3), dict(selection_fn="rvq", stages=3, n_nonzero=1), "model.stages"),
])
def test_old_spellings_still_load_with_a_deprecation_message(old, new, said):
    """Users' params files and older checkpoints keep working, and say what to write instead."""
    with pytest.warns(FutureWarning, match=said):
        upgraded = section_from_mapping(ModelConfig, "model", old)
    assert upgraded == ModelConfig(**new)


def test_old_spellings_in_a_params_file_load_with_a_deprecation_message():
    raw = committed()
    raw["model"] = {key: value for key, value in raw["model"].items() if key not in ("maps", "stages")}
    raw["model"] |= {"levels": 1, "selection_fn": "rvq", "n_nonzero": 4}
    with pytest.warns(FutureWarning, match="model.levels is now model.maps"):
        params = parse_params(raw)
    assert (params.model.maps, params.model.stages, params.model.n_nonzero) == (1, 4, 1)


@pytest.mark.parametrize("settings, message", [
    (dict(selection_fn="omp", stages=2), "model.stages is for selection_fn rvq only"),
    (dict(selection_fn="rvq", n_nonzero=2, stages=2), "a residual VQ's stage count is model.stages"),
    (dict(selection_fn="lasso", lasso_solver="lars"), "model.lasso_solver must be one of homotopy, fista"),
])
def test_a_key_of_another_family_is_refused_with_the_right_one(settings, message):
    with pytest.raises(ValueError, match=message):
        ModelConfig(**settings)


def makefile_settings(name: str) -> dict[str, str]:
    """The -S key=value settings of a Makefile variable (its continued lines joined, its variables expanded)."""
    text = (REPO / "Makefile").read_text().replace("\\\n", " ")
    variables = dict(line.split(" := ", 1) for line in text.splitlines() if " := " in line)
    value = variables[name]
    for other, replacement in variables.items():
        value = value.replace(f"$({other})", replacement.strip())
    flags = value.split()
    return dict(flags[i + 1].split("=", 1) for i in range(len(flags)) if flags[i] == "-S")


def with_settings(settings: dict[str, str]) -> dict:
    raw = committed()
    for key, value in settings.items():
        section, name = key.split(".")
        raw[section][name] = yaml.safe_load(value)
    return raw


def test_make_photo_models_two_phases_are_valid_params_and_the_second_continues_the_first():
    first = parse_params(with_settings(makefile_settings("PHOTO_RECIPE")))
    second = parse_params(with_settings({**makefile_settings("PHOTO_RECIPE"), **makefile_settings("PHOTO_CONTINUED")}))
    assert first.pretrain.init_from is None and second.pretrain.init_from == "checkpoints/photo-phase1.pt"
    assert second.model.stage_dropout_top_share > 0 == first.model.stage_dropout_top_share
    # the same network: phase 2 loads phase 1's weights
    architecture = ("selection_fn", "maps", "num_strides", "channels", "res_channels", "embed_dim", "num_atoms",
                    "stages")
    assert all(getattr(first.model, key) == getattr(second.model, key) for key in architecture)
