"""loky.backend.resource_tracker: client, wire format, tracker process, Windows paths."""

from __future__ import annotations

import base64
import json
import os
import signal
import sys
import time
import warnings

import psutil
import pytest
from _helpers import run_python as _run_python
from hypothesis import given
from hypothesis import strategies as st

from loky.backend import resource_tracker as rt
from loky.backend.context import get_context

RELAUNCH_WARNING = (
    "resource_tracker: process died unexpectedly, relaunching.  "
    "Some resources might leak."
)
POSIX_ONLY = pytest.mark.skipif(sys.platform == "win32", reason="POSIX tracker")


@pytest.fixture
def tracker():
    """A private tracker, always stopped (and reaped) at the end."""
    t = rt.ResourceTracker()
    yield t
    t._stop()


@pytest.fixture
def paths(tmp_path):
    """Files and folders to track; whatever remains is removed afterwards."""
    folder = tmp_path / "tracked"
    folder.mkdir()
    inner = folder / "inner.txt"
    inner.write_text("x")
    loose = tmp_path / "loose.txt"
    loose.write_text("y")
    return str(folder), str(inner), str(loose)


# --- import effects and module API ---------------------------------------------


def test_import_does_not_launch_the_tracker():
    out = _run_python(
        """
        import sys, threading
        import loky
        imported = {m: m in sys.modules for m in (
            "loky.backend.resource_tracker", "loky.backend.reduction")}
        from loky.backend import resource_tracker as rt, reduction
        print(all(imported.values()), rt._resource_tracker._fd,
              rt._resource_tracker._pid, threading.active_count(),
              reduction.get_loky_pickler_name())
        """
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "None", "None", "1", "cloudpickle"]


def test_module_api():
    assert rt.__all__ == ["ensure_running", "register", "unregister"]
    for name in ("ensure_running", "register", "unregister", "maybe_unlink", "getfd"):
        assert callable(getattr(rt, name))
    t = rt.ResourceTracker()
    assert (t._fd, t._pid, t._exitcode, t._proc_handle) == (None, None, None, None)
    assert t._use_simple_format is True
    assert t._waitpid_timed_out is False
    assert len(t._reentrant_messages) == 0
    assert rt.VERBOSE is False
    assert set(rt._CLEANUP_FUNCS) >= {"noop", "dummy", "folder", "file"}
    if sys.platform != "win32":
        import _multiprocessing

        assert rt._CLEANUP_FUNCS["semlock"] is _multiprocessing.sem_unlink


def test_module_functions_go_through_the_singleton(monkeypatch):
    calls = []
    monkeypatch.setattr(
        rt._resource_tracker, "maybe_unlink", lambda n, t: calls.append((n, t))
    )
    rt.maybe_unlink("/some/name", "file")
    assert calls == [("/some/name", "file")]


def test_cleanup_functions(tmp_path):
    with pytest.raises(
        RuntimeError, match="^noop should never be registered or cleaned up$"
    ):
        rt._CLEANUP_FUNCS["noop"]("x")
    assert rt._CLEANUP_FUNCS["dummy"]("x") is None
    missing = str(tmp_path / "missing")
    for rtype in ("file", "folder"):
        with pytest.raises(OSError) as info:
            rt._CLEANUP_FUNCS[rtype](missing)
        assert info.value.errno == 2


# --- wire format ---------------------------------------------------------------


def test_simple_format_and_decoding():
    msg = rt._encode_message("REGISTER", "C:\\tmp\\a:b", "file")
    assert msg == b"REGISTER:C:\\tmp\\a:b:file\n"
    assert rt._decode_message(msg) == ("REGISTER", "file", "C:\\tmp\\a:b")
    assert rt._decode_message("PROBE:0:noop\n") == ("PROBE", "noop", "0")


def test_json_format_for_newlines():
    name = "/tmp/odd\nname:é"
    msg = rt._encode_message("MAYBE_UNLINK", name, "folder")
    assert msg.endswith(b"\n") and b"\n" not in msg[:-1]
    payload = json.loads(msg)
    assert payload == {
        "cmd": "MAYBE_UNLINK",
        "rtype": "folder",
        "base64_name": base64.urlsafe_b64encode(name.encode()).decode(),
    }
    assert b" " not in msg  # compact
    assert rt._decode_message(msg) == ("MAYBE_UNLINK", "folder", name)
    # Disabling the simple format always uses JSON.
    assert rt._encode_message("REGISTER", "a", "file", simple=False).startswith(b"{")


def test_too_long_messages_are_rejected():
    with pytest.raises(ValueError, match="msg too long"):
        rt._encode_message("REGISTER", "x" * 600, "file")
    with pytest.raises(ValueError):
        rt._encode_message("REGISTER", "x\n" * 200, "file")


# --- the tracker process -------------------------------------------------------


@POSIX_ONLY
def test_launch_is_a_direct_child_and_idempotent(tracker):
    tracker.ensure_running()
    pid, fd = tracker._pid, tracker._fd
    child = psutil.Process(pid)
    assert child.ppid() == os.getpid()
    # Right after the fork the child may not have exec'ed yet: wait for it.
    deadline = time.monotonic() + 30
    while "resource_tracker" not in " ".join(child.cmdline()):
        assert time.monotonic() < deadline, child.cmdline()
        time.sleep(0.01)
    tracker.ensure_running()
    assert tracker.getfd() == fd
    assert tracker._pid == pid


@POSIX_ONLY
def test_refcounts_and_clean_exit(tracker, paths, capfd):
    folder, inner, loose = paths
    tracker.register(loose, "file")
    tracker.register(loose, "file")
    tracker.maybe_unlink(loose, "file")
    tracker.maybe_unlink(loose, "file")  # refcount 0: unlinked now
    tracker.register(folder, "folder")
    tracker.unregister(folder, "folder")  # dropped whatever its count
    tracker.register(inner, "dummy")  # dummy leftovers are not reported
    tracker._stop()
    assert tracker._exitcode == 0
    assert tracker._fd is None and tracker._pid is None
    assert not os.path.exists(loose)
    assert os.path.exists(folder) and os.path.exists(inner)
    assert "leaked" not in capfd.readouterr().err


@POSIX_ONLY
def test_leaks_are_cleaned_and_reported(tracker, paths, capfd):
    folder, inner, loose = paths
    tracker.register(folder, "folder")
    tracker.register(inner, "file")  # inside the folder: removed first
    tracker.register(loose, "file")
    tracker.register(loose, "file")
    tracker.maybe_unlink(loose, "file")  # refcount back to 1
    tracker._stop()
    err = capfd.readouterr().err
    assert tracker._exitcode == 1
    assert not os.path.exists(folder) and not os.path.exists(loose)
    files = {inner: 1, loose: 1}
    assert (
        f"resource_tracker: There appear to be 2 leaked file objects to clean up "
        f"at shutdown: {files}"
    ) in err
    assert (
        "resource_tracker: There appear to be 1 leaked folder objects to clean up "
        f"at shutdown: { ({folder: 1}) }"
    ) in err
    assert "FileNotFoundError" not in err


@POSIX_ONLY
def test_failed_cleanup_sets_exit_code_2(tracker, tmp_path, capfd):
    missing = str(tmp_path / "never-created")
    tracker.register(missing, "file")
    tracker._stop()
    err = capfd.readouterr().err
    assert tracker._exitcode == 2
    assert f"resource_tracker: {missing}: FileNotFoundError(2, " in err


@POSIX_ONLY
def test_failed_maybe_unlink_warns(tracker, tmp_path, capfd):
    missing = str(tmp_path / "gone")
    tracker.register(missing, "file")
    tracker.maybe_unlink(missing, "file")
    tracker._stop()
    err = capfd.readouterr().err
    assert tracker._exitcode == 0
    assert f"resource_tracker: {missing}: FileNotFoundError(2, " in err


@POSIX_ONLY
def test_unknown_rtype_and_command(tracker, capfd):
    tracker.register("/x", "bogus")
    tracker._send("FROB", "/y", "file")
    tracker._stop()
    err = capfd.readouterr().err
    assert tracker._exitcode == 3
    expected = (
        "ValueError: Cannot register /x for automatic cleanup: unknown resource "
        "type (bogus). Resource type should be one of the following: "
        f"{list(rt._CLEANUP_FUNCS.keys())}"
    )
    assert expected in err
    assert "RuntimeError: unrecognized command 'FROB'" in err


@POSIX_ONLY
def test_verbose_logging(tracker, paths, capfd, monkeypatch):
    _, _, loose = paths
    monkeypatch.setattr(rt, "VERBOSE", True)
    tracker.register(loose, "file")
    tracker.maybe_unlink(loose, "file")
    tracker._stop()
    err = capfd.readouterr().err
    assert f"[ResourceTracker] incremented refcount of file {loose} (current 1)" in err
    assert f"decremented refcount of file {loose}" in err
    assert not os.path.exists(loose)


@POSIX_ONLY
def test_tracker_ignores_sigint_and_sigterm(tracker, paths):
    _, _, loose = paths
    tracker.ensure_running()
    pid = tracker._pid
    os.kill(pid, signal.SIGTERM)
    os.kill(pid, signal.SIGINT)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no relaunch warning
        tracker.register(loose, "file")
        tracker.maybe_unlink(loose, "file")
    assert tracker._pid == pid
    tracker._stop()
    assert tracker._exitcode == 0
    assert not os.path.exists(loose)


@POSIX_ONLY
def test_relaunch_after_death(tracker, paths, capfd):
    _, _, loose = paths
    tracker.ensure_running()
    old_pid = tracker._pid
    os.kill(old_pid, signal.SIGKILL)
    os.waitid(os.P_PID, old_pid, os.WEXITED | os.WNOWAIT)  # dead, not reaped
    with pytest.warns(UserWarning) as record:
        tracker.register(loose, "file")
    assert [str(w.message) for w in record] == [RELAUNCH_WARNING]
    assert tracker._pid not in (None, old_pid)
    assert not psutil.pid_exists(old_pid) or (
        psutil.Process(old_pid).status() != psutil.STATUS_ZOMBIE
    )
    # The failed message is not resent: the new tracker knows nothing of it.
    tracker._stop()
    assert tracker._exitcode == 0
    assert os.path.exists(loose)
    assert "leaked" not in capfd.readouterr().err


@POSIX_ONLY
def test_reentrant_messages_are_queued(tracker, paths, capfd):
    _, _, loose = paths
    tracker.ensure_running()
    with tracker._lock:
        tracker._depth += 1  # as if a finalizer ran inside a tracker call
        try:
            tracker.register(loose, "file")
            assert list(tracker._reentrant_messages) == [
                f"REGISTER:{loose}:file\n".encode()
            ]
            with pytest.raises(rt.ReentrantCallError):
                tracker.ensure_running()
        finally:
            tracker._depth -= 1
    tracker.ensure_running()  # flushes the queued message
    assert not tracker._reentrant_messages
    tracker._stop()
    assert tracker._exitcode == 1
    assert not os.path.exists(loose)
    assert "1 leaked file objects" in capfd.readouterr().err


# --- stop paths with injected functions ----------------------------------------


def test_stop_locked_posix_injectables():
    t = rt.ResourceTracker()
    t._fd, t._pid = 1234, 4321
    closed, clock = [], [0.0]

    def fake_waitpid(pid, flags):
        assert (pid, flags) == (4321, 99)
        return 0, 0  # still running

    def fake_sleep(delay):
        clock[0] += delay

    t._stop_locked(
        close=closed.append,
        waitpid=fake_waitpid,
        waitstatus_to_exitcode=lambda s: pytest.fail("not exited"),
        monotonic=lambda: clock[0],
        sleep=fake_sleep,
        WNOHANG=99,
        wait_timeout=0.5,
    )
    assert closed == [1234]
    assert t._waitpid_timed_out is True
    assert t._fd is None and t._exitcode is None
    assert clock[0] >= 0.5

    t2 = rt.ResourceTracker()
    t2._fd, t2._pid = 5, 6
    t2._stop_locked(
        close=lambda fd: None,
        waitpid=lambda pid, flags: (pid, 7 << 8),
        waitstatus_to_exitcode=os.waitstatus_to_exitcode,
    )
    assert t2._exitcode == 7
    assert t2._waitpid_timed_out is False
    assert (t2._fd, t2._pid) == (None, None)


class FakeWinapi:
    INFINITE = 0xFFFFFFFF
    WAIT_TIMEOUT = 258

    def __init__(self):
        self.calls = []

    def CreateProcess(self, *args):
        self.calls.append(("CreateProcess", args))
        return 1001, 1002, 4242, 7

    def CloseHandle(self, handle):
        self.calls.append(("CloseHandle", handle))


def test_windows_spawnv_passfds_with_fake_winapi(monkeypatch):
    fake = FakeWinapi()
    monkeypatch.setattr(rt, "_winapi", fake, raising=False)
    monkeypatch.setattr(sys, "platform", "win32")
    pid, handle = rt.spawnv_passfds("C:\\py.exe", ["C:\\py.exe", "-c", "pass"], [3])
    assert (pid, handle) == (4242, 1001)
    name, args = fake.calls[0]
    assert name == "CreateProcess"
    assert args[0] == "C:\\py.exe"
    assert "-c" in args[1] and "pass" in args[1]
    assert args[2:] == (None, None, True, 0, None, None, None)
    assert fake.calls[1] == ("CloseHandle", 1002)


def test_windows_teardown_with_fake_winapi(monkeypatch):
    fake = FakeWinapi()
    monkeypatch.setattr(rt, "_winapi", fake, raising=False)
    r, w = os.pipe()
    os.close(r)
    t = rt.ResourceTracker()
    t._fd, t._pid, t._exitcode, t._proc_handle = w, 4242, 3, 1001
    monkeypatch.setattr(sys, "platform", "win32")
    monkeypatch.setattr(os, "name", "nt")
    with pytest.warns(UserWarning) as record:
        t._teardown_dead_process()
    monkeypatch.undo()
    assert [str(x.message) for x in record] == [RELAUNCH_WARNING]
    assert fake.calls == [("CloseHandle", 1001)]
    assert (t._fd, t._pid, t._exitcode, t._proc_handle) == (None,) * 4
    with pytest.raises(OSError):
        os.close(w)  # it was closed


@pytest.mark.parametrize("timed_out", [False, True])
def test_windows_stop_locked_injectables(monkeypatch, timed_out):
    monkeypatch.setattr(sys, "platform", "win32")
    t = rt.ResourceTracker()
    t._fd, t._pid, t._proc_handle = 11, 22, 33
    calls = []

    def wait_for_single_object(handle, ms):
        calls.append(("wait", handle, ms))
        return 258 if timed_out else 0

    t._stop_locked(
        close=lambda fd: calls.append(("close", fd)),
        wait_timeout=1.5,
        wait_for_single_object=wait_for_single_object,
        get_exit_code_process=lambda h: 5,
        close_handle=lambda h: calls.append(("close_handle", h)),
        winapi_infinite=-1,
        wait_timeout_code=258,
    )
    monkeypatch.undo()
    assert calls == [("close", 11), ("wait", 33, 1500), ("close_handle", 33)]
    assert (t._fd, t._pid, t._proc_handle) == (None, None, None)
    assert t._waitpid_timed_out is timed_out
    assert t._exitcode == (None if timed_out else 5)


# --- fork and inheritance --------------------------------------------------------


def test_after_fork_in_child_keeps_or_closes_the_fd(monkeypatch):
    from multiprocessing import resource_tracker as mp_tracker

    class Intent:
        preserve_fd = False

    r, w = os.pipe()
    try:
        t = rt.ResourceTracker()
        t._fd, t._pid, t._exitcode = w, 1, 0
        t._reentrant_messages.append(b"x")
        monkeypatch.delattr(mp_tracker, "_fork_intent", raising=False)
        t._after_fork_in_child()
        assert (t._fd, t._pid, t._exitcode) == (w, None, None)
        assert not t._reentrant_messages
        monkeypatch.setattr(mp_tracker, "_fork_intent", Intent(), raising=False)
        Intent.preserve_fd = True
        t._after_fork_in_child()
        assert t._fd == w
        Intent.preserve_fd = False
        t._after_fork_in_child()
        assert t._fd is None
        with pytest.raises(OSError):
            os.fstat(w)
    finally:
        os.close(r)


@POSIX_ONLY
def test_raw_fork_child_shares_the_pipe():
    out = _run_python(
        """
        import os
        from loky.backend import resource_tracker as rt
        rt.ensure_running()
        fd = rt._resource_tracker._fd
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            t = rt._resource_tracker
            os.write(w, repr((t._pid, t._fd == fd)).encode())
            os._exit(0)
        os.waitpid(pid, 0)
        print(os.read(r, 100).decode())
        """
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "(None, True)"


def _child_tracker_state(name):
    from loky.backend import resource_tracker

    fd_before = resource_tracker._resource_tracker._fd
    resource_tracker.maybe_unlink(name, "file")
    return fd_before, resource_tracker.getfd()


def _report_to(queue, func, *args):
    queue.put(func(*args))


@POSIX_ONLY
def test_worker_inherits_tracker_and_can_maybe_unlink(tmp_path):
    from loky.backend.queues import SimpleQueue

    target = tmp_path / "shared.bin"
    target.write_bytes(b"data")
    name = str(target)
    parent_fd = rt.getfd()
    parent_pid = rt._resource_tracker._pid
    rt.register(name, "file")
    ctx = get_context("loky")
    out = SimpleQueue(ctx=ctx)
    p = ctx.Process(target=_report_to, args=(out, _child_tracker_state, name))
    p.start()
    try:
        fd_before, fd_after = out.get()
    finally:
        p.join(timeout=60)
        out.close()
    assert p.exitcode == 0
    assert fd_before == fd_after == parent_fd  # no relaunch in the worker
    assert rt._resource_tracker._pid == parent_pid
    deadline = time.monotonic() + 30
    while os.path.exists(name) and time.monotonic() < deadline:
        time.sleep(0.01)  # the tracker processes its pipe asynchronously
    assert not os.path.exists(name)


@POSIX_ONLY
def test_owner_killed_resources_cleaned_with_warning(tmp_path):
    target = tmp_path / "owned.bin"
    target.write_bytes(b"x")
    # stderr is a pipe the tracker inherits: run() returns once the tracker
    # has cleaned up and exited too.
    out = _run_python(
        f"""
        import os, signal
        from loky.backend import resource_tracker, synchronize
        lock = synchronize.Lock()
        print(lock._semlock.name, flush=True)
        resource_tracker.register({str(target)!r}, "file")
        resource_tracker.ensure_running()
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    assert out.returncode == -signal.SIGKILL
    sem_name = out.stdout.strip()
    assert not target.exists()
    assert "There appear to be 1 leaked file objects to clean up at shutdown" in (
        out.stderr
    )
    assert (
        "There appear to be 1 leaked semlock objects to clean up at shutdown: "
        f"{ ({sem_name: 1}) }"
    ) in out.stderr
    if os.path.isdir("/dev/shm"):
        assert not os.path.exists("/dev/shm/sem." + sem_name.lstrip("/"))


@given(
    cmd=st.sampled_from(["REGISTER", "UNREGISTER", "MAYBE_UNLINK", "PROBE"]),
    rtype=st.sampled_from(["file", "folder", "semlock", "dummy"]),
    name=st.text(
        alphabet=st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=60
    ),
    simple=st.booleans(),
)
def test_wire_format_round_trip(cmd, rtype, name, simple):
    msg = rt._encode_message(cmd, name, rtype, simple)
    assert msg.endswith(b"\n") and msg.count(b"\n") == 1
    assert len(msg) <= 512
    assert rt._decode_message(msg) == (cmd, rtype, name)
