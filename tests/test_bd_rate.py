import pytest

from sparse_vqvae.rate_distortion import bd_psnr, bd_rate, pareto


def curve(scale: float, psnrs=(24.0, 26.0, 28.0, 30.0)) -> list[dict]:
    return [{"bpp": scale * 0.1 * 2 ** (i * 0.8), "psnr": p} for i, p in enumerate(psnrs)]


def test_bd_rate_is_the_mean_rate_change_at_equal_quality():
    anchor = curve(1.0)
    assert bd_rate(anchor, anchor) == pytest.approx(0.0, abs=1e-9)
    assert bd_rate(anchor, curve(0.5)) == pytest.approx(-50.0, abs=1e-6)  # half the bits everywhere
    assert bd_rate(anchor, curve(1.25)) == pytest.approx(25.0, abs=1e-6)
    # Only the shared quality range counts: a test curve reaching higher changes nothing there.
    assert bd_rate(anchor, curve(0.5, (24.0, 26.0, 28.0, 33.0))[:3] + curve(0.5)[3:]) == pytest.approx(-50.0, abs=1e-6)


def test_bd_rate_within_a_quality_range_judges_that_range_alone():
    qualities = [24.0 + i for i in range(9)]
    anchor = curve(1.0, qualities)
    # Half the bits up to 26 dB, the same bits from 29 dB: the whole range averages both, each end its own.
    test = curve(0.5, qualities)[:3] + curve(0.7, qualities)[3:5] + anchor[5:]
    assert bd_rate(anchor, test, within=(24.0, 25.0)) == pytest.approx(-50.0, abs=1e-6)
    assert bd_rate(anchor, test, within=(30.0, 32.0)) == pytest.approx(0.0, abs=1e-6)
    assert -50.0 < bd_rate(anchor, test) < 0.0
    assert bd_rate(anchor, test, within=(33.0, 35.0)) is None  # beyond both curves


def test_curves_that_share_no_quality_range_have_no_bd_rate():
    assert bd_rate(curve(1.0), curve(1.0, (40.0, 41.0, 42.0, 43.0))) is None
    assert bd_rate(curve(1.0), curve(1.0)[:1]) is None


def test_bd_psnr_is_the_mean_quality_change_at_equal_rate():
    anchor = curve(1.0)
    assert bd_psnr(anchor, anchor) == pytest.approx(0.0, abs=1e-9)
    assert bd_psnr(anchor, curve(1.0, (25.5, 27.5, 29.5, 31.5))) == pytest.approx(1.5, abs=1e-9)
    # Half the bits for the same PSNRs: PSNR is linear in log-rate here (2 dB a 0.8 octave), so +2.5 dB.
    assert bd_psnr(anchor, curve(0.5)) == pytest.approx(2.5, abs=1e-6)
    # Flat curves share a rate range but no PSNR range: BD-PSNR is defined where BD-rate is not.
    flat = curve(1.0, (23.0, 23.05, 23.1, 23.15))
    assert bd_rate(anchor, flat) is None
    assert bd_psnr(anchor, flat) < 0
    assert bd_psnr(anchor, curve(100.0)) is None  # no common rate range


def test_dominated_points_leave_the_curve():
    points = [{"bpp": 1.0, "psnr": 25.0}, {"bpp": 1.5, "psnr": 24.0}, {"bpp": 2.0, "psnr": 27.0},
              {"bpp": 0.5, "psnr": 23.0}]
    assert [p["bpp"] for p in pareto(points)] == [0.5, 1.0, 2.0]
