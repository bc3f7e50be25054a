"""A helper process removing named resources left behind by dead processes.

One tracker runs per parent process (its children inherit the pipe to it). Clients
send one line per operation: ``REGISTER`` (+1 reference), ``UNREGISTER`` (forget the
resource), ``MAYBE_UNLINK`` (-1 reference, clean up at 0) and ``PROBE``. When every
writer has closed the pipe (all processes of the program exited), the tracker cleans
up whatever is left and warns about it. On top of the stdlib's tracker this one
counts references and knows ``folder`` and ``file`` resources.
"""

from __future__ import annotations

import base64
import collections
import json
import os
import shutil
import signal
import sys
import threading
import time
import warnings
from multiprocessing import util

try:
    import _winapi  # noqa: F401  (looked up through globals() at call time)
except ImportError:
    pass  # replaced by a fake in tests that drive the Windows code paths

if sys.platform == "win32":  # pragma: no cover
    import msvcrt

__all__ = ["ensure_running", "register", "unregister"]

_HAVE_SIGMASK = hasattr(signal, "pthread_sigmask")
_IGNORED_SIGNALS = (signal.SIGINT, signal.SIGTERM)

# Value handed to the tracker process when it is launched.
VERBOSE = False

# POSIX guarantees that writes of at most PIPE_BUF (>= 512) bytes are atomic.
_MAX_MESSAGE_SIZE = 512
_MAX_NAME_SIZE = 255


def _noop_cleanup(name):
    raise RuntimeError("noop should never be registered or cleaned up")


def _dummy_cleanup(name):
    pass


_CLEANUP_FUNCS = {
    "noop": _noop_cleanup,
    "dummy": _dummy_cleanup,
    "folder": shutil.rmtree,
    "file": os.unlink,
}

if os.name == "posix":
    import _multiprocessing

    if hasattr(_multiprocessing, "sem_unlink"):
        _CLEANUP_FUNCS["semlock"] = _multiprocessing.sem_unlink


class ReentrantCallError(RuntimeError):
    """A tracker call was made while this thread was already inside one."""


def _encode_message(cmd: str, name: str, rtype: str, simple: bool = True) -> bytes:
    if simple and "\n" not in name:
        # surrogateescape: undecodable bytes of a path (os.fsdecode) round-trip.
        msg = f"{cmd}:{name}:{rtype}\n".encode("utf-8", "surrogateescape")
    else:
        raw = name.encode("utf-8", "surrogateescape")
        # The limit is on the name itself (NAME_MAX): its base64 form (at most
        # 340 characters) still fits a 512-byte message.
        if len(raw) > _MAX_NAME_SIZE:
            raise ValueError(
                f"shared memory name too long (max {_MAX_NAME_SIZE} bytes): {name!r}"
            )
        encoded = base64.urlsafe_b64encode(raw).decode("ascii")
        payload = {"cmd": cmd, "rtype": rtype, "base64_name": encoded}
        msg = (json.dumps(payload, separators=(",", ":")) + "\n").encode("ascii")
    if len(msg) > _MAX_MESSAGE_SIZE:
        raise ValueError("msg too long")
    return msg


def _decode_message(line) -> tuple[str, str, str]:
    """Parse one wire line into ``(cmd, rtype, name)``."""
    if isinstance(line, (bytes, bytearray)):
        line = line.decode("utf-8", "surrogateescape")
    line = line.rstrip("\n")
    if line.startswith("{"):
        payload = json.loads(line)
        name = base64.urlsafe_b64decode(payload["base64_name"]).decode(
            "utf-8", "surrogateescape"
        )
        return payload["cmd"], payload["rtype"], name
    # Names may contain ':' (Windows paths): the command ends at the first one,
    # the resource type starts after the last one.
    cmd, rest = line.split(":", 1)
    name, rtype = rest.rsplit(":", 1)
    return cmd, rtype, name


class ResourceTracker:
    """Client side: launches the tracker process on demand and talks to it."""

    def __init__(self):
        self._lock = threading.RLock()
        self._depth = 0  # nesting of tracker calls in the thread holding _lock
        self._fd = None
        self._pid = None
        self._exitcode = None
        self._proc_handle = None
        self._reentrant_messages = collections.deque()
        self._use_simple_format = True
        self._waitpid_timed_out = False

    # -- public API ---------------------------------------------------------

    def register(self, name: str, rtype: str) -> None:
        """Track ``name`` (+1 reference): it is cleaned up if left at exit."""
        self._send("REGISTER", name, rtype)

    def unregister(self, name: str, rtype: str) -> None:
        """Stop tracking ``name`` (whatever its reference count)."""
        self._send("UNREGISTER", name, rtype)

    def maybe_unlink(self, name: str, rtype: str) -> None:
        """Drop one reference to ``name``; the tracker cleans it up at zero."""
        self._send("MAYBE_UNLINK", name, rtype)

    def ensure_running(self) -> None:
        """Make sure the tracker process runs (relaunching it if it died)."""
        self._ensure_running_and_write()

    def getfd(self) -> int:
        """The write end of the pipe to the tracker (launching it if needed)."""
        self.ensure_running()
        return self._fd

    # -- writing ------------------------------------------------------------

    def _send(self, cmd: str, name: str, rtype: str) -> None:
        msg = _encode_message(cmd, name, rtype, self._use_simple_format)
        self._ensure_running_and_write(msg)

    def _write(self, msg: bytes) -> None:
        nbytes = os.write(self._fd, msg)
        assert nbytes == len(msg), f"nbytes {nbytes} but len(msg) {len(msg)}"

    def _ensure_running_and_write(self, msg: bytes | None = None) -> None:
        with self._lock:
            self._depth += 1
            try:
                if self._depth > 1:
                    # A finalizer (e.g. a SemLock's) ran during a tracker call
                    # of this very thread: the state is not reentrant-safe, so
                    # queue the message for the outer call to send.
                    if msg is None:
                        raise ReentrantCallError(
                            "Reentrant call into the loky resource tracker"
                        )
                    self._reentrant_messages.append(msg)
                    return
                if self._fd is not None:
                    try:
                        self._write(b"PROBE:0:noop\n" if msg is None else msg)
                    except OSError:
                        # The tracker died: relaunch it. The failed message is
                        # not resent (its resource may already be gone).
                        self._teardown_dead_process()
                        self._launch()
                    msg = None
                else:
                    self._launch()
                    if msg is None:
                        # Only ensuring it runs: the probe is the message.
                        msg = b"PROBE:0:noop\n"
                while self._reentrant_messages:
                    self._write(self._reentrant_messages.popleft())
                if msg is not None:
                    self._write(msg)
            finally:
                self._depth -= 1

    # -- process management -------------------------------------------------

    def _launch(self) -> None:
        fds_to_pass = []
        try:
            fds_to_pass.append(sys.stderr.fileno())
        except Exception:
            pass
        r, w = os.pipe()
        windows = sys.platform == "win32"
        try:
            if windows:  # pragma: no cover
                fd_arg = msvcrt.get_osfhandle(r)
                os.set_handle_inheritable(fd_arg, True)
            else:
                fd_arg = r
                fds_to_pass.append(r)
            # Build the command from this module's name: the package may be
            # vendored under another name.
            cmd = f"from {__name__} import main; main({fd_arg}, {bool(VERBOSE)})"
            exe = sys.executable
            args = [exe, *util._args_from_interpreter_flags(), "-c", cmd]
            old_mask = None
            try:
                # Block SIGINT/SIGTERM while spawning: the child inherits the mask
                # and cannot be killed before it installs its own handlers.
                if _HAVE_SIGMASK:
                    old_mask = signal.pthread_sigmask(
                        signal.SIG_BLOCK, _IGNORED_SIGNALS
                    )
                pid, handle = spawnv_passfds(exe, args, fds_to_pass)
            finally:
                if old_mask is not None:
                    signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        except BaseException:
            os.close(w)
            raise
        else:
            self._fd = w
            self._pid = pid
            self._proc_handle = handle
            self._exitcode = None
            self._waitpid_timed_out = False
        finally:
            os.close(r)
        util.debug(f"launched loky resource tracker (pid {pid})")

    def _teardown_dead_process(self) -> None:
        """Forget a tracker found dead (after a failed write) and warn."""
        if os.name != "posix" and sys.platform == "win32":
            winapi = globals()["_winapi"]
            try:
                os.close(self._fd)
            except OSError:
                pass
            if self._proc_handle is not None:
                try:
                    winapi.CloseHandle(self._proc_handle)
                except OSError:
                    pass
            self._fd = self._pid = self._exitcode = self._proc_handle = None
        else:
            try:
                os.close(self._fd)
            except OSError:
                pass
            try:
                # _pid is None in a child that merely inherited the pipe.
                if self._pid is not None:
                    os.waitpid(self._pid, 0)
            except ChildProcessError:
                pass
            self._fd = self._pid = self._exitcode = None
        warnings.warn(
            "resource_tracker: process died unexpectedly, relaunching.  "
            "Some resources might leak.",
            stacklevel=3,
        )

    def _stop(self, use_blocking_lock: bool = True, **kwargs) -> None:
        """Close the pipe (the tracker then cleans up and exits) and reap it."""
        if use_blocking_lock:
            with self._lock:
                self._stop_locked(**kwargs)
        else:
            acquired = self._lock.acquire(blocking=False)
            try:
                self._stop_locked(**kwargs)
            finally:
                if acquired:
                    self._lock.release()

    def _stop_locked(
        self,
        close=None,
        waitpid=None,
        waitstatus_to_exitcode=None,
        monotonic=None,
        sleep=None,
        WNOHANG=None,
        wait_timeout=None,
        wait_for_single_object=None,
        get_exit_code_process=None,
        close_handle=None,
        winapi_infinite=None,
        wait_timeout_code=None,
    ) -> None:
        if self._depth > 0:
            raise ReentrantCallError("Reentrant call into the loky resource tracker")
        if self._fd is None:
            return
        close = os.close if close is None else close
        windows_injected = any(
            f is not None
            for f in (wait_for_single_object, get_exit_code_process, close_handle)
        )
        posix_injected = any(f is not None for f in (waitpid, waitstatus_to_exitcode))
        if sys.platform == "win32" or (windows_injected and not posix_injected):
            self._stop_windows(
                close,
                wait_timeout,
                wait_for_single_object,
                get_exit_code_process,
                close_handle,
                winapi_infinite,
                wait_timeout_code,
            )
            return

        waitpid = os.waitpid if waitpid is None else waitpid
        if waitstatus_to_exitcode is None:
            waitstatus_to_exitcode = os.waitstatus_to_exitcode
        monotonic = time.monotonic if monotonic is None else monotonic
        sleep = time.sleep if sleep is None else sleep
        WNOHANG = os.WNOHANG if WNOHANG is None else WNOHANG

        # Closing the last writer makes the tracker see EOF, clean up and exit.
        close(self._fd)
        self._fd = None
        pid, self._pid = self._pid, None
        if pid is None:  # inherited pipe: the tracker is not our child
            return
        try:
            if wait_timeout is None:
                _, status = waitpid(pid, 0)
            else:
                deadline = monotonic() + wait_timeout
                delay = 0.001
                while True:
                    done_pid, status = waitpid(pid, WNOHANG)
                    if done_pid != 0:
                        break
                    remaining = deadline - monotonic()
                    if remaining <= 0:
                        self._waitpid_timed_out = True
                        self._exitcode = None
                        return
                    sleep(min(delay, remaining))
                    delay = min(delay * 2, 0.05)
        except ChildProcessError:
            self._exitcode = None
            return
        try:
            self._exitcode = waitstatus_to_exitcode(status)
        except ValueError:
            self._exitcode = None

    def _stop_windows(
        self,
        close,
        wait_timeout,
        wait_for_single_object,
        get_exit_code_process,
        close_handle,
        winapi_infinite,
        wait_timeout_code,
    ) -> None:
        winapi = globals().get("_winapi")
        if wait_for_single_object is None:
            wait_for_single_object = winapi.WaitForSingleObject
        if get_exit_code_process is None:
            get_exit_code_process = winapi.GetExitCodeProcess
        if close_handle is None:
            close_handle = winapi.CloseHandle
        if winapi_infinite is None:
            winapi_infinite = getattr(winapi, "INFINITE", 0xFFFFFFFF)
        if wait_timeout_code is None:
            wait_timeout_code = getattr(winapi, "WAIT_TIMEOUT", 258)

        close(self._fd)
        self._fd = None
        handle = self._proc_handle
        try:
            if handle is not None:
                if wait_timeout is None:
                    timeout_ms = winapi_infinite
                else:
                    timeout_ms = max(0, int(wait_timeout * 1000))
                result = wait_for_single_object(handle, timeout_ms)
                if result == wait_timeout_code:
                    self._waitpid_timed_out = True
                    self._exitcode = None
                else:
                    self._exitcode = get_exit_code_process(handle)
        finally:
            if handle is not None:
                close_handle(handle)
            self._fd = self._pid = self._proc_handle = None

    def _after_fork_in_child(self) -> None:
        """Reset the client in a forked child (the tracker is not its child)."""
        self._lock._at_fork_reinit()
        self._depth = 0
        self._reentrant_messages.clear()
        self._pid = None
        self._exitcode = None
        self._proc_handle = None
        if self._fd is not None and not _fork_preserves_fd():
            try:
                os.close(self._fd)
            except OSError:
                pass
            self._fd = None

    def __del__(self):
        # Called at interpreter exit at the latest: stop without waiting long.
        try:
            self._stop(use_blocking_lock=False, wait_timeout=1.0)
        except Exception:
            pass


def _fork_preserves_fd() -> bool:
    """Whether a forked child keeps the parent's pipe to the tracker.

    New Pythons tell, around their own forks, whether the child shares the
    parent's tracker; older ones do not, and the pipe is then kept.
    """
    from multiprocessing import resource_tracker as mp_tracker

    fork_intent = getattr(mp_tracker, "_fork_intent", None)
    if fork_intent is None:
        return True
    return bool(getattr(fork_intent, "preserve_fd", False))


def spawnv_passfds(path, args, passfds):
    """Start ``args`` with only ``passfds`` inherited; return ``(pid, handle)``."""
    if sys.platform == "win32":
        winapi = globals()["_winapi"]
        import subprocess

        cmd = subprocess.list2cmdline(args)
        hp, ht, pid, _tid = winapi.CreateProcess(
            path, cmd, None, None, True, 0, None, None, None
        )
        winapi.CloseHandle(ht)
        return pid, hp
    if isinstance(path, str):
        path = path.encode()
    return util.spawnv_passfds(path, args, passfds), None


_resource_tracker = ResourceTracker()


# Module-level functions look the singleton's methods up at call time, so that
# patching ``_resource_tracker.register`` & co. affects every caller.
def ensure_running() -> None:
    """Make sure loky's resource tracker process runs."""
    _resource_tracker.ensure_running()


def register(name: str, rtype: str) -> None:
    """Register ``name`` of type ``rtype`` with loky's resource tracker."""
    _resource_tracker.register(name, rtype)


def unregister(name: str, rtype: str) -> None:
    """Unregister ``name`` of type ``rtype`` from loky's resource tracker."""
    _resource_tracker.unregister(name, rtype)


def maybe_unlink(name: str, rtype: str) -> None:
    """Drop a reference to ``name``; the tracker cleans it up at zero."""
    _resource_tracker.maybe_unlink(name, rtype)


def getfd() -> int:
    """The write end of the pipe to loky's resource tracker."""
    return _resource_tracker.getfd()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_resource_tracker._after_fork_in_child)


###############################################################################
# The tracker process


def _check_rtype(name: str, rtype: str) -> None:
    if rtype not in _CLEANUP_FUNCS:
        raise ValueError(
            f"Cannot register {name} for automatic cleanup: unknown resource type "
            f"({rtype}). Resource type should be one of the following: "
            f"{list(_CLEANUP_FUNCS.keys())}"
        )


def main(fd: int, verbose: int = 0) -> None:
    """Run the tracker: read commands from ``fd`` until every writer is gone."""
    if verbose:
        util.log_to_stderr(level=util.DEBUG)
    # Survive ^C and "killall python": the tracker must outlive its clients to
    # clean up after them.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if _HAVE_SIGMASK:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _IGNORED_SIGNALS)
    for f in (sys.stdin, sys.stdout):
        try:
            f.close()
        except Exception:
            pass
    if verbose:
        util.debug("[ResourceTracker] Starting")

    registry: dict[str, dict[str, int]] = {rtype: {} for rtype in _CLEANUP_FUNCS}
    exit_code = 0
    try:
        if sys.platform == "win32":  # pragma: no cover
            fd = msvcrt.open_osfhandle(fd, os.O_RDONLY)
        with open(fd, "rb") as f:
            for line in f:
                try:
                    cmd, rtype, name = _decode_message(line)
                    _check_rtype(name, rtype)
                    names = registry.setdefault(rtype, {})
                    if cmd == "REGISTER":
                        names[name] = names.get(name, 0) + 1
                        if verbose:
                            util.debug(
                                f"[ResourceTracker] incremented refcount of {rtype} "
                                f"{name} (current {names[name]})"
                            )
                    elif cmd == "UNREGISTER":
                        del names[name]
                        if verbose:
                            util.debug(f"[ResourceTracker] unregister {name} {rtype}")
                    elif cmd == "MAYBE_UNLINK":
                        names[name] -= 1
                        if verbose:
                            util.debug(
                                f"[ResourceTracker] decremented refcount of {rtype} "
                                f"{name} (current {names[name]})"
                            )
                        if names[name] == 0:
                            del names[name]
                            try:
                                if verbose:
                                    util.debug(f"[ResourceTracker] unlink {name}")
                                _CLEANUP_FUNCS[rtype](name)
                            except Exception as e:
                                warnings.warn(
                                    f"resource_tracker: {name}: {e!r}", stacklevel=1
                                )
                    elif cmd == "PROBE":
                        pass
                    else:
                        raise RuntimeError(f"unrecognized command {cmd!r}")
                except Exception:
                    exit_code = 3
                    try:
                        sys.excepthook(*sys.exc_info())
                    except BaseException:
                        pass
    finally:
        # Every client is gone: clean what they left. Files before folders, so
        # that a tracked file inside a tracked folder is not removed twice.
        def order(rtype):
            return rtype == "folder"

        for rtype in sorted(registry, key=order):
            leftovers = registry[rtype]
            if not leftovers:
                continue
            if rtype != "dummy":
                exit_code = 1
                try:
                    warnings.warn(
                        f"resource_tracker: There appear to be {len(leftovers)} "
                        f"leaked {rtype} objects to clean up at shutdown: {leftovers}",
                        stacklevel=1,
                    )
                except Exception:
                    pass
            for name in leftovers:
                try:
                    if verbose:
                        util.debug(f"[ResourceTracker] unlink {name}")
                    _CLEANUP_FUNCS[rtype](name)
                except Exception as e:
                    exit_code = 2
                    try:
                        warnings.warn(f"resource_tracker: {name}: {e!r}", stacklevel=1)
                    except Exception:
                        pass
        if verbose:
            util.debug("[ResourceTracker] Exiting")
    sys.exit(exit_code)
