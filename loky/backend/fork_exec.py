"""Start a program in a child process without calling ``os.fork()`` in Python.

``_posixsubprocess.fork_exec`` (the engine of ``subprocess``) forks (or
vforks) and execs in C, with no Python code running in between. This is what
lets loky start workers from a parent that runs threads (its own manager
thread, OpenMP/BLAS pools, ...): a bare ``os.fork()`` of a threaded parent can
deadlock the child, and Python >= 3.12 warns about it.

Only the file descriptors listed in ``keep_fds`` (plus stdio) are inherited.
"""

from __future__ import annotations

import builtins
import os
import sys
from collections.abc import Iterable, Mapping, Sequence

__all__ = ["fork_exec"]

# Size limit when reading the exec-failure report written by the child.
_ERRPIPE_MAX_READ = 50_000


def _encode_environment(env: Mapping[str, str] | None) -> list[bytes]:
    """Return ``{**os.environ, **env}`` as the ``KEY=VALUE`` byte strings
    expected by ``execve``, rejecting entries ``execve`` cannot represent."""
    merged = {**os.environ, **(env or {})}
    encoded = []
    for key, value in merged.items():
        if not isinstance(key, (str, bytes)) or not isinstance(value, (str, bytes)):
            raise TypeError(
                "environment variables must be str (or bytes), got "
                f"{type(key).__name__} key {key!r} with "
                f"{type(value).__name__} value {value!r}"
            )
        key_b, value_b = os.fsencode(key), os.fsencode(value)
        if not key_b or b"=" in key_b or b"\0" in key_b:
            raise ValueError(f"illegal environment variable name {key!r}")
        if b"\0" in value_b:
            raise ValueError(
                f"illegal environment variable value for {key!r}: embedded null byte"
            )
        encoded.append(key_b + b"=" + value_b)
    return encoded


def _call_posixsubprocess(
    args: list[bytes],
    fds_to_keep: tuple[int, ...],
    env_list: list[bytes],
    errpipe_read: int,
    errpipe_write: int,
) -> int:
    """Call the private ``_posixsubprocess.fork_exec`` with the argument
    layout of the running Python.

    Common settings: close every fd not in ``fds_to_keep`` (stdio is kept
    because no redirection is asked), inherit the cwd, keep signal
    dispositions, no new session or process group, same user and umask, no
    ``preexec_fn`` (which would run Python code after the fork).
    """
    import _posixsubprocess

    head = (
        args,
        args[:1],  # executable_list: the absolute interpreter path
        True,  # close_fds
        fds_to_keep,
        None,  # cwd
        env_list,
        -1,  # p2cread
        -1,  # p2cwrite
        -1,  # c2pread
        -1,  # c2pwrite
        -1,  # errread
        -1,  # errwrite
        errpipe_read,
        errpipe_write,
        False,  # restore_signals
        False,  # call_setsid / start_new_session
    )
    ids = (None, None, None, -1)  # gid, extra_groups, uid, child_umask
    import subprocess

    allow_vfork = getattr(subprocess, "_USE_VFORK", True)
    layouts = {
        # 3.14+: the trailing allow_vfork flag is gone (vfork decided in C).
        "3.14": (*head, -1, *ids, None),
        # 3.11-3.13: process_group after call_setsid, allow_vfork at the end.
        "3.11": (*head, -1, *ids, None, allow_vfork),
        # 3.10: no process_group (late bugfix releases may take allow_vfork).
        "3.10": (*head, *ids, None),
        "3.10-vfork": (*head, *ids, None, allow_vfork),
    }
    if sys.version_info >= (3, 14):
        order = ["3.14", "3.11"]
    elif sys.version_info >= (3, 11):
        order = ["3.11", "3.14"]
    else:
        order = ["3.10", "3.10-vfork"]
    # Argument parsing happens before any fork, so a TypeError from a layout
    # that does not match this interpreter's signature is safe to retry.
    for name in order[:-1]:
        try:
            return _posixsubprocess.fork_exec(*layouts[name])
        except TypeError:
            continue
    return _posixsubprocess.fork_exec(*layouts[order[-1]])


def _raise_child_exec_error(errpipe_data: bytes, executable: str) -> None:
    """Turn the child's ``ExceptionName:hex_errno:message`` report into the
    corresponding exception, as ``subprocess`` does."""
    try:
        exception_name, hex_errno, err_msg = errpipe_data.split(b":", 2)
        err_msg_text = err_msg.decode(errors="surrogatepass")
    except ValueError:
        exception_name, hex_errno = b"SubprocessError", b"0"
        err_msg_text = f"Bad exception data from child: {errpipe_data!r}"
    exc_type = getattr(builtins, exception_name.decode("ascii", "replace"), None)
    if not (isinstance(exc_type, type) and issubclass(exc_type, BaseException)):
        exc_type = RuntimeError
    if issubclass(exc_type, OSError) and hex_errno:
        errno_num = int(hex_errno, 16)
        if errno_num != 0:
            err_msg_text = os.strerror(errno_num)
        raise exc_type(errno_num, err_msg_text, executable)
    raise exc_type(f"failed to start {executable}: {err_msg_text}")


def fork_exec(
    cmd: Sequence[str], keep_fds: Iterable[int], env: Mapping[str, str] | None = None
) -> int:
    """Run ``cmd`` in a new child process and return its pid.

    The child inherits stdio, the file descriptors in ``keep_fds`` (made
    inheritable in the child, same numbers) and the environment
    ``{**os.environ, **env}``; every other fd is closed. The call returns
    once the child has exec'ed; if the exec fails (missing interpreter, ...)
    the child is reaped and the corresponding ``OSError`` is raised.
    """
    args = [os.fsencode(arg) for arg in cmd]
    env_list = _encode_environment(env)
    keep = {int(fd) for fd in keep_fds}
    if any(fd < 0 for fd in keep):
        raise ValueError(f"keep_fds must hold non-negative fds, got {sorted(keep)}")

    errpipe_read, errpipe_write = os.pipe()
    try:
        # The C code keeps errpipe_write open until exec (it is close-on-exec)
        # and writes the failure report to it if exec fails.
        fds_to_keep = tuple(sorted(keep | {errpipe_write}))
        pid = _call_posixsubprocess(
            args, fds_to_keep, env_list, errpipe_read, errpipe_write
        )
    finally:
        os.close(errpipe_write)
    try:
        # EOF (the write end closed by a successful exec) means success.
        errpipe_data = bytearray()
        while True:
            part = os.read(errpipe_read, _ERRPIPE_MAX_READ)
            errpipe_data += part
            if not part or len(errpipe_data) > _ERRPIPE_MAX_READ:
                break
    finally:
        os.close(errpipe_read)
    if errpipe_data:
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass
        _raise_child_exec_error(bytes(errpipe_data), os.fsdecode(args[0]))
    return pid
