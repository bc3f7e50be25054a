"""loky.backend.utils: process-tree kill (with and without psutil) and
exit-code naming."""

from __future__ import annotations

import multiprocessing
import signal
import subprocess
import sys
import time
import types
import warnings

import psutil
import pytest
from test_launch_targets import block_on, nested_chain

from loky.backend import utils
from loky.backend.process import LokyProcess
from loky.backend.utils import (
    _format_exitcodes,
    _get_exitcode_name,
    get_exitcodes_terminated_worker,
    kill_process_tree,
    recursive_terminate,
)

DEPTH = 3


def start_chain(depth=DEPTH):
    """A chain of depth + 1 nested LokyProcesses; returns the top process,
    the pids of every level and the parent's end of the shared pipe."""
    r, w = multiprocessing.Pipe()
    top = LokyProcess(target=nested_chain, args=(w, depth))
    top.start()
    pids = [r.recv() for _ in range(depth + 1)]
    return top, pids, r


def is_gone(pid):
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def wait_gone(pids, timeout=30):
    """Pids still running (zombies count as gone: the killed intermediate
    processes are reaped by whoever adopts them, possibly slowly)."""
    deadline = time.monotonic() + timeout
    while True:
        alive = [pid for pid in pids if not is_gone(pid)]
        if not alive or time.monotonic() > deadline:
            return alive
        procs = [p for p in map(_process_or_none, alive) if p is not None]
        psutil.wait_procs(procs, timeout=0.05)


def _process_or_none(pid):
    try:
        return psutil.Process(pid)
    except psutil.NoSuchProcess:
        return None


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
@pytest.mark.parametrize("use_psutil", [True, False])
def test_kill_process_tree_kills_a_deep_chain(use_psutil):
    top, pids, conn = start_chain()
    try:
        assert len(set(pids)) == DEPTH + 1
        assert pids[0] == top.pid
        kill_process_tree(top, use_psutil=use_psutil)
        assert top.exitcode == -signal.SIGKILL
        assert wait_gone(pids) == []
    finally:
        if top.is_alive():
            top.kill()
            top.join()
        conn.close()


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_kill_process_tree_without_psutil_installed(monkeypatch):
    monkeypatch.setitem(sys.modules, "psutil", None)
    top, pids, conn = start_chain(depth=1)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            kill_process_tree(top)
        assert top.exitcode == -signal.SIGKILL
    finally:
        monkeypatch.undo()
        if top.is_alive():
            top.kill()
            top.join()
        conn.close()
    assert wait_gone(pids) == []


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_failing_tree_walk_warns_and_kills_the_process(monkeypatch):
    def broken_check_output(*args, **kwargs):
        raise FileNotFoundError(2, "No such file or directory", "pgrep")

    r, w = multiprocessing.Pipe()
    p = LokyProcess(target=block_on, args=(w,))
    p.start()
    try:
        assert r.recv() == "ready"
        monkeypatch.setattr(subprocess, "check_output", broken_check_output)
        with pytest.warns(UserWarning) as record:
            kill_process_tree(p, use_psutil=False)
        message = str(record[0].message)
        assert message.startswith(
            "Failed to kill subprocesses on this platform. Please install"
            "psutil: https://github.com/giampaolo/psutil\nDetails:\n"
        )
        assert "pgrep" in message
        assert p.exitcode == -signal.SIGKILL
    finally:
        if p.is_alive():
            p.kill()
            p.join()


def test_kill_process_tree_on_a_dead_process(monkeypatch):
    p = LokyProcess(target=block_on, args=(None,))
    p.start()
    p.join()  # block_on(None) fails at once: exit code 1
    assert p.exitcode == 1

    # A reaped pid may be reused: nothing may be signalled.
    def forbidden(*args, **kwargs):
        raise AssertionError("must not look up or signal a reaped pid")

    monkeypatch.setattr(utils, "_import_psutil", forbidden)
    monkeypatch.setattr(subprocess, "check_output", forbidden)
    monkeypatch.setattr(utils.os, "kill", forbidden)
    kill_process_tree(p)
    kill_process_tree(p, use_psutil=False)
    assert p.exitcode == 1


def test_windows_taskkill(monkeypatch):
    calls = []

    def check_output(cmd, **kwargs):
        calls.append(cmd)
        raise subprocess.CalledProcessError(128, cmd)  # already gone

    monkeypatch.setattr(subprocess, "check_output", check_output)
    utils._windows_taskkill_process_tree(1234)
    assert calls == [["taskkill", "/F", "/T", "/PID", "1234"]]

    def failing(cmd, **kwargs):
        raise subprocess.CalledProcessError(1, cmd)

    monkeypatch.setattr(subprocess, "check_output", failing)
    with pytest.raises(subprocess.CalledProcessError):
        utils._windows_taskkill_process_tree(1234)


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_recursive_terminate_is_deprecated():
    top, pids, conn = start_chain(depth=1)
    try:
        with pytest.warns(DeprecationWarning) as record:
            recursive_terminate(top)
        assert [str(w.message) for w in record] == [
            "recursive_terminate is deprecated in loky 3.2, use kill_process_treeinstead"
        ]
        assert top.exitcode == -signal.SIGKILL
    finally:
        if top.is_alive():
            top.kill()
            top.join()
        conn.close()
    assert wait_gone(pids) == []


@pytest.mark.parametrize(
    "code, name",
    [
        (-signal.SIGSEGV, "SIGSEGV"),
        (-signal.SIGKILL, "SIGKILL"),
        (-signal.SIGTERM, "SIGTERM"),
        (-1000, "UNKNOWN"),
        (0, "EXIT"),
        (1, "EXIT"),
        (42, "EXIT"),
        (255, "UNKNOWN"),
    ],
)
def test_get_exitcode_name(monkeypatch, code, name):
    monkeypatch.setattr(sys, "platform", "linux")
    assert _get_exitcode_name(code) == name
    monkeypatch.setattr(sys, "platform", "win32")
    assert _get_exitcode_name(code) == "UNKNOWN"


def test_format_exitcodes(monkeypatch):
    monkeypatch.setattr(sys, "platform", "linux")
    assert _format_exitcodes([]) == "{}"
    assert _format_exitcodes([-11, 42, 255]) == "{SIGSEGV(-11), EXIT(42), UNKNOWN(255)}"


def fake_process(*exitcodes):
    """exitcode is None until the listed values are consumed."""
    values = iter(exitcodes)
    state = {"value": None}

    class Fake:
        @property
        def exitcode(self):
            state["value"] = next(values, state["value"])
            return state["value"]

    return Fake()


def test_get_exitcodes_terminated_worker(monkeypatch):
    monkeypatch.setattr(sys, "platform", "linux")
    sleeps = []
    monkeypatch.setattr(utils, "time", types.SimpleNamespace(sleep=sleeps.append))
    processes = {
        1: types.SimpleNamespace(exitcode=-9),
        2: types.SimpleNamespace(exitcode=None),
        3: types.SimpleNamespace(exitcode=42),
    }
    assert get_exitcodes_terminated_worker(processes) == "{SIGKILL(-9), EXIT(42)}"
    assert sleeps == []

    # A death not reaped yet: retried until it shows up.
    late = {1: fake_process(None, None, None, -11)}
    assert get_exitcodes_terminated_worker(late) == "{SIGSEGV(-11)}"
    assert sleeps == [0.05] * 3

    # Nothing ever shows up: five retries of 50 ms.
    sleeps.clear()
    assert (
        get_exitcodes_terminated_worker({1: types.SimpleNamespace(exitcode=None)})
        == "{}"
    )
    assert sleeps == [0.05] * 5


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_get_exitcodes_of_real_processes():
    r, w = multiprocessing.Pipe()
    p = LokyProcess(target=block_on, args=(w,))
    p.start()
    assert r.recv() == "ready"
    p.kill()
    p.join()
    assert get_exitcodes_terminated_worker({p.pid: p}) == "{SIGKILL(-9)}"
