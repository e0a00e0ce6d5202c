"""A command's whole process tree, found by its own ids: the command leads a session of its own, so every
process it starts (Ray's daemons and workers, DVC's stage, the stage's Ray instance) is in that session or
a descendant - never found by name, never another user's process. The tests' and the scale benchmark's one
way to see and to kill what a command left running."""

from __future__ import annotations

import os
import signal

import psutil


def session_members(leader: int) -> list[psutil.Process]:
    """Process ``leader`` and every process it started: its descendants, and its session's processes (a daemon
    that left its parent stays in the session). Call it before reaping the leader: its pid is then not reused."""
    found: dict[int, psutil.Process] = {}
    try:
        root = psutil.Process(leader)
        found = {p.pid: p for p in [root, *root.children(recursive=True)]}
    except psutil.NoSuchProcess:
        pass
    for pid in psutil.pids():
        try:
            if pid not in found and os.getsid(pid) == leader:
                found[pid] = psutil.Process(pid)
        except (ProcessLookupError, PermissionError, psutil.NoSuchProcess):
            continue
    return [p for p in found.values() if p.pid != os.getpid()]


def kill_session(leader: int, timeout: float = 120) -> int:
    """SIGKILL ``leader`` and every process it started, as a crash or ``kill -9`` of the whole tree would; returns
    how many there were. Repeats while processes started meanwhile remain (ten rounds at most); RuntimeError if
    one survives SIGKILL or they keep starting. The leader itself is not reaped (its parent's to wait for)."""
    killed: set[int] = set()
    for _ in range(10):
        alive = [p for p in session_members(leader) if _alive(p)]
        if not alive:
            return len(killed)
        for process in alive:
            try:
                process.send_signal(signal.SIGKILL)
            except psutil.NoSuchProcess:
                pass
        killed.update(p.pid for p in alive)
        _, still = psutil.wait_procs([p for p in alive if p.pid != leader], timeout=timeout)
        if still:
            raise RuntimeError(f"processes survived SIGKILL: {still}")
    raise RuntimeError(f"the processes of session {leader} kept starting while being killed")


def _alive(process: psutil.Process) -> bool:
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
