"""Windows launcher of loky processes, and the entry point of the children.

Like the stdlib ``spawn`` launcher, with three differences: the child gets
``{**os.environ, **process_obj.env}``, the payload is pickled with loky's
pickler, and the child runs ``<pkg>.backend.popen_loky_win32.main`` (so the
package may be vendored under another name).

The module imports on every platform (it is part of the public layout), but
it can only start processes on Windows.
"""

from __future__ import annotations

import os
import sys
from multiprocessing import util
from multiprocessing.context import get_spawning_popen, set_spawning_popen

__all__ = ["Popen", "main"]

_MODULE_NAME = __spec__.name if __name__ == "__main__" and __spec__ else __name__

if sys.platform == "win32":
    import _winapi
    import msvcrt
    from multiprocessing.popen_spawn_win32 import Popen as _SpawnPopen
else:  # pragma: no cover - only the import is exercised off Windows
    _winapi = msvcrt = None

    class _SpawnPopen:
        """Stand-in base class so that this module imports on POSIX."""

        method = "spawn"


def _path_eq(p1: str, p2: str) -> bool:
    return p1 == p2 or os.path.normcase(p1) == os.path.normcase(p2)


WINENV = not _path_eq(sys.executable, getattr(sys, "_base_executable", sys.executable))


def _close_handles(*handles: int) -> None:
    for handle in handles:
        _winapi.CloseHandle(handle)


def get_command_line(pipe_handle: int, parent_pid: int) -> list[str]:
    """Command running :func:`main` in a fresh interpreter."""
    prog = (
        f"from {_MODULE_NAME} import main; "
        f"main(pipe_handle={pipe_handle}, parent_pid={parent_pid})"
    )
    from . import spawn

    return [
        spawn.get_executable(),
        *util._args_from_interpreter_flags(),
        "-c",
        prog,
        "--multiprocessing-fork",
    ]


class Popen(_SpawnPopen):
    """Start ``process_obj`` in a fresh interpreter (Windows only)."""

    method = "loky"

    def __init__(self, process_obj):
        if sys.platform != "win32":
            raise OSError(
                f"{_MODULE_NAME}.Popen can only start processes on Windows; "
                "use popen_loky_posix.Popen on this platform"
            )
        from . import reduction, spawn

        prep_data = spawn.get_preparation_data(
            process_obj._name, getattr(process_obj, "init_main_module", True)
        )
        if prep_data.get("tracker_fd") is not None:
            # The child duplicates the tracker pipe's handle from this process.
            prep_data["tracker_fd"] = msvcrt.get_osfhandle(prep_data["tracker_fd"])

        # The child duplicates the read end itself (see main()).
        rhandle, whandle = _winapi.CreatePipe(None, 0)
        wfd = msvcrt.open_osfhandle(whandle, 0)
        cmd = get_command_line(pipe_handle=rhandle, parent_pid=os.getpid())
        python_exe = cmd[0]
        env = {**os.environ, **process_obj.env}
        # bpo-35797: in a venv, bypass the redirector and run the base Python.
        if WINENV and _path_eq(python_exe, sys.executable):
            cmd[0] = python_exe = sys._base_executable
            env["__PYVENV_LAUNCHER__"] = sys.executable
        cmd_line = " ".join(f'"{arg}"' for arg in cmd)

        with open(wfd, "wb", closefd=True) as to_child:
            try:
                hp, ht, pid, _tid = _winapi.CreateProcess(
                    python_exe, cmd_line, None, None, False, 0, env, None, None
                )
                _winapi.CloseHandle(ht)
            except BaseException:
                _winapi.CloseHandle(rhandle)
                raise

            self.pid = pid
            self.returncode = None
            self._handle = hp
            self.sentinel = int(hp)
            self.finalizer = util.Finalize(
                self, _close_handles, (self.sentinel, int(rhandle))
            )

            set_spawning_popen(self)
            try:
                reduction.dump(prep_data, to_child)
                reduction.dump(process_obj, to_child)
            finally:
                set_spawning_popen(None)

    def duplicate_for_child(self, handle: int) -> int:
        from multiprocessing.reduction import duplicate

        assert self is get_spawning_popen()
        return duplicate(handle, self.sentinel)


def main(pipe_handle: int, parent_pid: int | None = None) -> None:
    """Entry point of a loky child on Windows."""
    import pickle
    from multiprocessing import process
    from multiprocessing.reduction import duplicate

    from . import spawn

    if parent_pid is not None:
        source_process = _winapi.OpenProcess(
            _winapi.SYNCHRONIZE | _winapi.PROCESS_DUP_HANDLE, False, parent_pid
        )
    else:
        source_process = None
    new_handle = duplicate(pipe_handle, source_process=source_process)
    fd = msvcrt.open_osfhandle(new_handle, os.O_RDONLY)
    parent_sentinel = source_process

    # A failure here propagates: its traceback goes to the inherited stderr.
    with os.fdopen(fd, "rb", closefd=True) as from_parent:
        process.current_process()._inheriting = True
        try:
            prep_data = pickle.load(from_parent)
            spawn.prepare(prep_data, parent_sentinel)
            process_obj = pickle.load(from_parent)
        finally:
            del process.current_process()._inheriting

    exitcode = process_obj._bootstrap(parent_sentinel=parent_sentinel)
    sys.exit(exitcode)
