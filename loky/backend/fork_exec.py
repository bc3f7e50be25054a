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


# Parameter names of ``_posixsubprocess.fork_exec`` in positional order.
_COMMON_HEAD = (
    "args", "executable_list", "close_fds", "pass_fds", "cwd", "env",
    "p2cread", "p2cwrite", "c2pread", "c2pwrite", "errread", "errwrite",
    "errpipe_read", "errpipe_write", "restore_signals", "call_setsid",
)  # fmt: skip
_IDS = ("gid", "extra_groups", "uid", "child_umask", "preexec_fn")
_LAYOUTS = {
    # 3.10: no process group.
    "3.10": (*_COMMON_HEAD, *_IDS),
    # 3.11-3.13: process group after call_setsid, allow_vfork at the end.
    "3.11": (*_COMMON_HEAD, "pgid_to_set", *_IDS, "allow_vfork"),
    # 3.14+: no allow_vfork flag any more (vfork is decided in C).
    "3.14": (*_COMMON_HEAD, "pgid_to_set", *_IDS),
}
# Aliases used by some versions' (Argument Clinic) signatures.
_ALIASES = {
    "fds_to_keep": "pass_fds",
    "env_list": "env",
    "process_group": "pgid_to_set",
}


def _signature_layout(func) -> tuple[str, ...] | None:
    """Parameter names from the function's text signature (3.12+), or None
    if there is none or it names a parameter we do not know."""
    text = getattr(func, "__text_signature__", None)
    if not text:
        return None
    names = []
    for part in text.strip().lstrip("(").rstrip(")").split(","):
        name = part.split("=")[0].strip()
        if not name or name in ("/", "*") or name.startswith("$"):
            continue
        names.append(_ALIASES.get(name, name))
    known = {name for layout in _LAYOUTS.values() for name in layout}
    return tuple(names) if set(names) <= known else None


def _call_posixsubprocess(
    args: list[bytes],
    fds_to_keep: tuple[int, ...],
    env_list: list[bytes],
    errpipe_read: int,
    errpipe_write: int,
) -> int:
    """Call the private ``_posixsubprocess.fork_exec``, whose signature
    differs between Python versions.

    Settings: close every fd not in ``fds_to_keep`` (stdio is kept since no
    redirection is asked), inherit the cwd, keep signal dispositions, no new
    session or process group, same user and umask, no ``preexec_fn`` (which
    would run Python code after the fork).
    """
    import _posixsubprocess
    import subprocess

    values = {
        "args": args,
        "executable_list": args[:1],  # the absolute interpreter path
        "close_fds": True,
        "pass_fds": fds_to_keep,
        "cwd": None,
        "env": env_list,
        "p2cread": -1,
        "p2cwrite": -1,
        "c2pread": -1,
        "c2pwrite": -1,
        "errread": -1,
        "errwrite": -1,
        "errpipe_read": errpipe_read,
        "errpipe_write": errpipe_write,
        "restore_signals": False,
        "call_setsid": False,
        "pgid_to_set": -1,
        "gid": None,
        "extra_groups": None,
        "uid": None,
        "child_umask": -1,
        "preexec_fn": None,
        "allow_vfork": getattr(subprocess, "_USE_VFORK", True),
    }
    if sys.version_info >= (3, 14):
        candidates = ["3.14", "3.11"]
    elif sys.version_info >= (3, 11):
        candidates = ["3.11", "3.14"]
    else:
        # Some late 3.10 bugfix releases may take a trailing allow_vfork.
        candidates = ["3.10"]
    layouts = [_LAYOUTS[name] for name in candidates]
    if sys.version_info[:2] == (3, 10):
        layouts.append((*_LAYOUTS["3.10"], "allow_vfork"))
    from_signature = _signature_layout(_posixsubprocess.fork_exec)
    if from_signature is not None:
        layouts.insert(0, from_signature)

    # Arguments are parsed before any fork: a TypeError raised by a layout
    # that does not match this interpreter's signature is safe to retry.
    for layout in layouts[:-1]:
        try:
            return _posixsubprocess.fork_exec(*(values[name] for name in layout))
        except TypeError:
            continue
    return _posixsubprocess.fork_exec(*(values[name] for name in layouts[-1]))


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
