"""Preparation data: what a fresh child needs from its parent before it can
unpickle the process object (name, authkey, sys.path, cwd, logging, the
resource trackers' fds and, optionally, how to re-run the main module)."""

from __future__ import annotations

import os
import runpy
import sys
import types
from multiprocessing import process, util
from typing import Any

from .process import AuthenticationKey

__all__ = ["get_preparation_data", "prepare", "get_executable"]

if sys.platform != "win32":
    WINEXE = False
    WINSERVICE = False
else:
    WINEXE = getattr(sys, "frozen", False)
    WINSERVICE = bool(sys.executable) and sys.executable.lower().endswith(
        "pythonservice.exe"
    )

# Main modules replaced by __mp_main__, kept alive so that their globals
# (still referenced by functions defined there) are not cleared.
old_main_modules: list[types.ModuleType] = []


def get_executable() -> str:
    """The interpreter used to start children."""
    return sys.executable


def _check_not_importing_main() -> None:
    if getattr(process.current_process(), "_inheriting", False):
        raise RuntimeError(
            """
        An attempt has been made to start a new process before the
        current process has finished its bootstrapping phase.

        This probably means that you are not using fork to start your
        child processes and you have forgotten to use the proper idiom
        in the main module:

            if __name__ == '__main__':
                freeze_support()
                ...

        The "freeze_support()" line can be omitted if the program
        is not going to be frozen to produce an executable."""
        )


def get_preparation_data(name: str, init_main_module: bool = True) -> dict[str, Any]:
    """Return the data a child needs to mimic its parent (see :func:`prepare`).

    Starts the resource trackers (loky's and, on POSIX, the stdlib's) so that
    the child inherits them instead of launching its own.
    """
    _check_not_importing_main()
    data: dict[str, Any] = dict(
        log_to_stderr=util._log_to_stderr,
        authkey=AuthenticationKey(process.current_process().authkey),
    )

    if util._logger is not None:
        data["log_level"] = util._logger.getEffectiveLevel()
        if util._logger.handlers:
            formatter = util._logger.handlers[0].formatter
            if formatter is not None and getattr(formatter, "_fmt", None):
                data["log_fmt"] = formatter._fmt

    sys_path = list(sys.path)
    try:
        i = sys_path.index("")
    except ValueError:
        pass
    else:
        sys_path[i] = process.ORIGINAL_DIR

    data.update(
        name=name,
        sys_path=sys_path,
        sys_argv=sys.argv,
        orig_dir=process.ORIGINAL_DIR,
        dir=os.getcwd(),
    )

    from . import resource_tracker

    data["tracker_fd"] = resource_tracker._resource_tracker.getfd()
    if sys.platform != "win32":
        # Children share the parent's stdlib tracker: a worker unlinking
        # stdlib shared memory made by the parent then stays silent.
        from multiprocessing.resource_tracker import (
            _resource_tracker as mp_resource_tracker,
        )

        data["mp_tracker_fd"] = mp_resource_tracker.getfd()

    if init_main_module:
        data.update(_main_module_data())
    return data


def _main_module_data() -> dict[str, str]:
    """How a child should re-run the parent's ``__main__`` (nothing for
    interactive sessions and ``-c`` programs)."""
    main_module = sys.modules.get("__main__")
    main_mod_name = getattr(getattr(main_module, "__spec__", None), "name", None)
    if main_mod_name is not None:
        return {"init_main_from_name": main_mod_name}
    if sys.platform != "win32" or (not WINEXE and not WINSERVICE):
        main_path = getattr(main_module, "__file__", None)
        if main_path is not None:
            if not os.path.isabs(main_path) and process.ORIGINAL_DIR is not None:
                main_path = os.path.join(process.ORIGINAL_DIR, main_path)
            return {"init_main_from_path": os.path.normpath(main_path)}
    return {}


def prepare(data: dict[str, Any], parent_sentinel: Any = None) -> None:
    """Make the current (child) process look like its parent.

    ``parent_sentinel`` is the parent's process handle on Windows, used to
    duplicate the resource tracker's pipe handle; unused on POSIX.
    """
    if "name" in data:
        process.current_process().name = data["name"]

    if "authkey" in data:
        process.current_process().authkey = data["authkey"]

    if data.get("log_to_stderr"):
        util.log_to_stderr()

    if "log_level" in data:
        util.get_logger().setLevel(data["log_level"])

    if "log_fmt" in data:
        import logging

        for handler in util.get_logger().handlers[:1]:
            handler.setFormatter(logging.Formatter(data["log_fmt"]))

    if "sys_path" in data:
        sys.path = data["sys_path"]

    if "sys_argv" in data:
        sys.argv = data["sys_argv"]

    if "dir" in data:
        os.chdir(data["dir"])

    if "orig_dir" in data:
        process.ORIGINAL_DIR = data["orig_dir"]

    if "mp_tracker_fd" in data:
        from multiprocessing.resource_tracker import (
            _resource_tracker as mp_resource_tracker,
        )

        mp_resource_tracker._fd = data["mp_tracker_fd"]

    if "tracker_fd" in data:
        from . import resource_tracker

        tracker_fd = data["tracker_fd"]
        if sys.platform == "win32" and tracker_fd is not None:
            import msvcrt
            from multiprocessing.reduction import duplicate

            handle = duplicate(tracker_fd, source_process=parent_sentinel)
            tracker_fd = msvcrt.open_osfhandle(handle, os.O_WRONLY)
        resource_tracker._resource_tracker._fd = tracker_fd

    if "init_main_from_name" in data:
        _fixup_main_from_name(data["init_main_from_name"])
    elif "init_main_from_path" in data:
        _fixup_main_from_path(data["init_main_from_path"])


def _fixup_main_from_name(mod_name: str) -> None:
    """Re-run the parent's ``-m`` main module as ``__mp_main__``."""
    current_main = sys.modules["__main__"]
    # __main__.py files of packages, zip archives... run their main-only code
    # unconditionally: never re-run them.
    if mod_name == "__main__" or mod_name.endswith(".__main__"):
        return
    if getattr(getattr(current_main, "__spec__", None), "name", None) == mod_name:
        return
    old_main_modules.append(current_main)
    main_module = types.ModuleType("__mp_main__")
    main_content = runpy.run_module(mod_name, run_name="__mp_main__", alter_sys=True)
    main_module.__dict__.update(main_content)
    sys.modules["__main__"] = sys.modules["__mp_main__"] = main_module


def _fixup_main_from_path(main_path: str) -> None:
    """Re-run the parent's main script as ``__mp_main__``."""
    current_main = sys.modules["__main__"]
    # IPython's launch script has no ``if __name__ == "__main__"`` guard.
    main_name = os.path.splitext(os.path.basename(main_path))[0]
    if main_name == "ipython":
        return
    if getattr(current_main, "__file__", None) == main_path:
        return
    old_main_modules.append(current_main)
    main_module = types.ModuleType("__mp_main__")
    main_content = runpy.run_path(main_path, run_name="__mp_main__")
    main_module.__dict__.update(main_content)
    sys.modules["__main__"] = sys.modules["__mp_main__"] = main_module
