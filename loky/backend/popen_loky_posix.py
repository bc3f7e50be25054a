"""POSIX launcher of loky processes, and the entry point of the children.

The parent never calls ``os.fork()``: it fork+execs (in C) a fresh
interpreter running ``python -m <this module> --process-name NAME --pipe FD``
that inherits only the fds it needs, then writes the pickled preparation
data and process object to the pipe ``FD``. The child holds the write end of
a second pipe whose read end, in the parent, is the process ``sentinel``: it
becomes readable when the child exits.

This module must not be imported by ``<pkg>.backend`` at import time:
children run it with ``-m``, and runpy warns when the module is already in
``sys.modules`` by then.
"""

from __future__ import annotations

import io
import os
import signal
import sys
import threading
from multiprocessing import util
from multiprocessing.context import set_spawning_popen

__all__ = ["Popen"]

# The module's importable name, even when it runs as the child's __main__.
_MODULE_NAME = __spec__.name if __name__ == "__main__" and __spec__ else __name__


class _DupFd:
    """An fd passed to the child under the same number (``detach()`` gives
    it back in the child)."""

    def __init__(self, fd: int):
        self.fd = fd

    def detach(self) -> int:
        return self.fd


def _close_fds(fds: list[int]) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


class Popen:
    """Start ``process_obj`` in a fresh interpreter (see the module doc)."""

    method = "loky"
    DupFd = _DupFd

    def __init__(self, process_obj):
        util._flush_std_streams()
        self.returncode: int | None = None
        # The manager thread and a user's join() may reap the same child: one
        # waitpid under this lock, so the loser reads the stored code instead
        # of getting ECHILD (and None) from a second waitpid.
        self._reap_lock = threading.Lock()
        self.finalizer = None
        self.pid: int | None = None
        self.sentinel: int | None = None
        # Fds the child inherits: the registered ones (duplicate_for_child),
        # the trackers' and the two child pipe ends.
        self._fds: list[int] = []
        self._launch(process_obj)

    def duplicate_for_child(self, fd: int) -> int:
        """Register ``fd`` to be inherited by the child (same number)."""
        self._fds.append(fd)
        return fd

    def poll(self, flag: int = os.WNOHANG) -> int | None:
        """Exit code (``-signum`` if killed by a signal), None if running."""
        with self._reap_lock:
            if self.returncode is None:
                try:
                    pid, status = os.waitpid(self.pid, flag)
                except ChildProcessError:
                    # Reaped behind our back (a waitpid or psutil wait elsewhere):
                    # its status is lost. Once the sentinel shows it gone, take 0
                    # as subprocess does, so that is_alive() turns False and the
                    # process leaves multiprocessing's children (and frees what it
                    # holds) instead of looking alive for ever.
                    if self._sentinel_fired():
                        self.returncode = 0
                    return self.returncode
                except OSError:
                    return None  # interrupted: no status to report yet
                if pid == self.pid:
                    self.returncode = os.waitstatus_to_exitcode(status)
            return self.returncode

    def _sentinel_fired(self) -> bool:
        from multiprocessing.connection import wait

        try:
            return self.sentinel is not None and bool(wait([self.sentinel], 0))
        except (OSError, ValueError):  # sentinel already closed
            return False

    def wait(self, timeout: float | None = None) -> int | None:
        """Wait for the child to exit (on the sentinel); None on timeout."""
        if self.returncode is None:
            if self.sentinel is not None:
                from multiprocessing.connection import wait

                # Wait on the sentinel, not in waitpid: a blocking waitpid
                # would hold the reap lock against other pollers meanwhile.
                if not wait([self.sentinel], timeout):
                    return None
            # Once the sentinel fired, a blocking waitpid returns at once.
            return self.poll(os.WNOHANG if timeout == 0.0 else 0)
        return self.returncode

    def _send_signal(self, sig: int) -> None:
        if self.returncode is None:
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass
            except OSError:
                if self.wait(timeout=0.1) is None:
                    raise

    def terminate(self) -> None:
        """Send SIGTERM (a vanished process is ignored)."""
        self._send_signal(signal.SIGTERM)

    def kill(self) -> None:
        """Send SIGKILL (a vanished process is ignored)."""
        self._send_signal(signal.SIGKILL)

    def interrupt(self) -> None:
        """Send SIGINT (``BaseProcess.interrupt()`` on Python >= 3.14)."""
        self._send_signal(signal.SIGINT)

    def close(self) -> None:
        """Close the parent's ends of the pipes (the sentinel included)."""
        if self.finalizer is not None:
            self.finalizer()

    @staticmethod
    def thread_is_spawning() -> bool:
        return True

    def _launch(self, process_obj) -> None:
        from . import reduction, spawn
        from .fork_exec import fork_exec

        prep_data = spawn.get_preparation_data(
            process_obj._name, getattr(process_obj, "init_main_module", True)
        )
        for key in ("tracker_fd", "mp_tracker_fd"):
            if prep_data.get(key) is not None:
                self._fds.append(prep_data[key])

        parent_r = child_w = child_r = parent_w = None
        try:
            # Sentinel pipe: the child holds child_w until it exits.
            parent_r, child_w = os.pipe()
            # Payload pipe: the parent writes, the child reads then closes.
            child_r, parent_w = os.pipe()
            # The child's end of the sentinel pipe doubles as its parent
            # sentinel: it reports an error once the parent closed parent_r.
            prep_data["parent_sentinel"] = child_w

            payload = io.BytesIO()
            set_spawning_popen(self)
            try:
                reduction.dump(prep_data, payload)
                reduction.dump(process_obj, payload)
            finally:
                set_spawning_popen(None)

            cmd = [
                spawn.get_executable(),
                *util._args_from_interpreter_flags(),
                "-m",
                _MODULE_NAME,
                "--process-name",
                str(process_obj.name),
                "--pipe",
                str(child_r),
            ]
            self._fds.extend([child_r, child_w])
            env = getattr(process_obj, "env", None)
            self.pid = fork_exec(cmd, self._fds, env=env)
            self.sentinel = parent_r
            try:
                with open(parent_w, "wb", closefd=True) as to_child:
                    parent_w = None  # closed by the file object
                    to_child.write(payload.getbuffer())
            except BrokenPipeError:
                # The child died before reading: its exit code tells why.
                pass
        except BaseException:
            _close_fds([fd for fd in (parent_r, parent_w) if fd is not None])
            if self.pid is not None:
                # Interrupted after the launch: do not leave a child behind.
                self.kill()
                self.wait()
            raise
        finally:
            for fd in (child_r, child_w):
                if fd is not None:
                    os.close(fd)
        self.finalizer = util.Finalize(self, _close_fds, ([parent_r],))


def main() -> None:
    """Entry point of a loky child: read the preparation data and the
    process object from ``--pipe``, then run the process."""
    import pickle
    from multiprocessing import process

    from . import spawn

    process_name, pipe_fd = _parse_args(sys.argv[1:])
    exitcode = 1
    try:
        with os.fdopen(pipe_fd, "rb") as from_parent:
            process.current_process()._inheriting = True
            try:
                prep_data = pickle.load(from_parent)
                parent_sentinel = prep_data.pop("parent_sentinel", None)
                _keep_sentinel_to_self(parent_sentinel)
                spawn.prepare(prep_data)
                process_obj = pickle.load(from_parent)
            finally:
                del process.current_process()._inheriting
        exitcode = process_obj._bootstrap(parent_sentinel=parent_sentinel)
    except Exception:
        import traceback

        # stdout, like upstream: stderr may be captured differently.
        print(f"\n\n{'-' * 80}\n{process_name} failed with traceback: ")
        print(f"{'-' * 80}")
        print(traceback.format_exc())
        print(f"\n{'-' * 80}\n", flush=True)
    sys.exit(exitcode)


def _keep_sentinel_to_self(fd: int | None) -> None:
    """The parent sees this process die when ``fd`` (the write end of its
    sentinel pipe) closes: no grandchild may keep it open. Exec'ed children
    lose it (close-on-exec); forked ones close it right after the fork."""
    if fd is None:
        return
    os.set_inheritable(fd, False)

    def close_inherited_sentinel():
        try:
            os.close(fd)
        except OSError:
            pass

    os.register_at_fork(after_in_child=close_inherited_sentinel)


def _parse_args(argv: list[str]) -> tuple[str, int]:
    """Parse ``--process-name NAME --pipe FD`` (no argparse: fast start)."""
    options = {"--process-name": "", "--pipe": None}
    args = iter(argv)
    for arg in args:
        if arg not in options:
            raise SystemExit(f"{_MODULE_NAME}: unexpected argument {arg!r}")
        options[arg] = next(args, None)
    if options["--pipe"] is None or not options["--pipe"].isdigit():
        raise SystemExit(f"{_MODULE_NAME}: --pipe FD is required")
    return options["--process-name"] or "", int(options["--pipe"])


if __name__ == "__main__":
    main()
