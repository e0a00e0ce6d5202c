import numpy as np
import pytest
import torch

from sparse_vqvae.config import TrainConfig
from sparse_vqvae.train import CheckpointError, evaluate, load_checkpoint, save_checkpoint, train

from .tiny import SELECTION_FNS, Images, tiny_config, tiny_images


@pytest.fixture
def data():
    return Images(tiny_images(16, 16, seed=1)), Images(tiny_images(8, 16, seed=2))


@pytest.mark.parametrize("selection_fn", SELECTION_FNS)
def test_checkpoint_rebuilds_the_model_with_identical_outputs(selection_fn, data, tmp_path):
    config = TrainConfig(steps=3, batch_size=4, seed=0, eval_every=100, checkpoint_every=100)
    path = tmp_path / "model.pt"
    model, _ = train(tiny_config(selection_fn), config, data[0], checkpoint_path=path, progress=False)
    restored = load_checkpoint(path)
    assert restored.step == 3 and restored.config["train"]["steps"] == 3
    assert restored.model.config == model.config
    images = tiny_images(4, 16, seed=3)
    model.eval(), restored.model.eval()
    with torch.no_grad():
        assert torch.equal(model(images).reconstruction, restored.model(images).reconstruction)
    assert not list(tmp_path.glob("*.tmp"))  # written atomically, nothing left behind


def test_resume_continues_the_step_count(data, tmp_path):
    first = tmp_path / "a.pt"
    seen = []
    train(tiny_config("omp"), TrainConfig(steps=3, batch_size=4, checkpoint_every=1), data[0],
          checkpoint_path=first, progress=False)
    _, metrics = train(tiny_config("omp"), TrainConfig(steps=6, batch_size=4, checkpoint_every=1), data[0],
                       checkpoint_path=first, progress=False, on_metrics=lambda step, m: seen.append(step))
    assert seen == [4, 5, 6]
    assert load_checkpoint(first).step == 6


@pytest.mark.slow  # two training runs per variant
@pytest.mark.parametrize("selection_fn", SELECTION_FNS)
def test_training_is_deterministic_for_a_seed(selection_fn, data):
    config = TrainConfig(steps=3, batch_size=4, seed=5)
    a, _ = train(tiny_config(selection_fn), config, data[0], progress=False)
    b, _ = train(tiny_config(selection_fn), config, data[0], progress=False)
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), name


def test_evaluate_reports_psnr_from_the_whole_set_mse(data):
    """Test MSE and the mean-colour baseline recomputed here in numpy on [0, 255] pixels, over the whole set
    (evaluated in batches of 3, 3 and 2: a per-batch average would differ)."""
    torch.manual_seed(0)
    model, _ = train(tiny_config("vanilla"), TrainConfig(steps=2, batch_size=4), data[0], progress=False)
    result = evaluate(model, data[1], batch_size=3)
    images = data[1].images
    with torch.no_grad():
        reconstructions = model(images).reconstruction
    pixels = (images.double().numpy() + 1) * 127.5  # [8, 3, 16, 16]
    decoded = (reconstructions.double().clamp(-1, 1).numpy() + 1) * 127.5
    mean_colour = pixels.mean(axis=(2, 3), keepdims=True)  # each image's own mean, per channel
    mse, baseline_mse = np.mean((decoded - pixels) ** 2), np.mean((mean_colour - pixels) ** 2)
    assert result["test_mse"] == pytest.approx(mse, rel=1e-5)
    assert result["test_psnr"] == pytest.approx(10 * np.log10(255.0**2 / mse), abs=1e-4)
    assert result["baseline_mse"] == pytest.approx(baseline_mse, rel=1e-9)
    assert result["baseline_psnr"] == pytest.approx(10 * np.log10(255.0**2 / baseline_mse), abs=1e-6)
    assert 0 < result["test_ssim"] < 1


def test_truncated_and_foreign_files_give_clear_errors(data, tmp_path):
    path = tmp_path / "model.pt"
    train(tiny_config("omp"), TrainConfig(steps=1, batch_size=4), data[0], checkpoint_path=path, progress=False)
    blob = path.read_bytes()
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(truncated)
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(CheckpointError, match="not a sparse-vqvae/vqvae2 checkpoint"):
        load_checkpoint(foreign)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(garbage)
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        load_checkpoint(tmp_path / "missing.pt")


def test_checkpoint_loading_runs_no_code(tmp_path):
    class Boom:
        def __reduce__(self):
            return (print, ("code ran",))

    path = tmp_path / "evil.pt"
    torch.save({"format": "sparse-vqvae/vqvae2", "payload": Boom()}, path)
    with pytest.raises(CheckpointError):
        load_checkpoint(path)


def test_a_training_set_smaller_than_a_batch_is_an_error(data):
    with pytest.raises(ValueError, match="fewer than train.batch_size"):
        train(tiny_config("omp"), TrainConfig(steps=2, batch_size=64), data[0], progress=False)


def test_resuming_a_checkpoint_of_other_settings_is_refused(data, tmp_path):
    path = tmp_path / "model.pt"
    train(tiny_config("omp"), TrainConfig(steps=1, batch_size=4), data[0], checkpoint_path=path, progress=False)
    with pytest.raises(CheckpointError, match="other settings"):
        train(tiny_config("vanilla"), TrainConfig(steps=2, batch_size=4), data[0], checkpoint_path=path,
              progress=False)


def tensors(tree) -> list[tuple[str, torch.Tensor | object]]:
    """A nested state (dicts, lists) flattened to (path, leaf) pairs, in order."""
    if isinstance(tree, dict):
        return [(f"{key}.{path}", leaf) for key, value in tree.items() for path, leaf in tensors(value)]
    if isinstance(tree, (list, tuple)):
        return [(f"{i}.{path}", leaf) for i, value in enumerate(tree) for path, leaf in tensors(value)]
    return [("", tree)]


def assert_identical(a, b) -> None:
    left, right = tensors(a), tensors(b)
    assert [path for path, _ in left] == [path for path, _ in right]
    for (path, x), (_, y) in zip(left, right):
        same = torch.equal(x, y) if isinstance(x, torch.Tensor) else x == y
        assert same, path


@pytest.mark.slow  # 17 training steps and evaluations per variant
@pytest.mark.parametrize("selection_fn", SELECTION_FNS)
def test_a_resumed_run_ends_with_the_weights_of_an_uninterrupted_one(selection_fn, data, tmp_path):
    """7 steps in one go, and 3 steps, a stop, then a resume to 7 (mid-epoch: 4 batches an epoch, with a test
    evaluation and checkpoints on the way): the same weights, buffers and optimizer state, bit for bit."""
    whole, halves = tmp_path / "whole.pt", tmp_path / "halves.pt"
    settings = dict(batch_size=4, seed=3, eval_every=2, checkpoint_every=2)
    train(tiny_config(selection_fn), TrainConfig(steps=7, **settings), data[0], data[1], checkpoint_path=whole,
          progress=False)
    train(tiny_config(selection_fn), TrainConfig(steps=3, **settings), data[0], data[1], checkpoint_path=halves,
          progress=False)
    assert load_checkpoint(halves).step == 3
    model, _ = train(tiny_config(selection_fn), TrainConfig(steps=7, **settings), data[0], data[1],
                     checkpoint_path=halves, progress=False)
    uninterrupted, resumed = load_checkpoint(whole), load_checkpoint(halves)
    assert resumed.step == uninterrupted.step == 7
    assert_identical(uninterrupted.model.state_dict(), model.state_dict())
    assert_identical(uninterrupted.model.state_dict(), resumed.model.state_dict())
    assert_identical(uninterrupted.optimizer_state, resumed.optimizer_state)
