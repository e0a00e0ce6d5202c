"""The flow's pieces that need no pipeline: the workspace lock (one flow run at a time per workspace), and the
stage task's handling of a stage's output and of an interruption (its processes end with it)."""

from __future__ import annotations

import queue
import subprocess
import sys

import psutil
import pytest

from flows.pipeline import LOCK, _lines, _stop, workspace_lock


def test_a_second_holder_of_the_workspace_lock_waits_or_is_refused(tmp_path):
    with workspace_lock(tmp_path):
        assert (tmp_path / LOCK).read_text().startswith("pid ")
        with pytest.raises(RuntimeError, match=f"another flow run is running in {tmp_path} \\(pid "):
            with workspace_lock(tmp_path, wait=False):
                pass
        # Another process sees it held too (the kernel's lock, not this process's memory).
        probe = subprocess.run([sys.executable, "-c", f"import fcntl; f = open({str(tmp_path / LOCK)!r}); "
                                "fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)"], capture_output=True, text=True)
        assert probe.returncode != 0 and "BlockingIOError" in probe.stderr
    with workspace_lock(tmp_path, wait=False):  # released
        pass


def test_progress_bar_redraws_make_one_line():
    out: queue.Queue = queue.Queue()
    reader = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdout.write('a\\nbar 1%\\rbar 50%\\rbar 100%\\nb\\n')"],
                              stdout=subprocess.PIPE)
    _lines(reader.stdout, out)
    reader.wait()
    reader.stdout.close()
    assert [out.get() for _ in range(4)] == ["a", "bar 100%", "b", None]


def test_a_stopped_stage_ends_with_everything_it_started():
    """_stop ends the stage's session: the process and the one it started (as DVC starts the stage, the stage Ray)."""
    code = ("import subprocess, sys, time; child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)']); "
            "print(child.pid, flush=True); time.sleep(600)")
    process = subprocess.Popen([sys.executable, "-c", code], start_new_session=True, stdout=subprocess.PIPE, text=True)
    try:
        child = psutil.Process(int(process.stdout.readline()))  # blocks until the child is started
        _stop(process)
        assert process.returncode is not None
        _, alive = psutil.wait_procs([child], timeout=60)
        assert not alive
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stdout.close()
