"""Stage 1 on real Ray: resume after SIGKILL of the whole stage, and a run on a cluster joined by address."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys

import psutil
import pytest
import yaml

from flows.workspace import make_workspace
from sparse_vqvae.train import load_checkpoint

from .pipeline_workspace import TINY, dvc, environment, run


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


def test_a_killed_run_resumes_from_its_last_checkpoint(pretrained, tmp_path):
    root = tmp_path / "ws"
    shutil.copytree(pretrained, root)
    with_params(root, train={"steps": 400, "checkpoint_every": 2, "eval_every": 1000})
    command = [sys.executable, "-m", "tasks.train_vqvae"]
    first = subprocess.Popen(command, cwd=root, env=environment(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True)
    seen = []
    for line in first.stdout:  # blocks until the worker says a checkpoint is on disk
        seen += checkpoint_steps(line)
        if seen:
            break
    # kill -9 of the whole process tree: the stage, the Ray instance it started and its training workers
    tree = [psutil.Process(first.pid)]
    tree += tree[0].children(recursive=True)
    for process in tree:
        process.send_signal(signal.SIGKILL)
    gone, alive = psutil.wait_procs(tree, timeout=120)
    first.stdout.close()
    assert seen and not alive and len(gone) == len(tree)
    key_folders = [p for p in (root / "checkpoints").iterdir() if (p / "last.pt").is_file()]
    assert len(key_folders) == 1
    killed_at = load_checkpoint(key_folders[0] / "last.pt").step
    assert killed_at >= seen[0] > 0

    with_params(root, train={"steps": killed_at + 4})  # the same run, asked to stop sooner: it resumes
    second = run(command, root, check=False)
    output = second.stdout + second.stderr
    assert second.returncode == 0, output[-3000:]
    assert f"starting at step {killed_at}" in output
    assert checkpoint_steps(output)[0] == killed_at + 2
    assert load_checkpoint(root / "models/vqvae/model.pt").step == killed_at + 4


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_stage_one_runs_on_a_cluster_joined_by_address(pretrained, tmp_path):
    root = tmp_path / "ws"
    shutil.copytree(pretrained, root)
    port = _free_port()
    ray = str(shutil.which("ray", path=os.path.dirname(sys.executable)))
    token = {"RAY_AUTH_MODE": "token"}  # the cluster and its clients share ~/.ray/auth_token
    run([ray, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}", "--num-cpus=2",
         "--include-dashboard=false", "--disable-usage-stats"], root, **token)
    try:
        with_params(root, ray={"address": f"127.0.0.1:{port}"})
        done = run([sys.executable, "-m", "tasks.train_vqvae"], root, **token)
        assert checkpoint_steps(done.stdout + done.stderr)[-1] == TINY["train"]["steps"]
        assert load_checkpoint(root / "models/vqvae/model.pt").step == TINY["train"]["steps"]
    finally:
        run([ray, "stop", "--force"], root, check=False, **token)
