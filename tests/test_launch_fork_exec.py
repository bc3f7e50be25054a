"""fork_exec: fork+exec in C with only the requested fds inherited, for every
private signature of ``_posixsubprocess.fork_exec``."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import types
import warnings

import pytest

from loky.backend import fork_exec as fork_exec_module
from loky.backend.fork_exec import fork_exec

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX only")


def wait_exitcode(pid):
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def test_runs_the_command_with_merged_environment_and_kept_fds(monkeypatch, tmp_path):
    monkeypatch.setenv("FORK_EXEC_INHERITED", "yes")
    kept_r, kept_w = os.pipe()
    stray_r, stray_w = os.pipe()
    os.set_inheritable(stray_r, True)  # inheritable, yet not passed
    out = tmp_path / "out.txt"
    code = (
        "import os, sys\n"
        "kept, stray, out = map(str, sys.argv[1:4])\n"
        "def is_open(fd):\n"
        "    try:\n"
        "        os.fstat(int(fd)); return True\n"
        "    except OSError:\n"
        "        return False\n"
        "with open(out, 'w') as f:\n"
        "    f.write(repr((os.environ.get('FORK_EXEC_INHERITED'),"
        " os.environ.get('FORK_EXEC_NEW'), is_open(kept), is_open(stray))))\n"
    )
    try:
        pid = fork_exec(
            [sys.executable, "-c", code, str(kept_r), str(stray_r), str(out)],
            [kept_r],
            env={"FORK_EXEC_NEW": "new"},
        )
        assert wait_exitcode(pid) == 0
    finally:
        for fd in (kept_r, kept_w, stray_r, stray_w):
            os.close(fd)
    assert out.read_text() == repr(("yes", "new", True, False))
    assert "FORK_EXEC_NEW" not in os.environ


def test_exit_status_of_the_child():
    pid = fork_exec([sys.executable, "-c", "raise SystemExit(3)"], [])
    assert wait_exitcode(pid) == 3


def test_missing_executable_is_a_clear_error_and_leaves_no_child(tmp_path):
    import psutil

    def children():  # zombies included
        return {p.pid for p in psutil.Process().children()}

    before = children()
    missing = str(tmp_path / "no-such-python")
    with pytest.raises(FileNotFoundError) as excinfo:
        fork_exec([missing, "-c", "pass"], [])
    assert excinfo.value.filename == missing
    # The failed child was reaped.
    assert children() <= before


@pytest.mark.parametrize(
    "env, keep_fds, error, match",
    [
        ({"A": 1}, [], TypeError, "must be str"),
        ({"": "x"}, [], ValueError, "illegal environment variable name"),
        ({"A": "a\0b"}, [], ValueError, "null byte"),
        ({}, [-1], ValueError, "non-negative"),
    ],
)
def test_bad_arguments(env, keep_fds, error, match):
    with pytest.raises(error, match=match):
        fork_exec([sys.executable, "-c", "pass"], keep_fds, env=env)


def test_no_warning_and_no_os_fork_with_threads_alive(monkeypatch):
    def forbidden_fork():
        raise AssertionError("os.fork() must not be called")

    monkeypatch.setattr(os, "fork", forbidden_fork)
    stop = threading.Event()
    thread = threading.Thread(target=stop.wait)
    thread.start()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            pid = fork_exec([sys.executable, "-c", "pass"], [])
    finally:
        stop.set()
        thread.join()
    assert wait_exitcode(pid) == 0


# --- the private signature of each Python version -----------------------------


class FakeForkExec:
    """Accepts exactly ``arity`` positional arguments, like the C function."""

    def __init__(self, arity, text_signature=None):
        self.arity = arity
        self.calls = []
        if text_signature is not None:
            self.__text_signature__ = text_signature

    def __call__(self, *args):
        self.calls.append(args)
        if len(args) != self.arity:
            raise TypeError(
                f"fork_exec() takes exactly {self.arity} arguments ({len(args)} given)"
            )
        return 4242


def call_with(monkeypatch, version, fake):
    monkeypatch.setitem(
        sys.modules, "_posixsubprocess", types.SimpleNamespace(fork_exec=fake)
    )
    monkeypatch.setattr(
        fork_exec_module, "sys", types.SimpleNamespace(version_info=version)
    )
    return fork_exec_module._call_posixsubprocess(
        [b"/bin/python", b"-c"], (5, 9), [b"A=1"], 7, 8
    )


COMMON = [[b"/bin/python", b"-c"], [b"/bin/python"], True, (5, 9), None, [b"A=1"]]
COMMON += [-1] * 6 + [7, 8, False, False]


def test_python_310_layout(monkeypatch):
    fake = FakeForkExec(21)
    assert call_with(monkeypatch, (3, 10, 4), fake) == 4242
    assert list(fake.calls[-1]) == COMMON + [None, None, None, -1, None]


def test_python_310_with_allow_vfork(monkeypatch):
    fake = FakeForkExec(22)
    assert call_with(monkeypatch, (3, 10, 14), fake) == 4242
    assert list(fake.calls[-1]) == COMMON + [
        None,
        None,
        None,
        -1,
        None,
        subprocess._USE_VFORK,
    ]


@pytest.mark.parametrize("version", [(3, 11, 0), (3, 12, 1), (3, 13, 0)])
def test_python_311_to_313_layout(monkeypatch, version):
    fake = FakeForkExec(23)
    assert call_with(monkeypatch, version, fake) == 4242
    assert len(fake.calls) == 1  # the first guess is right
    assert list(fake.calls[0]) == COMMON + [
        -1,
        None,
        None,
        None,
        -1,
        None,
        subprocess._USE_VFORK,
    ]


def test_python_314_layout(monkeypatch):
    fake = FakeForkExec(22)
    assert call_with(monkeypatch, (3, 14, 0), fake) == 4242
    assert len(fake.calls) == 1
    assert list(fake.calls[0]) == COMMON + [-1, None, None, None, -1, None]


def test_layout_from_text_signature(monkeypatch):
    # A hypothetical future order, read from the Argument Clinic signature.
    names = [
        "args", "executable_list", "close_fds", "fds_to_keep", "cwd", "env_list",
        "p2cread", "p2cwrite", "c2pread", "c2pwrite", "errread", "errwrite",
        "errpipe_read", "errpipe_write", "restore_signals", "call_setsid",
        "pgid_to_set", "gid", "extra_groups", "uid", "child_umask", "preexec_fn",
    ]  # fmt: skip
    signature = "($module, " + ", ".join(reversed(names)) + ", /)"
    fake = FakeForkExec(22, text_signature=signature)
    assert call_with(monkeypatch, (3, 15, 0), fake) == 4242
    expected = COMMON + [-1, None, None, None, -1, None]
    assert list(fake.calls[0]) == list(reversed(expected))


def test_unknown_signature_names_fall_back_to_the_version_table(monkeypatch):
    fake = FakeForkExec(22, text_signature="($module, something_new, /)")
    assert call_with(monkeypatch, (3, 14, 0), fake) == 4242
    assert len(fake.calls) == 1


def test_mismatching_signature_raises_the_type_error(monkeypatch):
    fake = FakeForkExec(30)
    with pytest.raises(TypeError, match="takes exactly 30 arguments"):
        call_with(monkeypatch, (3, 12, 0), fake)
