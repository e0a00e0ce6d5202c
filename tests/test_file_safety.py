"""What the writers do to the user's files: outputs get the mode the umask allows (as ``open()``
would give them), a folder is deleted or replaced only when it is the writer's own output, and a
stage run by an interpreter without the project's packages says in one line which one to use."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from flows.workspace import MARKER, make_workspace
from sparse_vqvae.atomic import NotOurFolderError, atomic_write, check_replaceable, write_json
from sparse_vqvae.pictures import line_plot, save_grid
from sparse_vqvae.train import save_checkpoint
from sparse_vqvae.vqvae import VQVAE2

from .pipeline_workspace import REPO, TINY, environment
from .tiny import tiny_config, tiny_images


@pytest.fixture(params=[0o022, 0o077, 0o002])
def umask(request):
    """Runs the test under each umask; the process's own is restored afterwards."""
    previous = os.umask(request.param)
    yield request.param
    os.umask(previous)


def mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_outputs_get_the_mode_the_umask_allows(umask, tmp_path):
    written = [write_json(tmp_path / "metrics.json", {"a": 1}),
               save_grid(tiny_images(2, 16), tmp_path / "grid.png"),
               line_plot({"a": ([1, 2], [2.0, 1.0])}, tmp_path / "curve.png", "step", "loss")]
    save_checkpoint(tmp_path / "model.pt", VQVAE2(tiny_config()), None, 0, 0)
    with atomic_write(tmp_path / "raw.bin") as handle:
        handle.write(b"\x00")
    for path in written + [tmp_path / "model.pt", tmp_path / "raw.bin"]:
        assert mode(path) == 0o666 & ~umask, path  # 0644 under the usual umask 022, never mkstemp's 0600


@pytest.mark.parametrize("contents", [[], ["data.mdb", "lock.mdb", "manifest.json"], [MARKER, "params.yaml"]])
def test_a_writer_may_replace_an_absent_empty_or_own_folder(tmp_path, contents):
    folder = tmp_path / "out"
    check_replaceable(folder, "code store", files=("data.mdb", "lock.mdb", "manifest.json"), marker=MARKER)
    folder.mkdir()
    for name in contents:
        (folder / name).write_text("")
    check_replaceable(folder, "code store", files=("data.mdb", "lock.mdb", "manifest.json"), marker=MARKER)


def test_a_writer_refuses_a_folder_that_is_not_its_output(tmp_path):
    folder = tmp_path / "thesis"
    folder.mkdir()
    (folder / "data.mdb").write_text("")
    (folder / "chapter1.tex").write_text("")
    with pytest.raises(NotOurFolderError, match=f"refusing to delete {folder}: it is not a code store .*chapter1.tex"):
        check_replaceable(folder, "code store", files=("data.mdb", "lock.mdb", "manifest.json"))
    (tmp_path / "notes.txt").write_text("")
    with pytest.raises(NotOurFolderError, match="notes.txt: it is not a folder"):
        check_replaceable(tmp_path / "notes.txt", "code store")


@pytest.mark.parametrize("store", ["codes/train", "codes/test.tmp"])
def test_extract_codes_refuses_to_delete_a_folder_it_did_not_write(tmp_path, store):
    """The real stage, as DVC runs it: it stops with one line naming the folder, before any work."""
    root = make_workspace(tmp_path / "ws", TINY)
    (root / store).mkdir(parents=True)
    (root / store / "results.csv").write_text("a week of work\n")
    done = subprocess.run([sys.executable, "-m", "tasks.extract_codes"], cwd=root, env=environment(),
                          capture_output=True, text=True)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        f"error: extract_codes: refusing to delete {store}: it is not a code store this program wrote "
        f"(it holds results.csv); move it away or choose another path")
    assert (root / store / "results.csv").read_text() == "a week of work\n"


def test_a_workspace_is_made_only_where_nothing_would_be_lost(tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    (project / "tasks").mkdir()
    (project / "tasks" / "mine.py").write_text("work = 1\n")
    with pytest.raises(NotOurFolderError, match=f"refusing to delete {project}"):
        make_workspace(project, TINY)
    assert (project / "tasks" / "mine.py").read_text() == "work = 1\n"

    workspace = make_workspace(tmp_path / "ws", TINY)
    assert make_workspace(workspace, TINY) == workspace  # its own: refreshed
    with pytest.raises(ValueError, match="it is the pipeline's own source"):
        make_workspace(workspace, TINY, source=workspace)
    assert (workspace / "tasks" / "stage.py").is_file()


@pytest.fixture(scope="module")
def bare_python(tmp_path_factory) -> Path:
    """A real interpreter without the project's packages: a fresh venv of the base Python, no pip."""
    folder = tmp_path_factory.mktemp("bare") / "venv"
    subprocess.run([sys._base_executable, "-m", "venv", "--without-pip", str(folder)], check=True)
    python = folder / "bin" / "python"
    assert subprocess.run([python, "-c", "import torch"], capture_output=True).returncode != 0
    return python


def test_a_stage_run_by_an_interpreter_without_the_packages_names_the_one_to_use(bare_python, tmp_path):
    root = make_workspace(tmp_path / "ws", TINY)
    done = subprocess.run([bare_python, "-m", "tasks.prepare_data"], cwd=root, capture_output=True, text=True)
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.strip().splitlines() == [
        f"error: {bare_python} lacks torch, yaml, lmdb, mlflow, ray, which the pipeline needs; create the project's "
        f"environment with 'make install', then activate it with 'source .venv/bin/activate' (or run 'make run')"]
    assert not (root / "data" / "prepared").exists()


def test_dvc_repro_with_the_wrong_python_first_on_path_says_which_to_use(bare_python, tmp_path):
    """`dvc repro` in a shell where `python` is not the project's: the line names the project's venv."""
    root = make_workspace(tmp_path / "ws", TINY)
    (root / ".venv" / "bin").mkdir(parents=True)
    (root / ".venv" / "bin" / "python").symlink_to(sys.executable)  # the project's environment, as `make` makes it
    env = environment()
    env["PATH"] = os.pathsep.join([str(bare_python.parent), env["PATH"]])
    done = subprocess.run([sys.executable, "-m", "dvc", "repro", "prepare_data"], cwd=root, env=env,
                          capture_output=True, text=True)
    assert done.returncode != 0
    output = done.stdout + done.stderr
    assert (f"lacks torch, yaml, lmdb, mlflow, ray, which the pipeline needs; run the stages with "
            f"{root.resolve() / '.venv/bin/python'}: activate it with 'source .venv/bin/activate'") in output
    assert "Traceback" not in output
