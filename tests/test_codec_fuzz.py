"""benchmarks/codec_fuzz.py runs on the shipped photo model with both entropy models (it once looked for its
priors under an old file name and stopped before damaging a file)."""

import json
import sys
from pathlib import Path

import pytest

from sparse_vqvae.codec import VERSION


@pytest.fixture
def codec_fuzz():
    folder = str(Path(__file__).resolve().parents[1] / "benchmarks")
    sys.path.insert(0, folder)
    import codec_fuzz

    yield codec_fuzz
    sys.path.remove(folder)


def test_a_few_damaged_files_of_each_entropy_model_end_in_a_clear_error_or_the_same_image(codec_fuzz, tmp_path):
    output = tmp_path / "codec_fuzz.json"
    codec_fuzz.main(["--files", "16", "--prior-files", "4", "--output", str(output)])
    result = json.loads(output.read_text())
    assert result["svq_version"] == VERSION and result["files"] == 8 + 4
    assert {key.split("/")[0] for key in result["outcomes"]} == {"factorised", "prior"}
    assert result["crashes"] == 0 and result["silent_wrong_images"] == 0
