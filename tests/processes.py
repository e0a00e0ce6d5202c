"""Processes a test starts, and stops by their own ids: each command leads a session of its own, so every
process it starts (Ray's daemons and workers, DVC's stage, the stage's Ray instance) is found by that
session id or as a descendant - never by name, and never another user's or test's process."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import psutil


def start(command: list[str], cwd: Path, env: dict[str, str]) -> subprocess.Popen:
    """``command`` as the leader of a new session, its output (stderr too) a text pipe."""
    return subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def members(leader: subprocess.Popen) -> list[psutil.Process]:
    """The processes of ``leader``'s session and its descendants (a daemon that left the session is still a
    descendant while its parent lives). Call it before reaping the leader: its pid is then not reused."""
    found: dict[int, psutil.Process] = {}
    try:
        root = psutil.Process(leader.pid)
        found = {p.pid: p for p in [root, *root.children(recursive=True)]}
    except psutil.NoSuchProcess:
        pass
    for process in psutil.process_iter():
        try:
            if os.getsid(process.pid) == leader.pid:
                found.setdefault(process.pid, process)
        except (ProcessLookupError, PermissionError):
            continue
    return [p for p in found.values() if p.pid != os.getpid()]


def kill_all(leader: subprocess.Popen, timeout: float = 120) -> int:
    """SIGKILL ``leader`` and every process it started, as a crash or ``kill -9`` of the whole tree would;
    returns how many there were. Repeats while processes started meanwhile remain (a bounded number of
    rounds), then reaps the leader."""
    killed: set[int] = set()
    for _ in range(10):
        alive = [p for p in members(leader) if _alive(p)]
        if not alive:
            break
        for process in alive:
            try:
                process.send_signal(signal.SIGKILL)
            except psutil.NoSuchProcess:
                pass
        killed.update(p.pid for p in alive)
        _, still = psutil.wait_procs([p for p in alive if p.pid != leader.pid], timeout=timeout)
        assert not still, f"processes survived SIGKILL: {still}"
    else:
        raise AssertionError(f"processes of {leader.args} kept starting while being killed")
    leader.wait(timeout)
    if leader.stdout is not None:
        leader.stdout.close()
    return len(killed)


def finish(leader: subprocess.Popen, timeout: float = 120) -> tuple[str, int]:
    """Wait for ``leader`` to exit on its own; returns its output and how many of the processes it started were
    still running (then killed). The leader is reaped last, so its pid cannot be reused before the sweep."""
    output = leader.stdout.read()
    os.waitid(os.P_PID, leader.pid, os.WEXITED | os.WNOWAIT)
    return output, kill_all(leader, timeout)


def commands(leader: subprocess.Popen) -> list[str]:
    """The command lines of ``leader``'s processes now."""
    found = []
    for process in members(leader):
        try:
            found.append(" ".join(process.cmdline()))
        except psutil.NoSuchProcess:
            continue
    return found


def _alive(process: psutil.Process) -> bool:
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
