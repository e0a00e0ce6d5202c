"""benchmarks/codec_fuzz.py runs on the shipped photo model with both entropy models (it once looked for its
priors under an old file name and stopped before damaging a file)."""

import json

import pytest

from sparse_vqvae.codec import VERSION

from .benchmark_scripts import benchmark_script


@pytest.fixture
def codec_fuzz():
    with benchmark_script("codec_fuzz") as module:
        yield module


def test_a_few_damaged_files_of_each_entropy_model_end_in_a_clear_error_or_the_same_image(codec_fuzz, tmp_path):
    output = tmp_path / "codec_fuzz.json"
    codec_fuzz.main(["--files", "16", "--prior-files", "4", "--output", str(output)])
    result = json.loads(output.read_text())
    assert result["svq_version"] == VERSION and result["files"] == 8 + 4
    assert {key.split("/")[0] for key in result["outcomes"]} == {"factorised", "prior"}
    assert result["crashes"] == 0 and result["silent_wrong_images"] == 0
