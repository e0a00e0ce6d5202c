"""The equal-rate study's verdicts: which family beats which, and whether doubling the budget flips it."""
import importlib
from pathlib import Path

import pytest

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

    flipped = study.doubling_check(families(0.5), families(1.5), 600)
    assert flipped["unchanged"] is False
    assert flipped["comparisons"]["omp vs rvq"]["better"] == [True, False]


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
