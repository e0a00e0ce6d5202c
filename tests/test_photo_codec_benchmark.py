"""benchmarks/photo_codec.py --previous: an earlier run's curves read back, or a clear refusal."""
import json

import pytest

from .benchmark_scripts import benchmark_script


def test_an_earlier_run_gives_its_model_and_curves_and_a_foreign_file_is_refused(tmp_path):
    run = {"model": "photo", "fingerprint": "a951729e", "threads": 2, "qualities": [1, 2],
           "sets": {"photos": {"images": ["041.png"], "ours": [{"bpp": 0.1, "psnr": 25.0}], "jpeg": []}}}
    good, bad, broken = tmp_path / "good.json", tmp_path / "bad.json", tmp_path / "broken.json"
    good.write_text(json.dumps(run))
    bad.write_text(json.dumps({"sets": {}}))
    broken.write_text("{not json")
    with benchmark_script("photo_codec") as photo_codec:
        earlier = photo_codec.earlier_run(good)
        assert earlier == {"model": "photo", "fingerprint": "a951729e",
                           "sets": {"photos": {"images": ["041.png"], "ours": [{"bpp": 0.1, "psnr": 25.0}]}}}
        for path in (bad, broken, tmp_path / "missing.json"):
            with pytest.raises(SystemExit, match=f"--previous: .*{path.name}"):
                photo_codec.earlier_run(path)
