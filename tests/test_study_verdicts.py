"""The equal-rate study's verdicts: which family beats which, and whether doubling the budget flips it."""
import importlib
import json
from pathlib import Path

import pytest

from .benchmark_scripts import benchmark_script
from .test_bd_rate import curve

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture
def study(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # the scripts import their siblings by name
    return importlib.import_module("rate_distortion_study")


def points(scale: float) -> list[dict]:
    """test_bd_rate's curve at ``scale`` times its rate, as study points (no prior-coded sizes)."""
    return [dict(p, bpp_prior=None) for p in curve(scale)]


def families(omp_scale: float) -> dict[str, list[dict]]:
    return {"vanilla": points(1.0), "rvq": points(0.9), "omp": points(omp_scale)}


def test_better_reads_bd_rate_first_then_bd_psnr(study):
    assert study.better({"vs_vanilla": -12.0, "vs_vanilla_bd_psnr": -0.1}, "vanilla") is True
    assert study.better({"vs_vanilla": 3.0, "vs_vanilla_bd_psnr": 0.5}, "vanilla") is False
    # No shared PSNR range: the verdict is BD-PSNR's, at equal rate.
    assert study.better({"vs_rvq": None, "vs_rvq_bd_psnr": 0.4}, "rvq") is True
    assert study.better({"vs_rvq": None, "vs_rvq_bd_psnr": -0.4}, "rvq") is False
    assert study.better({"vs_rvq": None, "vs_rvq_bd_psnr": None}, "rvq") is None


def test_compare_gives_each_family_its_bd_rate_against_both_anchors(study):
    table = study.compare(families(0.5))
    assert table["omp"]["vs_vanilla"] == pytest.approx(-50.0, abs=1e-6)
    assert table["omp"]["vs_rvq"] == pytest.approx(100 * (0.5 / 0.9 - 1), abs=1e-6)
    assert "vs_vanilla_prior" not in table["omp"]  # no prior-coded sizes: no prior BD-rate
    assert "vs_vanilla" not in table["vanilla"]
    assert table["vanilla"]["vs_rvq"] == pytest.approx(100 * (1 / 0.9 - 1), abs=1e-6)  # vanilla needs 11% more bits


def test_a_verdict_that_flips_with_the_budget_is_reported_changed(study):
    steady = study.doubling_check(families(0.5), families(0.6), 600)
    assert steady["unchanged"] is True and steady["undetermined"] == []
    assert steady["comparisons"]["omp vs vanilla"]["better"] == [True, True]
    assert steady["steps"] == [600, 1200]
    assert steady["flipped"] == [] and steady["sparse_unchanged"] is True

    flipped = study.doubling_check(families(0.5), families(1.5), 600)
    assert flipped["unchanged"] is False and flipped["sparse_unchanged"] is False
    assert flipped["comparisons"]["omp vs rvq"]["better"] == [True, False]
    assert "omp vs rvq" in flipped["flipped"]


def test_a_flip_among_the_codebooks_leaves_the_sparse_verdict_standing(study):
    """Doubling the steps reorders vanilla and rvq but not omp against either: 'CHANGED', the sparse verdict holds."""
    short, long = families(0.5), families(0.5)
    long["rvq"] = points(1.2)  # rvq was cheaper than vanilla (0.9), now dearer
    check = study.doubling_check(short, long, 600)
    assert check["unchanged"] is False and check["sparse_unchanged"] is True
    assert set(check["flipped"]) == {"vanilla vs rvq", "rvq vs vanilla"}


def test_comparisons_without_a_common_range_are_listed_not_counted_as_agreement(study):
    apart = {"vanilla": points(1.0), "omp": [dict(p, bpp=p["bpp"] * 100, psnr=p["psnr"] + 30) for p in points(1.0)]}
    check = study.doubling_check(apart, apart, 600)
    assert check["unchanged"] is None
    assert check["undetermined"] == ["omp vs vanilla"]


def test_each_seed_is_compared_with_the_anchors_of_its_own_seed(study):
    """Two seeds of the anchors and of a family: each seed's BD-rate against the same seed's anchors (the spread);
    a family trained with one seed only is compared with each seed's anchors."""
    seeded = lambda pts, seed: [dict(p, settings={"seed": seed}) for p in pts]  # noqa: E731
    trained = {"vanilla": seeded(points(1.0), 0) + seeded(points(2.0), 1),
               "omp": seeded(points(0.5), 0) + seeded(points(0.5), 1), "lasso": points(1.0)}
    assert study.compare(trained, 0)["omp"]["vs_vanilla"] == pytest.approx(-50.0, abs=1e-6)
    assert study.compare(trained, 1)["omp"]["vs_vanilla"] == pytest.approx(-75.0, abs=1e-6)
    assert study.compare(trained, 1)["lasso"]["vs_vanilla"] == pytest.approx(-50.0, abs=1e-6)


def test_kept_only_reads_the_kept_points_lists_the_rest_and_finds_their_library(study, tmp_path, monkeypatch):
    """--kept-only trains nothing: the points kept under the keys of the library they were measured with, every
    other model of the study listed as missing, the summary marked incomplete - and no seed's BD-rate made of
    another seed's points."""
    budget = {"pretrain_steps": 1, "steps": 1, "prior_steps": 0, "images": 1, "prior_images": 0}
    seed, set_name, family, config = next(study.study_models(["embedded"], ["vanilla"], [0, 1]))
    kept = [dict(p, settings={"seed": seed, "selection_fn": "vanilla", "num_atoms": 64}) for p in points(1.0)]
    key = study.model_key(set_name, study.SETS[set_name], config, budget, seed, source="feedface")
    (tmp_path / set_name).mkdir()
    (tmp_path / set_name / f"{key}.json").write_text(json.dumps(kept))

    monkeypatch.setattr(study, "library_sources", lambda: iter([("0123", None), ("feedface", "c0ffee")]))
    assert study.kept_source(tmp_path, ["embedded"], ["vanilla"], budget, [0, 1]) == ("feedface", "c0ffee")
    results, missing = study.kept_only(tmp_path, ["embedded"], ["vanilla"], budget, [0, 1], "feedface")
    assert results == {"embedded": {"vanilla": kept}}
    assert len(missing) == 2 * len(study.FAMILIES["vanilla"]) - 1  # both seeds of every vanilla model but one
    assert {"set": "embedded", "family": "vanilla", "settings": {"selection_fn": "vanilla", "num_atoms": 64},
            "seed": 1} in missing  # named against the identity defaults: the same whatever make run's default is
    summary = study.summarised(results, budget, None, [0, 1], {"source": "feedface"}, missing)
    assert summary["complete"] is False and summary["missing"] == missing
    assert summary["bd_rate_by_seed"]["embedded"]["1"] == {}  # seed 1 not measured: not seed 0's points again


def test_kept_only_runs_the_doubling_check_on_the_kept_points_at_twice_the_steps(study, tmp_path, monkeypatch):
    """--kept-only --doubling-check: the check reads the models kept at twice --steps and lists the doubled models
    not measured yet apart from the study's own."""
    budget = {"pretrain_steps": 1, "steps": 1, "prior_steps": 0, "images": 1, "prior_images": 0}
    (tmp_path / "embedded").mkdir()
    for steps, scale in ((1, 1.0), (2, 0.8)):
        for seed, set_name, family, config in study.study_models(["embedded"], ["vanilla"], [0]):
            at = {**budget, "steps": steps}  # the check's priors: none, as the study's here
            key = study.model_key(set_name, study.SETS[set_name], config, at, seed, source="feedface")
            kept = [dict(p, ms_ssim=0.9, settings={"seed": seed, "num_atoms": config.num_atoms}) for p in points(scale)]
            (tmp_path / set_name / f"{key}.json").write_text(json.dumps(kept))
    output = tmp_path / "study.json"
    monkeypatch.setattr("sys.argv", ["rate_distortion_study.py", "--kept-only", "--source", "feedface", "--no-mlflow",
                                     "--doubling-check", "--sets", "embedded", "--families", "vanilla,omp",
                                     "--seeds", "0", "--pretrain-steps", "1", "--steps", "1", "--prior-steps", "0",
                                     "--images", "1", "--prior-images", "0", "--points", str(tmp_path),
                                     "--output", str(output)])
    study.main()
    check = json.loads(output.read_text())["summary"]["doubling_check"]["embedded"]
    assert check["steps"] == [1, 2]
    assert check["points_at_double"]["vanilla"][0]["bpp"] == pytest.approx(0.8 * points(1.0)[0]["bpp"])
    assert {m["family"] for m in check["missing"]} == {"omp"}  # omp kept at neither budget: missing at both
    assert len(check["missing"]) == len(study.FAMILIES["omp"])

def sample_row(seed: int, bpp: float, fd: float, **settings) -> dict:
    return {"seed": seed, "settings": settings, "bpp_prior": bpp, "fd": fd}


def test_a_family_s_samples_are_judged_against_vanilla_s_best_at_no_more_bits(study):
    # vanilla's FD rises with its bits: its best at 1.0 bpp is its 0.3 bpp model's 140, not an interpolation
    vanilla = [sample_row(0, 0.3, 140.0, n=64), sample_row(0, 0.5, 170.0, n=1024),
               sample_row(1, 0.3, 150.0, n=64)]
    qmp = [sample_row(0, 0.2, 100.0, k=0), sample_row(0, 0.5, 120.0, k=1), sample_row(0, 1.0, 145.0, k=2),
           sample_row(1, 0.5, 155.0, k=1)]
    omp = [sample_row(0, 0.4, 139.0, k=1)]
    verdict = study.synthesis_at_equal_bits({"vanilla": vanilla, "qmp": qmp, "omp": omp})
    seed0 = verdict["families"]["qmp"]["0"]
    assert seed0["models"][0]["vanilla_fd"] is None  # no vanilla model that cheap: not compared
    assert [m["vanilla_fd"] for m in seed0["models"][1:]] == [140.0, 140.0]
    assert seed0["best"]["settings"] == {"k": 1} and seed0["best"]["margin"] == pytest.approx(-20.0)
    assert verdict["families"]["qmp"]["1"]["at_most_vanilla"] is False  # 155 against seed 1's vanilla 150
    assert verdict["best_sparse"]["0"] == {"family": "qmp", "margin": pytest.approx(-20.0), "at_most_vanilla": True}
    assert verdict["best_sparse"]["1"]["family"] == "qmp"
    assert verdict["target_met"] is False  # one seed misses it


def test_a_one_model_curve_counts_the_rates_it_codes_within_0_3_db_of_the_per_rate_models(study):
    per_rate = [{"bpp": b, "psnr": q, "settings": {"seed": 0}} for b, q in ((1.0, 26.0), (2.0, 27.0), (4.0, 28.0))]
    one = [{"bpp": b, "psnr": q, "settings": {"seed": 0}}
           for b, q in ((0.5, 24.0), (1.0, 25.8), (2.0, 26.5), (3.0, 27.4), (4.0, 27.9))]
    curve = study.one_model_curves({"qmp": per_rate, "qmp_lambda": one})["qmp_lambda"]
    # 0.5 bpp lies below the per-rate models' rates (not judged); 2.0 is 0.5 dB short; 1.0, 3.0 and 4.0 are close
    assert curve["close_rate_span"] == pytest.approx(4.0) and curve["span_at_least_3x"] is True
    assert curve["rate_span"] == pytest.approx(8.0) and curve["against"] == "qmp"
    short = [dict(p, psnr=p["psnr"] - 0.35) for p in per_rate]
    assert study.one_model_curves({"qmp": per_rate, "qmp_lambda": short})["qmp_lambda"]["close_rate_span"] is None


def test_the_best_sparse_family_is_the_one_whose_worst_bd_rate_is_lowest(study):
    bd = {"qmp": {"vs_vanilla": -30.0, "vs_rvq": 5.0, "vs_fsq": -40.0},
          "omp": {"vs_vanilla": -12.0, "vs_rvq": -11.0, "vs_fsq": -15.0},
          "qmp_lambda": {"vs_vanilla": None, "vs_rvq": -50.0, "vs_fsq": -50.0},  # no verdict against vanilla
          "rvq": {"vs_vanilla": -60.0, "vs_fsq": -60.0}}  # an anchor, not a sparse family
    best = study.best_sparse(bd)
    assert best["family"] == "omp" and best["target_met"] is True
    assert best["bd_rate"] == {"vanilla": -12.0, "rvq": -11.0, "fsq": -15.0}
    assert study.best_sparse({**bd, "omp": {"vs_vanilla": -12.0, "vs_rvq": -9.0, "vs_fsq": -15.0}})["target_met"] is False
    # no shared PSNR range with vanilla: ranked by the BD-rates it has, its verdict open while they meet the target
    alone = study.best_sparse({"qmp_lambda": bd["qmp_lambda"]})
    assert alone["family"] == "qmp_lambda" and alone["target_met"] is None
    assert study.best_sparse({"qmp_lambda": {"vs_vanilla": None, "vs_rvq": 3.0}})["target_met"] is False
    assert study.best_sparse({"rvq": bd["rvq"]}) is None


def test_the_default_model_is_the_best_on_validation_at_vanilla_s_rate():
    with benchmark_script("default_model") as default_model:
        rows = {"vanilla": {"bpp": 1.0, "psnr": 26.0, "settings": {"selection_fn": "vanilla"}},
                "omp": {"bpp": 1.09, "psnr": 26.5, "settings": {"selection_fn": "omp"}},
                "rvq": {"bpp": 1.2, "psnr": 28.0, "settings": {"selection_fn": "rvq"}}}
        assert default_model.chosen(rows) == "omp"  # rvq codes better, at 20% more bits than vanilla
        rows["omp"]["psnr"] = 25.0
        assert default_model.chosen(rows) == "vanilla"
