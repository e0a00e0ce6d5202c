"""benchmarks/photo_codec.py --previous: an earlier run's curves read back, or a clear refusal; photo_cap.py's reading
of stage dropout."""
import json
from types import SimpleNamespace

import pytest

from sparse_vqvae.vqvae import VQVAE2

from .benchmark_scripts import benchmark_script
from .tiny import tiny_config


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


def test_the_targets_read_the_curves_against_jpeg_and_webp():
    def curve(scale, psnrs):
        return [{"setting": i + 1, "bpp": scale * 0.2 * 1.5 ** i, "psnr": p} for i, p in enumerate(psnrs)]

    jpeg = curve(1.0, [24.0, 26.0, 28.0, 30.0, 32.0, 34.0])
    with benchmark_script("photo_codec") as photo_codec:
        # Half JPEG's bits at every PSNR up to 30 dB, then nothing more: capped below 33 dB.
        capped = photo_codec.targets(curve(0.5, [24.0, 26.0, 28.0, 30.0, 30.1]), jpeg, jpeg)
        assert capped["top_psnr"] == {"figure": 30.1, "target": ">= 33", "met": False}
        assert capped["smallest_step_db"]["met"] is False  # 0.1 dB
        assert -55.0 < capped["bd_rate_vs_jpeg_26_33"]["figure"] < -45.0  # about half, over 26-30.1 dB alone
        assert capped["bd_rate_vs_jpeg_26_33"]["met"] is True
        assert capped["bd_rate_vs_jpeg_psnr_range"] == [26.0, 30.1]
        rising = photo_codec.targets(curve(0.5, [24.0, 26.0, 28.0, 30.0, 32.0, 34.0]), jpeg, jpeg)
        assert rising["top_psnr"]["met"] and rising["smallest_step_db"]["met"] and rising["bd_psnr_vs_jpeg"]["met"]
        assert rising["bd_rate_vs_jpeg_psnr_range"] == [26.0, 33.0]
        assert photo_codec.targets(curve(0.5, [27.0, 29.0, 31.0]), jpeg, jpeg)["bd_rate_vs_jpeg_psnr_range"] == [27.0,
                                                                                                        31.0]
        # Half JPEG's bits up to 33 dB, four times its bits at 36 dB: only the half counts.
        reaching = curve(1.0, [24.0, 26.0, 28.0, 30.0, 32.0, 33.0, 36.0])
        split = curve(0.5, [24.0, 26.0, 28.0, 30.0, 32.0, 33.0]) + [{**reaching[6], "bpp": 4 * reaching[6]["bpp"]}]
        assert photo_codec.targets(split, reaching, reaching)["bd_rate_vs_jpeg_26_33"]["figure"] < -45.0
        assert photo_codec.bd_rate(reaching, split) > -40.0
        worse = photo_codec.targets(curve(2.0, [24.0, 26.0, 28.0]), jpeg, jpeg)
        assert worse["bd_rate_vs_webp"] == {"figure": pytest.approx(100.0, abs=0.5), "target": "<= 25", "met": False}
        assert worse["bd_psnr_vs_jpeg"]["met"] is False


def test_the_cap_reads_stage_dropout_s_draw_weighted_toward_the_top_quality(tmp_path):
    """photo_cap's stage-dropout row: with half the images at the top quality, 4 stages, the top quality is 5/8 of
    the images, and its share of the objective weighs each quality's error by how often it is drawn."""
    with benchmark_script("photo_cap") as cap:
        model = VQVAE2(tiny_config("rvq", maps=1, stages=4, stage_dropout=True, stage_dropout_top_share=0.5))
        checkpoint = SimpleNamespace(config={"params": {"train": {"steps": 100, "batch_size": 8}}}, step=100)
        row = cap.stage_dropout(model, checkpoint, tmp_path / "no card", [4.0, 3.0, 2.0, 1.0])
    assert row["top_quality_share_of_images"] == pytest.approx(5 / 8) and row["crops_with_every_stage"] == 500
    assert row["top_quality_share_of_objective"] == pytest.approx((5 / 8) / ((4 + 3 + 2) / 8 + 5 / 8))
