"""Processes a test starts, and stops by their own ids: each command leads a session of its own, so every
process it starts is found by that session id or as a descendant (``tasks.sessions``) - never by name, and
never another user's or test's process."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import psutil

from tasks.sessions import kill_session, session_members


def start(command: list[str], cwd: Path, env: dict[str, str]) -> subprocess.Popen:
    """``command`` as the leader of a new session, its output (stderr too) a text pipe."""
    return subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def members(leader: subprocess.Popen) -> list[psutil.Process]:
    """The processes of ``leader``'s session and its descendants (``tasks.sessions.session_members``)."""
    return session_members(leader.pid)


def kill_all(leader: subprocess.Popen, timeout: float = 120) -> int:
    """SIGKILL ``leader`` and every process it started (``tasks.sessions.kill_session``), then reap the leader;
    returns how many there were."""
    killed = kill_session(leader.pid, timeout)
    leader.wait(timeout)
    if leader.stdout is not None:
        leader.stdout.close()
    return killed


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

