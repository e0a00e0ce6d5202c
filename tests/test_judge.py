"""The sample-quality judge: Frechet distance, k-NN precision/recall, the classifier's score, its training
(resumable) and the plugged-in feature extractors. Tiny and on the CPU."""

import hashlib
import math

import numpy as np
import pytest
import scipy.linalg
import torch
from PIL import Image

from sparse_vqvae.config import DataConfig
from sparse_vqvae.data import load_dataset
from sparse_vqvae.errors import CheckpointError
from sparse_vqvae.judge import (Judge, JudgeConfig, JudgeTrainConfig, PluggedExtractor, accuracy, augment,
                                classifier_score, compare, extract_features, frechet_distance,
                                frechet_distance_from_statistics, held_out_split, knn_radii, load_extractor,
                                precision_recall, read_image_folder, to_model_range, train_judge)
from tasks.synthesis import measure, reference

from .benchmark_scripts import benchmark_script


def gaussian(n, d, seed, scale=1.0):
    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(d, d)) * scale
    return rng.normal(size=(n, d)) @ mix


def test_frechet_distance_of_a_set_with_itself_is_zero():
    features = gaussian(300, 16, seed=0)
    assert frechet_distance(features, features) == pytest.approx(0.0, abs=1e-8)


@pytest.mark.parametrize("shift", [0.0, 0.5, 3.0])
def test_frechet_distance_of_a_mean_shift_is_its_squared_length(shift):
    features = gaussian(400, 12, seed=1)
    delta = np.random.default_rng(2).normal(size=12) * shift
    # equal covariances: the trace term vanishes and FD = ||mu1 - mu2||^2
    assert frechet_distance(features, features + delta) == pytest.approx(float(delta @ delta), rel=1e-7, abs=1e-8)


def test_frechet_distance_trace_term_matches_closed_forms():
    # diagonal covariances: tr(S1 + S2 - 2 (S1 S2)^1/2) = sum (sqrt(s1) - sqrt(s2))^2
    s1, s2 = np.array([1.0, 4.0, 0.25, 0.0]), np.array([9.0, 1.0, 0.25, 2.0])
    mu = np.zeros(4)
    expected = float(((np.sqrt(s1) - np.sqrt(s2)) ** 2).sum())
    assert frechet_distance_from_statistics(mu, np.diag(s1), mu, np.diag(s2)) == pytest.approx(expected, rel=1e-10)
    # general covariances: scipy's sqrtm of the product (the usual FID code) agrees
    a, b = gaussian(200, 10, seed=3), gaussian(200, 10, seed=4, scale=0.5) + 1.0
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    diff = a.mean(0) - b.mean(0)
    reference = diff @ diff + np.trace(s1 + s2 - 2 * scipy.linalg.sqrtm(s1 @ s2).real)
    assert frechet_distance(a, b) == pytest.approx(reference, rel=1e-6)


def test_frechet_distance_survives_more_dimensions_than_samples():
    a, b = gaussian(20, 64, seed=5), gaussian(20, 64, seed=6)  # singular covariances
    value = frechet_distance(a, b)
    assert math.isfinite(value) and value > 0


def test_knn_radii_on_a_hand_made_line():
    points = np.array([[0.0], [1.0], [3.0], [7.0]])
    assert knn_radii(points, k=1) == pytest.approx([1, 1, 2, 4])
    assert knn_radii(points, k=2) == pytest.approx([3, 2, 3, 6])
    with pytest.raises(ValueError):
        knn_radii(points, k=4)


def test_precision_recall_on_a_hand_made_line():
    real = np.array([[0.0], [1.0], [3.0], [7.0]])  # 1-NN radii 1, 1, 2, 4
    # -1 lies on the boundary of 0's ball (closed balls: inside), 12, -2.5 and 20 in no ball
    fake = np.array([[-1.0], [12.0], [-2.5], [20.0]])
    precision, recall = precision_recall(real, fake, k=1)
    assert precision == pytest.approx(1 / 4)
    # fake 1-NN radii: -1 -> 1.5, 12 -> 8, -2.5 -> 1.5, 20 -> 8: 0 lies within 1.5 of -1, 7 within 8 of 12; 1 and 3 in
    # no ball
    assert recall == pytest.approx(2 / 4)


def test_precision_recall_of_identical_and_of_far_apart_sets():
    real = gaussian(200, 8, seed=7)
    assert precision_recall(real, real.copy()) == (1.0, 1.0)
    assert precision_recall(real, real + 1000.0) == (0.0, 0.0)


def test_classifier_score_bounds():
    confident_spread = torch.eye(10).repeat(5, 1) * 50  # every class equally often, each image sure of its class
    score = classifier_score(confident_spread)
    assert score["confidence"] == pytest.approx(1.0)
    assert score["class_entropy"] == pytest.approx(math.log(10))
    assert score["score"] == pytest.approx(10.0, rel=1e-6)
    one_class = classifier_score(torch.zeros(50, 10).index_fill_(1, torch.tensor([3]), 50.0))
    assert one_class["class_entropy"] == pytest.approx(0.0, abs=1e-9)
    assert one_class["score"] == pytest.approx(1.0)
    unsure = classifier_score(torch.zeros(50, 10))
    assert unsure["confidence"] == pytest.approx(0.1) and unsure["score"] == pytest.approx(1.0)


def stripes(n, seed):
    """A 2-class problem: horizontal (0) or vertical (1) stripes of random phase and colour, with noise."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 2, (n,), generator=g)
    phase = torch.randint(0, 4, (n,), generator=g)
    wave = ((torch.arange(32)[None, :] + phase[:, None]) // 2 % 2).float()  # [n, 32]
    horizontal = wave[:, :, None].expand(n, 32, 32)
    pattern = torch.where(labels[:, None, None] == 0, horizontal, horizontal.transpose(1, 2))
    colour = torch.rand(n, 3, 1, 1, generator=g) * 0.5 + 0.5
    images = pattern[:, None] * colour + 0.2 * torch.randn(n, 3, 32, 32, generator=g)
    pixels = ((images.clamp(0, 1) * 255).round().to(torch.uint8)).permute(0, 2, 3, 1)  # uint8 [n, H, W, 3]
    return pixels.numpy(), labels.numpy()


TINY = JudgeConfig(width=4, num_classes=2)
FAST = JudgeTrainConfig(epochs=2, batch_size=32, lr=0.2, bf16=False)


def test_the_judge_learns_a_tiny_two_class_problem():
    torch.manual_seed(0)
    x, y = stripes(256, seed=0)
    test_x, test_y = stripes(200, seed=1)
    judge, summary = train_judge(x, y, TINY, FAST, eval_images=test_x, eval_labels=test_y, progress=False)
    assert summary["epochs"] == 2 and len(summary["history"]) == 2
    held_out = accuracy(judge, to_model_range(test_x), torch.as_tensor(test_y))
    assert held_out >= 0.9  # chance is 0.5
    assert summary["history"][-1]["held_out_accuracy"] == pytest.approx(held_out)
    assert judge.features(to_model_range(test_x[:3])).shape == (3, judge.feature_dim)


def test_an_interrupted_run_resumes_where_it_stopped(tmp_path):
    x, y = stripes(96, seed=2)
    torch.manual_seed(0)
    whole, _ = train_judge(x, y, TINY, FAST, progress=False)
    path = tmp_path / "judge.pt"
    torch.manual_seed(0)
    _, first = train_judge(x, y, TINY, FAST, checkpoint=path, max_epochs=1, progress=False)
    assert first["epochs"] == 1
    torch.manual_seed(123)  # the resumed run takes its weights from the file, not from the seed
    resumed, second = train_judge(x, y, TINY, FAST, checkpoint=path, progress=False)
    assert second["epochs"] == 2 and [r["epoch"] for r in second["history"]] == [1, 2]
    for key, value in whole.state_dict().items():
        assert torch.allclose(value.float(), resumed.state_dict()[key].float(), atol=1e-5), key
    loaded = Judge.load(path)
    images = to_model_range(x[:8])
    assert torch.allclose(loaded.features(images), resumed.features(images), atol=1e-6)
    with pytest.raises(CheckpointError, match="other settings"):
        train_judge(x, y, TINY, JudgeTrainConfig(epochs=3, batch_size=32, bf16=False), checkpoint=path, progress=False)


def test_augment_crops_and_flips_within_the_padding():
    images = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8)
    same = augment(images, torch.Generator().manual_seed(0), pad=0)
    for original, out in zip(images, same):  # no padding: each image is itself or its mirror
        assert torch.equal(out, original) or torch.equal(out, original.flip(-1))
    crops = augment(images, torch.Generator().manual_seed(1), pad=2)
    assert crops.shape == images.shape
    flips = [augment(images, torch.Generator().manual_seed(s), pad=0) for s in range(20)]
    assert any(not torch.equal(f, images) for f in flips)


def test_a_plugged_in_extractor_is_the_one_used(tmp_path):
    torch.manual_seed(0)
    judge = Judge(TINY).eval()
    images = torch.rand(40, 3, 32, 32) * 2 - 1
    own = extract_features(judge.features, images)
    # the judge's body behind the plug-in interface (as the Inception network would be): the same features
    assert np.allclose(extract_features(PluggedExtractor(judge.body), images), own, atol=1e-6)
    # a TorchScript file (how the standard FID Inception is usually shipped) loads and gives the same numbers
    scripted = tmp_path / "extractor.pt"
    torch.jit.trace(judge.body, images[:2]).save(str(scripted))
    from_file = load_extractor(scripted)
    assert np.allclose(extract_features(from_file, images), own, atol=1e-6)
    # and so does a torch.export program (TorchScript's successor) with a dynamic batch dimension
    exported = tmp_path / "extractor.pt2"
    program = torch.export.export(judge.body, (images[:2],), dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(program, str(exported))
    assert np.allclose(extract_features(load_extractor(exported), images, batch_size=16), own, atol=1e-5)
    # a judge checkpoint loads as its features
    reference = own[:20]
    assert compare(from_file, reference, images[20:])["fd"] == pytest.approx(frechet_distance(reference, own[20:]),
                                                                              rel=1e-6)

    class MeanColour(torch.nn.Module):  # a different extractor: a different number, computed from its features
        def forward(self, x):
            return x.mean(dim=(2, 3))

    plugged = PluggedExtractor(MeanColour(), size=64, value_range="zero_one")
    colours = extract_features(plugged, images)
    assert np.allclose(colours, ((images + 1) / 2).mean(dim=(2, 3)).double().numpy(), atol=1e-6)
    result = compare(plugged, colours[:20], images[20:])
    assert result["fd"] == pytest.approx(frechet_distance(colours[:20], colours[20:]), rel=1e-9)
    assert result["fd"] != pytest.approx(frechet_distance(reference, own[20:]), rel=1e-3)
    with pytest.raises(ValueError):
        PluggedExtractor(MeanColour(), value_range="percent")


def test_load_extractor_reads_a_judge_checkpoint(tmp_path):
    x, y = stripes(64, seed=3)
    path = tmp_path / "judge.pt"
    judge, _ = train_judge(x, y, TINY, JudgeTrainConfig(epochs=1, batch_size=32, bf16=False), checkpoint=path,
                           progress=False)
    images = to_model_range(x[:10])
    assert np.allclose(extract_features(load_extractor(path), images), extract_features(judge.features, images))
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a model")
    with pytest.raises(CheckpointError):
        load_extractor(junk)


def test_held_out_split_holds_the_vqvae_test_split_of_the_same_folder(tmp_path):
    for label, name in enumerate(("a", "b")):
        (tmp_path / name).mkdir()
        for i in range(25):
            Image.fromarray(np.full((32, 32, 3), 10 * i + label, dtype=np.uint8)).save(tmp_path / name / f"{i:04d}.png")
    images, labels, classes = read_image_folder(tmp_path, cache=tmp_path / "cache.npz", progress=False)
    assert images.shape == (50, 32, 32, 3) and classes == ("a", "b") and labels.tolist() == [0] * 25 + [1] * 25
    cached = read_image_folder(tmp_path / "elsewhere", cache=tmp_path / "cache.npz", progress=False)
    assert np.array_equal(cached[0], images) and cached[2] == classes
    train, held = held_out_split(50, held_out=10, seed=0)
    assert len(set(train) | set(held)) == 50 and not set(train) & set(held)
    vqvae_test = load_dataset(DataConfig(name="imagefolder", root=str(tmp_path), test_fraction=0.1, seed=0), "test")
    assert set(vqvae_test.indices) <= set(held.tolist())


@pytest.fixture
def synthesis():
    with benchmark_script("synthesis") as module:
        yield module


def test_the_published_judge_measures_as_the_trained_one_without_its_optimizer(tmp_path):
    x, y = stripes(64, seed=7)
    torch.manual_seed(0)
    checkpoint = tmp_path / "judge.pt"
    train_judge(x, y, TINY, FAST, checkpoint=checkpoint, progress=False)
    with benchmark_script("judge_train") as judge_train:
        sha256 = judge_train.publish(checkpoint, tmp_path / "published.pt")
    assert sha256 == hashlib.sha256((tmp_path / "published.pt").read_bytes()).hexdigest()
    published = torch.load(tmp_path / "published.pt", weights_only=True)
    assert "optimizer" not in published and "optimizer" in torch.load(checkpoint, weights_only=True)
    images = to_model_range(x[:8])
    assert torch.equal(Judge.load(tmp_path / "published.pt").features(images), Judge.load(checkpoint).features(images))
    assert judge_train.publish(checkpoint, tmp_path / "again.pt") == sha256  # the same bytes each time


def test_the_synthesis_benchmark_measures_every_source(synthesis, tmp_path):
    x, _ = stripes(48, seed=4)
    torch.manual_seed(0)
    family = synthesis.train_tiny_family(x, tmp_path / "family", vqvae_steps=2, prior_steps=2, batch_size=16,
                                         channels=16, res_blocks=1, res_channels=8, embed_dim=8, num_atoms=16,
                                         prior_sizes=dict(channels=16, blocks=1, res_per_block=1))
    judge = Judge(JudgeConfig(width=4)).eval()
    held_out = to_model_range(stripes(12, seed=5)[0])
    images = np.concatenate([x[:12], stripes(30, seed=6)[0]])
    ref = reference(judge, images, train_index=np.arange(12), held_index=np.arange(12, 42), count=12)
    result = synthesis.measure_family(family, ref, held_out, count=12, temperatures=(0.7, 1.0), seed=0)
    assert list(result) == ["real", "reconstruction", "factorised", "pixelsnail_t0.7", "pixelsnail_t1"]
    for source, figures in result.items():
        assert {"fd", "precision", "recall", "bpp"} <= set(figures), source
        assert figures["fd"] >= 0 and 0 <= figures["precision"] <= 1 and 0 <= figures["recall"] <= 1
        assert figures["images"] == 12
    assert result["real"]["bpp"] is None and result["factorised"]["bpp"] > 0
    assert result["pixelsnail_t1"]["bpp"] == result["reconstruction"]["bpp"] > 0


def test_a_plugged_extractor_gives_the_features_and_the_judge_the_scores():
    """Where a user points at other features (the standard Inception network for FID), the distances use them,
    while the class scores stay the judge's."""
    judge = Judge(JudgeConfig(width=4)).eval()
    images = stripes(40, seed=7)[0]
    pixels = lambda batch: batch.flatten(1)[:, :64]  # noqa: E731 - a stand-in extractor: raw pixels
    plugged = reference(judge, images, np.arange(20), np.arange(20, 40), count=20, extractor=pixels)
    own = reference(judge, images, np.arange(20), np.arange(20, 40), count=20)
    drawn = to_model_range(stripes(20, seed=8)[0])
    with_pixels, with_judge = measure(plugged, drawn, None), measure(own, drawn, None)
    raw = extract_features(pixels, drawn)
    assert with_pixels["fd"] == pytest.approx(frechet_distance(plugged.features, raw))
    assert with_pixels["fd"] != pytest.approx(with_judge["fd"])
    assert with_pixels["score"] == with_judge["score"]  # the judge's classifier either way
