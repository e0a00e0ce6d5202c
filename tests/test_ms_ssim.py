import numpy as np
import pytest
import torch

from sparse_vqvae.metrics import ms_ssim, ms_ssim_scales, ssim

from .tiny import tiny_images

WEIGHTS = [0.0448, 0.2856, 0.3001, 0.2363, 0.1333]


def reference_ms_ssim(a: np.ndarray, b: np.ndarray, weights: list[float]) -> float:
    """MS-SSIM of one image pair [C, H, W] on the [0, 255] scale, written out plainly in NumPy:
    valid 11x11 Gaussian windows, 2x2 mean pooling with one zero-padded row/column on each side of an
    odd side (pytorch_msssim's convention), per-channel values averaged over channels."""
    x = np.arange(11) - 5.0
    g = np.exp(-x**2 / (2 * 1.5**2))
    g /= g.sum()
    window = np.outer(g, g)
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2

    def blur(t: np.ndarray) -> np.ndarray:
        patches = np.lib.stride_tricks.sliding_window_view(t, (11, 11))
        return np.einsum("ijkl,kl->ij", patches, window)

    def halve(t: np.ndarray) -> np.ndarray:
        t = np.pad(t, [(t.shape[0] % 2,) * 2, (t.shape[1] % 2,) * 2])
        h, w = t.shape[0] // 2 * 2, t.shape[1] // 2 * 2
        t = t[:h, :w]
        return (t[0::2, 0::2] + t[1::2, 0::2] + t[0::2, 1::2] + t[1::2, 1::2]) / 4

    per_channel = []
    for xc, yc in zip(a, b):
        value = 1.0
        for level, weight in enumerate(weights):
            mx, my = blur(xc), blur(yc)
            vx, vy, cov = blur(xc * xc) - mx**2, blur(yc * yc) - my**2, blur(xc * yc) - mx * my
            cs = (2 * cov + c2) / (vx + vy + c2)
            if level < len(weights) - 1:
                value *= max(cs.mean(), 0.0) ** weight
                xc, yc = halve(xc), halve(yc)
            else:
                lum = (2 * mx * my + c1) / (mx**2 + my**2 + c1)
                value *= max((lum * cs).mean(), 0.0) ** weight
        per_channel.append(value)
    return float(np.mean(per_channel))


def noisy(images: torch.Tensor, level: float, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (images + level * torch.randn(images.shape, generator=g)).clamp(-1, 1)


def as_255(images: torch.Tensor) -> np.ndarray:
    return ((images.double() + 1) * 127.5).numpy()


def test_scale_selection():
    assert ms_ssim_scales(32, 32) == 2
    assert ms_ssim_scales(256, 256) == 5
    assert ms_ssim_scales(10, 10) == 1
    assert ms_ssim_scales(161, 400) == 5 and ms_ssim_scales(160, 400) == 4  # pytorch_msssim's bound
    images = tiny_images(2, 32)
    with pytest.raises(ValueError, match="32x32.*at most 2"):
        ms_ssim(images, images, scales=3)
    with pytest.raises(ValueError, match="32x32"):
        ms_ssim(images, images, scales=0)


def test_identical_images_score_one_and_noise_lowers_the_score():
    images = tiny_images(3, 32)
    assert torch.allclose(ms_ssim(images, images), torch.ones(3, dtype=torch.float64), rtol=0, atol=1e-12)
    values = [ms_ssim(images, noisy(images, level)) for level in (0.02, 0.05, 0.1, 0.2, 0.4)]
    assert values[0].shape == (3,) and values[0].dtype == torch.float64
    for better, worse in zip(values, values[1:]):
        assert (worse < better).all()


def test_five_scales_match_a_reference_implementation():
    images = tiny_images(2, 192, seed=3)
    reconstructions = noisy(images, 0.15)
    ours = ms_ssim(images, reconstructions)
    assert ms_ssim_scales(192, 192) == 5
    for i in range(2):
        assert ours[i].item() == pytest.approx(reference_ms_ssim(as_255(images[i]), as_255(reconstructions[i]),
                                                                 WEIGHTS), abs=1e-5)
    assert 0.3 < ours.min() and ours.max() < 0.99  # a real test of the weighting, not of 1 == 1


def test_odd_sizes_and_few_scales_match_the_reference():
    images = tiny_images(1, 184, seed=4)[..., :175, :181]  # halves to 88x91, 44x46, 22x23, 11x12
    reconstructions = noisy(images, 0.2)
    assert ms_ssim(images, reconstructions).item() == pytest.approx(
        reference_ms_ssim(as_255(images[0]), as_255(reconstructions[0]), WEIGHTS), abs=1e-5)
    small = tiny_images(2, 32, seed=5)
    small_noisy = noisy(small, 0.2)
    two = [w / sum(WEIGHTS[:2]) for w in WEIGHTS[:2]]
    ours = ms_ssim(small, small_noisy)
    for i in range(2):
        assert ours[i].item() == pytest.approx(reference_ms_ssim(as_255(small[i]), as_255(small_noisy[i]), two),
                                               abs=1e-10)


def test_one_scale_is_ssim():
    images = tiny_images(3, 32, seed=6)
    reconstructions = noisy(images, 0.3)
    assert torch.allclose(ms_ssim(images, reconstructions, scales=1), ssim(images, reconstructions),
                          rtol=0, atol=1e-10)
    tiny = tiny_images(2, 8, seed=7)  # under 11 pixels: both use an 8x8 window
    assert ms_ssim_scales(8, 8) == 1
    assert torch.allclose(ms_ssim(tiny, noisy(tiny, 0.3)), ssim(tiny, noisy(tiny, 0.3)), rtol=0, atol=1e-10)


def test_anticorrelated_reconstructions_score_zero_not_nan():
    images = tiny_images(2, 32, seed=9)
    assert (ssim(images, -images) < 0).all()
    assert torch.equal(ms_ssim(images, -images), torch.zeros(2, dtype=torch.float64))
    assert torch.equal(ms_ssim(images, -images, scales=1), torch.zeros(2, dtype=torch.float64))
