"""What a process pool can leave behind in this process: child processes and
loky semaphores. Shared by the ``loky_executor`` fixture and the project's own
end-of-session leak check."""

from __future__ import annotations

import os

import psutil

SHM_DIR = "/dev/shm"


def loky_semaphore_names() -> set[str]:
    """Every loky semaphore (``sem.loky-<pid>-<random>``) in /dev/shm."""
    try:
        return {n for n in os.listdir(SHM_DIR) if n.startswith("sem.loky-")}
    except OSError:
        return set()


def made_here_or_orphaned(name: str) -> bool:
    """Ours when this process made it; a leak of anyone's when its creator is
    dead. A live *other* process's semaphore (a concurrent test run, another
    xdist worker) is none of our business."""
    try:
        pid = int(name.split("-")[1])
    except (IndexError, ValueError):
        return True
    return pid == os.getpid() or not psutil.pid_exists(pid)


def new_loky_semaphores(before: set[str]) -> set[str]:
    """Semaphores that appeared since ``before`` and are ours or orphaned."""
    return {n for n in loky_semaphore_names() - before if made_here_or_orphaned(n)}


def child_processes() -> list[psutil.Process]:
    """Live descendants of this process, resource trackers excepted (they are
    per-parent singletons meant to live as long as their parent)."""
    children = []
    for child in psutil.Process().children(recursive=True):
        try:
            if child.status() == psutil.STATUS_ZOMBIE:
                continue
            if "resource_tracker" in " ".join(child.cmdline()):
                continue
        except psutil.Error:
            continue
        children.append(child)
    return children
