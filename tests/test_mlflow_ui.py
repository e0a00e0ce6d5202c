"""`make mlflow-ui` lands a user on the pipeline's runs: MLflow's own UI server on a store the stages made, opened in
headless Chromium at the address `python -m tasks.tracking` prints - the model-training view (not the GenAI
overview of traces), the runs table with the columns that compare pipeline runs, their values."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from tasks.params import load_params
from tasks.tracking import PARENT_ENV, stage_run, start_parent_run

from . import processes
from .pipeline_workspace import TINY, environment

pytestmark = pytest.mark.slow  # a server and a browser


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(chromium() is None, reason="no Chromium here (Debian: apt-get install chromium)")
def test_the_printed_address_opens_the_runs_table_in_the_model_training_view(tmp_path, monkeypatch):
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(TINY))
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(PARENT_ENV, raising=False)
    params = load_params()
    parent = start_parent_run(params, "pipeline")  # a flow's parent, with the figures evaluate logs on it
    monkeypatch.setenv(PARENT_ENV, parent)
    with stage_run("evaluate", params) as tracker:
        tracker.log_metrics({"test_psnr": 23.4567, "codec_bpp": 0.8125})
        tracker.client.log_metric(parent, "test_psnr", 23.4567)
    port = _free_port()
    printed = subprocess.run([sys.executable, "-m", "tasks.tracking", f"http://127.0.0.1:{port}"], cwd=tmp_path,
                             env=environment(), capture_output=True, text=True, check=True).stdout
    address = re.search(r"the pipeline's runs: (\S+)", printed).group(1)
    experiment = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").get_experiment_by_name("sparse-vqvae")
    assert address.startswith(f"http://127.0.0.1:{port}/#/experiments/{experiment.experiment_id}/runs?")

    mlflow = str(Path(sys.executable).parent / "mlflow")  # as `make mlflow-ui` starts it
    server = processes.start([mlflow, "ui", "--backend-store-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", "--host",
                              "127.0.0.1", "--port", str(port), "--workers", "1"], tmp_path, environment())
    try:
        started, ready = [], "Application startup complete"  # a worker listens (uvicorn's parent only binds)
        for line in server.stdout:  # blocks until the server says it serves (or it ended)
            started.append(line)
            if ready in line:
                break
        assert started and ready in started[-1], "".join(started)[-3000:]
        profile = tmp_path / "browser"
        done = subprocess.run([chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                               f"--user-data-dir={profile / 'profile'}", "--window-size=2400,1000",
                               "--virtual-time-budget=30000", "--dump-dom", address],
                              capture_output=True, text=True, timeout=300,
                              env={"HOME": str(profile), "PATH": os.environ.get("PATH", "/usr/bin:/bin")})
        assert done.returncode == 0, done.stderr[-3000:]
        page = done.stdout
    finally:
        processes.kill_all(server)
    assert "You're viewing a shared view" in page  # the experiment's view, from its tag
    assert "Run Name" in page and ">pipeline<" in page  # the runs table, with the pipeline run
    for column in ("test_psnr", "codec_bpp", "model.selection_fn"):  # the comparing columns, chosen for the user
        assert f">{column}<" in page, column
    assert re.search(r">23\.4\d*<", page), re.findall(r">2\d\.[0-9]+<", page)  # the parent's figure in its row
    for genai in ("Judges", "Tool calls", "Token Usage"):  # the GenAI overview's navigation and panels: not shown
        assert genai not in page, genai
