import pytest
import torch

from sparse_vqvae.config import ModelConfig
from sparse_vqvae.train import make_optimizer, train_step
from sparse_vqvae.vqvae import VQVAE2

from .tiny import SELECTION_FNS, tiny_config, tiny_images


@pytest.mark.parametrize("levels, size, maps", [(2, 16, [(2, 2), (4, 4)]), (1, 16, [(2, 2)]), (2, 24, [(3, 3), (6, 6)])])
@pytest.mark.parametrize("selection_fn", SELECTION_FNS)
def test_shapes_and_stored_codes_decode_to_the_same_image(selection_fn, levels, size, maps):
    torch.manual_seed(0)
    model = VQVAE2(tiny_config(selection_fn, maps=levels))
    images = tiny_images(4, size)
    model.train()(images)  # initialise the quantizers from data
    model.eval()
    with torch.no_grad():
        out = model(images)
        assert out.reconstruction.shape == images.shape
        assert [tuple(c.atoms.shape[1:3]) for c in out.codes] == maps
        assert torch.equal(model.decode_codes(out.codes), out.reconstruction)


@pytest.mark.slow  # training steps
@pytest.mark.parametrize("selection_fn", SELECTION_FNS)
def test_a_few_steps_lower_the_loss(selection_fn):
    torch.manual_seed(0)
    model = VQVAE2(tiny_config(selection_fn))
    optimizer = make_optimizer(model, 3e-3)
    images = tiny_images(8, 16)
    first = train_step(model, images, optimizer)["reconstruction_mse"]
    for _ in range(40):
        last = train_step(model, images, optimizer)["reconstruction_mse"]
    assert last < 0.9 * first


@pytest.mark.slow  # training steps
@pytest.mark.parametrize("selection_fn", ["omp", "lasso"])
def test_the_dictionary_learns(selection_fn):
    torch.manual_seed(0)
    model = VQVAE2(tiny_config(selection_fn, restart_dead=False))
    optimizer = make_optimizer(model, 1e-3)
    images = tiny_images(8, 16)
    train_step(model, images, optimizer)  # initialised from data on this first step
    start = [q.dictionary.detach().clone() for q in model.quantizers]
    for _ in range(5):
        train_step(model, images, optimizer)
    for q, before in zip(model.quantizers, start):
        assert (q.dictionary.detach() - before).abs().max() > 1e-3
        assert torch.allclose(q.dictionary.norm(dim=0), torch.ones(32), atol=1e-5)  # renormalised


def test_image_size_not_divisible_by_the_stride_is_rejected():
    model = VQVAE2(tiny_config("omp"))
    with pytest.raises(ValueError, match="not divisible by the model's total stride 8"):
        model(torch.zeros(1, 3, 20, 20))
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        model(torch.zeros(1, 1, 16, 16))


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(selection_fn="omq"), "model.selection_fn must be one of vanilla, rvq, fsq, omp, qmp, lasso"),
        (dict(maps=3), "model.maps must be one of 1, 2"),
        (dict(n_nonzero=0), "model.n_nonzero must be an integer >= 1"),
        (dict(num_atoms=2.5), "model.num_atoms must be an integer"),
        (dict(alpha=-1.0), "model.alpha must be a number >= 0"),
        (dict(ema_decay=1.0), r"model.ema_decay must be a number in \(0, 1\)"),
        (dict(normalize_latents="yes"), "model.normalize_latents must be true or false"),
        (dict(selection_fn="omp", n_nonzero=600), r"model.n_nonzero \(600\) must not exceed model.num_atoms"),
        (dict(coef_levels=1), "model.coef_levels must be an integer >= 2"),
    ],
)
def test_bad_parameters_name_the_key(overrides, message):
    with pytest.raises(ValueError, match=message):
        ModelConfig(**overrides)


@pytest.mark.parametrize("selection_fn, identity", [("omp", "3b73916aeb7a5a89"), ("vanilla", "fbbffc1ba0d98d6b"),
                                                    ("rvq", "2989a0b96f461a97")])
def test_a_models_identity_does_not_move_with_the_pipelines_default(selection_fn, identity):
    """Stored codes, files and entropy models name their model by this fingerprint: the values pinned here were taken
    before the default quantizer moved from omp to vanilla, and must survive such moves (weights zeroed: the same
    bytes on every machine)."""
    model = VQVAE2(ModelConfig(selection_fn=selection_fn, channels=8, res_blocks=1, res_channels=4, embed_dim=4,
                               num_atoms=8))
    with torch.no_grad():
        for tensor in model.state_dict().values():
            tensor.zero_()
    assert model.fingerprint() == identity
