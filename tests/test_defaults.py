"""One source of defaults: params.yaml is written from the configuration's dataclasses, values and comments."""

from dataclasses import asdict

import yaml

from tasks.params import parse_params, render_defaults

from .pipeline_workspace import REPO


def test_the_committed_params_are_the_dataclass_defaults():
    committed = (REPO / "params.yaml").read_text()
    assert yaml.safe_load(committed) == asdict(parse_params({}))
    assert committed == render_defaults(), "run `python -m tasks.params --write-defaults`"

