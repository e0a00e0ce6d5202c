"""Stage 1 on real Ray: resume after SIGKILL of the whole `dvc repro` tree, and a run on a cluster joined by
address. Every process a test starts is stopped by its own ids (tests/processes.py)."""

from __future__ import annotations

import os
import pwd
import re
import shutil
import socket
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

from flows.workspace import make_workspace
from sparse_vqvae.train import load_checkpoint

from . import processes
from .pipeline_workspace import TINY, dvc, environment, run

pytestmark = pytest.mark.slow  # real DVC and Ray: minutes


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A tiny workspace with its data prepared and its dictionary pretrained (stages 1-2)."""
    root = make_workspace(tmp_path_factory.mktemp("ray") / "ws", TINY)
    dvc("repro", "pretrain_dictionary", cwd=root)
    return root


def with_params(root, **sections):
    params = yaml.safe_load((root / "params.yaml").read_text())
    for section, values in sections.items():
        params[section].update(values)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def checkpoint_steps(output: str) -> list[int]:
    return [int(step) for step in re.findall(r"checkpoint saved at step (\d+)", output)]


def test_a_killed_dvc_repro_resumes_from_its_last_checkpoint(pretrained, tmp_path):
    """kill -9 of the whole `dvc repro` process tree mid-training (DVC, the stage, the Ray instance it started
    and its training workers); `dvc repro` again resumes from the last checkpoint and finishes."""
    root = tmp_path / "ws"
    shutil.copytree(pretrained, root)
    with_params(root, train={"steps": 400, "checkpoint_every": 2, "eval_every": 1000})
    repro = [sys.executable, "-m", "dvc", "repro", "train_vqvae"]
    first = processes.start(repro, root, environment())
    seen, output = [], []
    for line in first.stdout:  # blocks until the worker says a checkpoint is on disk
        output.append(line)
        seen += checkpoint_steps(line)
        if seen:
            break
    commands = processes.commands(first)
    killed = processes.kill_all(first)
    assert seen, "".join(output)[-3000:]
    assert any("tasks.train_vqvae" in c for c in commands) and any("raylet" in c for c in commands), commands
    assert killed >= len(commands) > 3
    key_folders = [p for p in (root / "checkpoints").iterdir() if (p / "last.pt").is_file()]
    assert len(key_folders) == 1
    killed_at = load_checkpoint(key_folders[0] / "last.pt").step
    assert killed_at >= seen[0] > 0
    # The workers read the prepared images from the checkpoints' storage, where the driver linked them (no byte
    # copied, nothing through Ray's object store); kept there for the resume.
    for name in ("train.npy", "test.npy"):
        assert (key_folders[0] / "images" / name).stat().st_ino == (root / "data/prepared" / name).stat().st_ino

    with_params(root, train={"steps": killed_at + 4})  # the same run, asked to stop sooner: it resumes
    second = processes.start(repro, root, environment())
    output, left_behind = processes.finish(second)
    assert left_behind == 0  # nothing of the finished run is still running
    assert second.returncode == 0, output[-3000:]
    assert "Running stage 'train_vqvae'" in output and f"starting at step {killed_at}" in output
    assert checkpoint_steps(output)[0] == killed_at + 2
    assert load_checkpoint(root / "models/vqvae/model.pt").step == killed_at + 4
    assert not (key_folders[0] / "images").exists()  # removed once the run finished
    assert "Data and pipelines are up to date" in dvc("status", "train_vqvae", cwd=root).stdout


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_stage_one_runs_on_a_cluster_joined_by_address(pretrained, tmp_path):
    """A Ray cluster of this test's own (token authentication: its token in the tests' home folder), joined by
    address, and stopped by its own process ids (never `ray stop`, which stops every Ray of the user)."""
    root = tmp_path / "ws"
    shutil.copytree(pretrained, root)
    port = _free_port()
    ray = str(shutil.which("ray", path=os.path.dirname(sys.executable)))
    # The cluster and its clients share ~/.ray/auth_token, and a Ray folder that the killed cluster's address
    # file dies with (left where other tests' stages start their local Ray, they would try to join it).
    ray_folder = tempfile.mkdtemp(prefix="svq-ray-")
    token = {"RAY_AUTH_MODE": "token", "RAY_TMPDIR": ray_folder}
    run([ray, "get-auth-token", "--generate"], root, **token)  # `ray start` makes none of its own
    cluster = processes.start([ray, "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={port}",
                               "--num-cpus=2", "--include-dashboard=false", "--disable-usage-stats"], root,
                              environment(**token))
    try:
        started, ready = [], "This command will now block forever"  # printed once the address file is written
        for line in cluster.stdout:  # blocks until the head node is up (or `ray start` ended)
            started.append(line)
            if ready in line:
                break
        assert ready in started[-1], "".join(started)[-3000:]
        home = Path(os.environ["HOME"])
        assert home != Path(pwd.getpwuid(os.getuid()).pw_dir) and (home / ".ray/auth_token").is_file()
        assert (Path(ray_folder) / "ray/ray_current_cluster").is_file()  # not the machine's /tmp/ray
        # Settings, not parameters: the address and a storage folder of its own ("shared" by the nodes) in the
        # environment; params.yaml is untouched.
        shared = tmp_path / "shared"
        done = run([sys.executable, "-m", "tasks.train_vqvae"], root, SPARSE_VQVAE_RAY_ADDRESS=f"127.0.0.1:{port}",
                   SPARSE_VQVAE_RAY_STORAGE_PATH=str(shared), **token)
        output = done.stdout + done.stderr
        assert checkpoint_steps(output)[-1] == TINY["train"]["steps"]
        assert load_checkpoint(root / "models/vqvae/model.pt").step == TINY["train"]["steps"]
        stored = [p for p in shared.iterdir() if (p / "last.pt").is_file()]
        assert len(stored) == 1 and load_checkpoint(stored[0] / "last.pt").step == TINY["train"]["steps"]
        assert not (stored[0] / "images").exists()  # the images the workers read there, removed at the end
        assert (shared / "ray" / stored[0].name).is_dir()  # Ray Train's own run folder, in the same storage
        assert not (root / "checkpoints").exists()
        # The code reached the node as the job's py_modules, the compiled extensions with it. (The workers import
        # the driver's folder first where it exists on their node - Ray puts the driver's working directory on
        # their path - as here, on one machine: the same files.)
        shipped = list(Path(ray_folder).glob("ray/session_*/runtime_resources/py_modules_files/*/*"))
        assert {p.name for p in shipped} == {"sparse_vqvae", "tasks"}, shipped
        for package in shipped:
            assert (package / "__init__.py").is_file()
        assert list(Path(ray_folder).glob("ray/session_*/runtime_resources/py_modules_files/*/sparse_vqvae/_incremental*.so"))
        assert re.search(r"worker code: (\S+)", output).group(1) in {str(root / "tasks"), *(str(p) for p in shipped)}
    finally:
        processes.kill_all(cluster)
        shutil.rmtree(ray_folder, ignore_errors=True)
