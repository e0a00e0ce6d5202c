"""One source of defaults: the configuration's dataclass defaults are the committed params.yaml."""

from dataclasses import asdict

import yaml

from tasks.params import parse_params

from .pipeline_workspace import REPO


def test_the_dataclass_defaults_equal_the_committed_params():
    committed = yaml.safe_load((REPO / "params.yaml").read_text())
    defaults = asdict(parse_params({}))
    assert defaults == committed
