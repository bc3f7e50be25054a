"""Process utilities: kill a whole process tree, name worker exit codes."""

from __future__ import annotations

import errno
import os
import signal
import sys
import time
import traceback
import warnings
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = [
    "kill_process_tree",
    "recursive_terminate",
    "get_exitcodes_terminated_worker",
]


def _import_psutil():
    """psutil, imported on first use (it is optional and slow to import).

    ``utils.psutil`` may also be set (to None: "psutil is missing"), as with
    upstream's module global: a value set on the module wins.
    """
    if "psutil" in globals():
        return globals()["psutil"]
    try:
        import psutil
    except ImportError:
        return None
    return psutil


def __getattr__(name: str) -> Any:
    # ``utils.psutil``: the psutil module or None, imported on first access.
    if name == "psutil":
        return _import_psutil()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def kill_process_tree(process: Any, use_psutil: bool = True) -> None:
    """SIGKILL ``process`` and all its descendants (deepest first), then
    join it.

    ``process`` is a ``multiprocessing`` process (anything with ``pid``,
    ``kill()`` and ``join()``). Without psutil (or with
    ``use_psutil=False``) the tree is walked with ``pgrep -P`` on POSIX and
    killed with ``taskkill /T`` on Windows.
    """
    # isinstance: a stand-in process object (a mock) may have any attribute.
    if isinstance(getattr(process, "exitcode", None), int):
        # Already reaped: its pid may belong to an unrelated process by now.
        _join(process)
        return
    psutil = _import_psutil() if use_psutil else None
    if psutil is not None:
        _kill_process_tree_with_psutil(process, psutil)
    else:
        _kill_process_tree_without_psutil(process)


def recursive_terminate(process: Any, use_psutil: bool = True) -> None:
    """Deprecated alias of :func:`kill_process_tree`."""
    warnings.warn(
        "recursive_terminate is deprecated in loky 3.2, use kill_process_treeinstead",
        DeprecationWarning,
        stacklevel=2,
    )
    kill_process_tree(process, use_psutil=use_psutil)


def _join(process: Any) -> None:
    join = getattr(process, "join", None)
    if join is None:  # e.g. a subprocess.Popen
        join = process.wait
    join()


def _kill_process_tree_with_psutil(process: Any, psutil: Any) -> None:
    try:
        descendants = psutil.Process(process.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        descendants = []
    # Children are listed parents first: kill the deepest ones first so that
    # no parent can react to (or respawn) a dead child.
    for descendant in reversed(descendants):
        try:
            descendant.kill()
        except psutil.NoSuchProcess:
            pass
    try:
        psutil.Process(process.pid).kill()
    except psutil.NoSuchProcess:
        pass
    _join(process)


def _kill_process_tree_without_psutil(process: Any) -> None:
    try:
        if sys.platform == "win32":
            _windows_taskkill_process_tree(process.pid)
        else:
            _posix_recursive_kill(process.pid)
    except Exception:
        details = traceback.format_exc()
        warnings.warn(
            "Failed to kill subprocesses on this platform. Please install"
            "psutil: https://github.com/giampaolo/psutil\n"
            f"Details:\n{details}",
            stacklevel=3,
        )
        # At least kill the process itself.
        process.kill()
    _join(process)


def _windows_taskkill_process_tree(pid: int) -> None:
    import subprocess

    try:
        subprocess.check_output(
            ["taskkill", "/F", "/T", "/PID", str(pid)], stderr=subprocess.DEVNULL
        )
    except subprocess.CalledProcessError as exc:
        # 128 and 255: the process is already gone.
        if exc.returncode not in (128, 255):
            raise


def _posix_recursive_kill(pid: int) -> None:
    """SIGKILL the children of ``pid`` (recursively) then ``pid`` itself."""
    import subprocess

    try:
        children_pids = subprocess.check_output(
            ["pgrep", "-P", str(pid)], stderr=subprocess.DEVNULL, text=True
        )
    except subprocess.CalledProcessError as exc:
        # pgrep exits 1 when no process matched.
        if exc.returncode != 1:
            raise
        children_pids = ""
    for child_pid in children_pids.split():
        _posix_recursive_kill(int(child_pid))
    try:
        os.kill(pid, signal.SIGKILL)
    except OSError as exc:
        if exc.errno != errno.ESRCH:
            raise


def get_exitcodes_terminated_worker(processes: Mapping[Any, Any]) -> str:
    """Format the exit codes of the dead processes among ``processes``
    (a dict of process objects), e.g. ``"{SIGKILL(-9), EXIT(1)}"``.

    A worker that just died may not be reaped yet: retry a few times.
    """
    patience = 5
    exitcodes = _known_exitcodes(processes.values())
    while not exitcodes and patience > 0:
        patience -= 1
        time.sleep(0.05)
        exitcodes = _known_exitcodes(processes.values())
    return _format_exitcodes(exitcodes)


def _known_exitcodes(processes: Iterable[Any]) -> list[int]:
    return [p.exitcode for p in list(processes) if p.exitcode is not None]


def _format_exitcodes(exitcodes: Iterable[int]) -> str:
    """``"{SIGSEGV(-11), EXIT(42)}"``."""
    names = [f"{_get_exitcode_name(code)}({code})" for code in exitcodes]
    return "{" + ", ".join(names) + "}"


def _get_exitcode_name(exitcode: int) -> str:
    """``"SIGSEGV"`` for -11, ``"EXIT"`` for a normal exit status,
    ``"UNKNOWN"`` when it cannot be told."""
    if sys.platform == "win32":
        # Windows exit codes do not tell signals from exit statuses.
        return "UNKNOWN"
    if exitcode < 0:
        try:
            return signal.Signals(-exitcode).name
        except ValueError:
            return "UNKNOWN"
    if exitcode == 255:
        # forkserver reports 255 for processes that died in many ways.
        return "UNKNOWN"
    return "EXIT"
