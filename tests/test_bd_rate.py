import pytest

from sparse_vqvae.rate_distortion import bd_rate, pareto


def curve(scale: float, psnrs=(24.0, 26.0, 28.0, 30.0)) -> list[dict]:
    return [{"bpp": scale * 0.1 * 2 ** (i * 0.8), "psnr": p} for i, p in enumerate(psnrs)]


def test_bd_rate_is_the_mean_rate_change_at_equal_quality():
    anchor = curve(1.0)
    assert bd_rate(anchor, anchor) == pytest.approx(0.0, abs=1e-9)
    assert bd_rate(anchor, curve(0.5)) == pytest.approx(-50.0, abs=1e-6)  # half the bits everywhere
    assert bd_rate(anchor, curve(1.25)) == pytest.approx(25.0, abs=1e-6)
    # Only the shared quality range counts: a test curve reaching higher changes nothing there.
    assert bd_rate(anchor, curve(0.5, (24.0, 26.0, 28.0, 33.0))[:3] + curve(0.5)[3:]) == pytest.approx(-50.0, abs=1e-6)


def test_curves_that_share_no_quality_range_have_no_bd_rate():
    assert bd_rate(curve(1.0), curve(1.0, (40.0, 41.0, 42.0, 43.0))) is None
    assert bd_rate(curve(1.0), curve(1.0)[:1]) is None


def test_dominated_points_leave_the_curve():
    points = [{"bpp": 1.0, "psnr": 25.0}, {"bpp": 1.5, "psnr": 24.0}, {"bpp": 2.0, "psnr": 27.0},
              {"bpp": 0.5, "psnr": 23.0}]
    assert [p["bpp"] for p in pareto(points)] == [0.5, 1.0, 2.0]
