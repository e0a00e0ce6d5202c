"""Stages 4 and 5 on real Ray (local instances, stopped by the stage or the test): extraction on Ray Data writes the
store an in-process extraction writes; the priors on Ray Train are, with one worker, those of ``train_prior`` in one
process bit for bit, also after a kill -9 mid-training and a rerun; two workers split each step's rows. Tiny
workspaces built here (a VQ-VAE, prepared images), no DVC."""

from __future__ import annotations

import csv
import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from sparse_vqvae.code_store import CodeStore, extract_codes
from sparse_vqvae.data import ImageArray, to_uint8
from sparse_vqvae.entropy_coding import FrequencyModel
from sparse_vqvae.maps import MAP_NAMES, prior_file
from sparse_vqvae.pixelsnail import PixelSNAIL
from sparse_vqvae.prior_train import bits_per_image, load_prior, prior_configs, train_prior
from sparse_vqvae.train import load_checkpoint, save_checkpoint
from sparse_vqvae.vqvae import VQVAE2

from . import processes
from .pipeline_workspace import REPO, environment, run
from .tiny import tiny_config, tiny_images

pytestmark = pytest.mark.slow  # real Ray instances: a minute or two each

PRIOR = {"steps": 6, "batch_size": 6, "channels": 16, "blocks": 1, "res_per_block": 1, "checkpoint_every": 2,
         "dropout": 0.1}


def make_workspace(root: Path, selection_fn: str = "omp", **prior) -> Path:
    """A model (models/vqvae/model.pt), prepared images (45 train, 13 test) and params.yaml with a tiny prior."""
    (root / "data/prepared").mkdir(parents=True)
    (root / "models/vqvae").mkdir(parents=True)
    torch.manual_seed(0)
    model = VQVAE2(tiny_config(selection_fn))
    model.train()(tiny_images(8, 16))
    save_checkpoint(root / "models/vqvae/model.pt", model.eval(), None, 0, 0, {})
    np.save(root / "data/prepared/train.npy", to_uint8(tiny_images(45, 16, seed=5)))
    np.save(root / "data/prepared/test.npy", to_uint8(tiny_images(13, 16, seed=6)))
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["extract"]["batch_size"] = 8
    params["prior"].update(PRIOR | prior)
    params["mlflow"]["log_every"] = 1
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return root


def stage(root: Path, name: str) -> str:
    done = run([sys.executable, "-m", f"tasks.{name}"], root)
    return done.stdout + done.stderr


def threads_of(output: str) -> int:
    return int(re.search(r"(\d+) thread\(s\) each", output).group(1))


def in_process_priors(root: Path, folder: Path, threads: int) -> dict[str, float]:
    """What the stage computed in one process before Ray: each map's prior (its resume file in ``folder``), its
    bits per training image, the frequency model; with the stage's threads."""
    params = yaml.safe_load((root / "params.yaml").read_text())["prior"]
    model = load_checkpoint(root / "models/vqvae/model.pt").model
    store = CodeStore(root / "codes/train", model.fingerprint())
    sizes = {key: params[key] for key in ("channels", "blocks", "res_per_block", "dropout", "positions")}
    previous, figures = torch.get_num_threads(), {}
    torch.set_num_threads(threads)
    try:
        for level, config in enumerate(prior_configs(store.meta, **sizes)):
            torch.manual_seed(params["seed"] + level)
            prior, losses = PixelSNAIL(config), []
            train_prior(prior, store, level, params["steps"], batch_size=params["batch_size"], lr=params["lr"],
                        seed=params["seed"] + level, checkpoint_path=prior_file(folder, level),
                        fingerprint=model.fingerprint(), checkpoint_every=params["checkpoint_every"], progress=False,
                        on_metrics=lambda step, metrics: losses.append(metrics["bits_per_image"]))
            figures[f"{MAP_NAMES[level]}_train_bits_per_image"] = bits_per_image(prior, store, level)
            figures[f"{MAP_NAMES[level]}_losses"] = losses
        FrequencyModel.fit(store, store.meta).save(folder / "codec.pt")
    finally:
        torch.set_num_threads(previous)
        store.close()
    return figures


@pytest.fixture
def local_ray():
    """A Ray instance of this test's own on this machine's two CPUs."""
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_config=ray.LoggingConfig(log_level="ERROR"))
    try:
        yield
    finally:
        ray.shutdown()


@pytest.mark.parametrize("selection_fn, actors, threads", [("lasso", 1, None), ("omp", 2, 1)])
def test_ray_data_extraction_writes_the_store_of_an_in_process_extraction(selection_fn, actors, threads, tmp_path,
                                                                          local_ray):
    """Byte for byte: records in index order, one transaction a batch, as extract_codes writes them (one actor with
    this process's threads - the stage's choice on one machine; or two actors, whose batches interleave)."""
    from tasks.extract_codes import extract_on_ray

    root = make_workspace(tmp_path / "ws", selection_fn)
    model = load_checkpoint(root / "models/vqvae/model.pt").model
    threads = threads or torch.get_num_threads()
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        extract_codes(model, ImageArray(root / "data/prepared/train.npy"), tmp_path / "in_process", batch_size=8,
                      progress=False)
    finally:
        torch.set_num_threads(previous)
    stats = extract_on_ray(root / "models/vqvae/model.pt", root / "data/prepared/train.npy", tmp_path / "on_ray", 8,
                           actors, threads, use_gpu=False, storage=str(tmp_path / "storage"), progress=False)
    assert stats["images"] == 45
    for name in ("data.mdb", "manifest.json"):
        assert (tmp_path / "on_ray" / name).read_bytes() == (tmp_path / "in_process" / name).read_bytes(), name
    assert not (tmp_path / "on_ray.tmp").exists()
    assert list((tmp_path / "storage").iterdir()) == []  # the images' copy, removed


def test_one_ray_worker_trains_the_in_process_priors(tmp_path):
    """The stages as DVC runs them (each starting and stopping its local Ray): extract_codes on Ray Data, then
    train_prior on one Ray Train worker, against the in-process extraction and train_prior - stores, priors,
    frequency model, figures and curves the same, bit for bit."""
    root = make_workspace(tmp_path / "ws")
    extracted = stage(root, "extract_codes")
    model = load_checkpoint(root / "models/vqvae/model.pt").model
    previous = torch.get_num_threads()
    torch.set_num_threads(threads_of(extracted))
    try:
        for split in ("train", "test"):
            extract_codes(model, ImageArray(root / f"data/prepared/{split}.npy"), tmp_path / split, batch_size=8,
                          progress=False)
            assert (root / f"codes/{split}/data.mdb").read_bytes() == (tmp_path / split / "data.mdb").read_bytes()
    finally:
        torch.set_num_threads(previous)
    trained = stage(root, "train_prior")
    assert "1 worker(s)" in trained
    expected = in_process_priors(root, tmp_path / "expected", threads_of(trained))
    for name in ("top.pt", "bottom.pt", "codec.pt"):
        assert (root / "models/prior" / name).read_bytes() == (tmp_path / "expected" / name).read_bytes(), name
    figures = json.loads((root / "metrics/train_prior.json").read_text())
    with open(root / "plots/prior.csv") as handle:
        curves = list(csv.DictReader(handle))
    for name in ("top", "bottom"):
        assert figures[f"{name}_train_bits_per_image"] == expected[f"{name}_train_bits_per_image"]
        assert figures[f"{name}_start_step"] == 0 and figures[f"{name}_steps_trained"] == PRIOR["steps"]
        assert [float(row[f"{name}_bits"]) for row in curves] == expected[f"{name}_losses"]
    key_folders = list((root / "checkpoints/prior").iterdir())
    assert len(key_folders) == 1 and not (key_folders[0] / "codes").exists()  # the store's copy: removed at the end
    assert not any(key_folders[0].glob("figures-*"))


def test_a_prior_killed_mid_training_resumes_to_the_uninterrupted_prior(tmp_path):
    """kill -9 of the stage and its Ray instance after a checkpoint of the top prior; the rerun resumes from the
    checkpoint (weights, optimiser, the workers' random states) and ends where an uninterrupted run ends."""
    root = make_workspace(tmp_path / "ws", steps=40)
    stage(root, "extract_codes")
    first = processes.start([sys.executable, "-m", "tasks.train_prior"], root, environment())
    seen = []
    for line in first.stdout:  # blocks until rank 0 says a checkpoint is in the storage
        seen.append(line)
        if "checkpoint saved at step" in line:
            break
    processes.kill_all(first)
    assert "checkpoint saved at step 2 (map top)" in seen[-1], "".join(seen)[-3000:]
    resumed = stage(root, "train_prior")
    start = int(re.search(r"map top: starting at step (\d+) \(resumed\)", resumed).group(1))
    assert 2 <= start < 40 and "map bottom: starting at step 0" in resumed
    assert json.loads((root / "metrics/train_prior.json").read_text())["top_start_step"] == start
    in_process_priors(root, tmp_path / "expected", threads_of(resumed))
    for level in range(2):
        name = prior_file("", level).name
        assert (root / "models/prior" / name).read_bytes() == (tmp_path / "expected" / name).read_bytes(), name
    with open(root / "plots/prior.csv") as handle:
        assert [int(row["step"]) for row in csv.DictReader(handle)] == list(range(1, 41))  # the whole curve


def test_two_ray_workers_train_the_prior_of_one_up_to_rounding(tmp_path, monkeypatch):
    """Two DDP workers, each on half of every step's rows (tests/test_pixelsnail.py checks the halves), average
    their gradients (the stage checks that the workers' priors are equal after training): without dropout, the
    first step's whole-batch loss is one worker's up to rounding, and the priors stay close."""
    from tasks.params import load_params
    from tasks.tracking import stage_run
    from tasks.train_prior import random_state_file, run as train_priors

    root = make_workspace(tmp_path / "ws", dropout=0.0)
    stage(root, "extract_codes")
    monkeypatch.chdir(root)
    params = load_params()
    with stage_run("train_prior", params) as tracker:
        figures = train_priors(params, tracker, workers=2)
    expected = in_process_priors(root, tmp_path / "expected", torch.get_num_threads())
    with open(root / "plots/prior.csv") as handle:
        curves = list(csv.DictReader(handle))
    for level, name in enumerate(MAP_NAMES):
        losses = [float(row[f"{name}_bits"]) for row in curves]
        assert losses[0] == pytest.approx(expected[f"{name}_losses"][0], rel=1e-6)
        assert losses == pytest.approx(expected[f"{name}_losses"], rel=1e-3)
        assert figures[f"{name}_train_bits_per_image"] == pytest.approx(expected[f"{name}_train_bits_per_image"],
                                                                         rel=1e-3)
        assert load_prior(root / "models/prior" / prior_file("", level).name).step == PRIOR["steps"]
    key_folder = next((root / "checkpoints/prior").iterdir())
    (states,) = key_folder.glob("top.*.rng")  # the last checkpoint's alone
    assert states.name == random_state_file("top", PRIOR["steps"])
    assert len(torch.load(states, weights_only=True)["states"]) == 2  # each worker's random state
