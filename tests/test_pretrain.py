import pytest
import torch

from sparse_vqvae.checkpoint import CheckpointError
from sparse_vqvae.config import PretrainConfig
from sparse_vqvae.pretrain import collect_latents, continued, pretrain
from sparse_vqvae.sparse_coding import kmeans
from sparse_vqvae.train import evaluate, save_checkpoint
from sparse_vqvae.vqvae import VQVAE2

from .tiny import SELECTION_FNS, Images, tiny_config, tiny_images


def test_kmeans_finds_well_separated_clusters():
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(4, 8, generator=g) * 10
    x = (centres.repeat(50, 1) + 0.1 * torch.randn(200, 8, generator=g))
    found = kmeans(x, 4, iterations=10, generator=torch.Generator().manual_seed(1))
    assert found.shape == (8, 4)
    nearest = torch.cdist(centres, found.t()).min(dim=1).values
    assert bool((nearest < 0.2).all())


def test_kmeans_with_fewer_vectors_than_clusters_keeps_every_centroid_finite():
    found = kmeans(torch.randn(3, 5), 8, iterations=3)
    assert found.shape == (5, 8) and bool(torch.isfinite(found).all())


@pytest.mark.parametrize("selection_fn", SELECTION_FNS)
def test_autoencode_bypasses_the_quantizers_and_returns_their_targets(selection_fn):
    model = VQVAE2(tiny_config(selection_fn)).eval()
    images = tiny_images(4, 16)
    reconstruction, latents = model.autoencode(images)
    assert reconstruction.shape == images.shape
    assert [tuple(z.shape) for z in latents] == [(4, 8, 2, 2), (4, 8, 4, 4)]
    if model.config.normalize_latents:  # then the sparse code sees unit-norm latents
        assert torch.allclose(latents[0].norm(dim=1), torch.ones(4, 2, 2), atol=1e-5)
    assert not bool(model.quantizers[0].initialized)  # nothing was fitted by the bypass


def test_collect_latents_returns_the_requested_count_per_map():
    model = VQVAE2(tiny_config("omp"))
    top, bottom = collect_latents(model, Images(tiny_images(16, 16)), count=40)
    assert top.shape == (40, 8) and bottom.shape == (40, 8)


@pytest.mark.slow  # training steps and a dictionary fit
@pytest.mark.parametrize("selection_fn", SELECTION_FNS)
def test_pretraining_fits_the_quantizers_to_the_latents(selection_fn):
    data = Images(tiny_images(32, 16, seed=1))
    config = PretrainConfig(steps=10, batch_size=8, latents=256, iterations=5)
    model = pretrain(tiny_config(selection_fn), config, data, progress=False)
    assert all(bool(q.initialized) for q in model.quantizers)
    fitted = evaluate(model, data)["test_mse"]
    torch.manual_seed(0)
    untrained = VQVAE2(tiny_config(selection_fn))
    for q in untrained.quantizers:
        q.initialized.fill_(True)  # random codebook / dictionary, as without pretraining
    assert fitted < evaluate(untrained, data)["test_mse"]


def test_a_continued_model_starts_from_the_trained_weights_under_new_training_settings(tmp_path):
    """pretrain.init_from: stage 1 continues a trained model - its weights and its codebooks' statistics - with
    settings that change training only (here stage dropout weighted toward the top quality)."""
    torch.manual_seed(0)
    trained = VQVAE2(tiny_config("rvq", maps=1, stages=2, stage_dropout=True))
    save_checkpoint(tmp_path / "trained.pt", trained, None, 7, 1, {})
    model = continued(tiny_config("rvq", maps=1, stages=2, stage_dropout=True, stage_dropout_top_share=0.5),
                      tmp_path / "trained.pt")
    assert model.config.stage_dropout_top_share == 0.5
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), trained.state_dict().values()))


def test_a_continued_model_of_another_network_names_the_settings_that_differ(tmp_path):
    save_checkpoint(tmp_path / "trained.pt", VQVAE2(tiny_config("rvq", maps=1, stages=2)), None, 7, 1, {})
    with pytest.raises(CheckpointError, match=r"holds another network than model.\* builds \(model.stages 2 there, "
                                              r"3 here\)"):
        continued(tiny_config("rvq", maps=1, stages=3), tmp_path / "trained.pt")
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        continued(tiny_config("rvq", maps=1, stages=2), tmp_path / "missing.pt")
