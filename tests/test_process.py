"""LokyProcess / LokyInitMainProcess and the POSIX fork+exec launcher, with
real children, under every start method where it makes sense."""

from __future__ import annotations

import multiprocessing
import os
import pickle
import signal
import sys
import threading
import warnings
from multiprocessing.connection import wait

import pytest
from test_launch_targets import (
    Unpicklable,
    block_on,
    echo_back,
    exit_with,
    fork_grandchild_then_exit,
    pipe_fds,
    raise_error,
    report_env,
    report_fds,
    report_identity,
    report_len,
    report_parent_death,
    report_trackers,
    start_grandchild,
)

from loky.backend import get_context
from loky.backend.process import AuthenticationKey, LokyInitMainProcess, LokyProcess

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX launcher")

ALL_METHODS = ["loky", "loky_init_main", "spawn", "fork", "forkserver"]
LOKY_METHODS = ["loky", "loky_init_main"]


@pytest.fixture(scope="module", autouse=True)
def stop_forkserver():
    """The stdlib forkserver outlives its users: stop it so that no child
    process is left behind."""
    yield
    from multiprocessing import forkserver

    forkserver._forkserver._stop()


def context_for(method):
    with warnings.catch_warnings():
        # get_context("fork") warns on purpose (tested in test_context.py).
        warnings.simplefilter("ignore")
        return get_context(method)


def make_process(ctx, **kwargs):
    return ctx.Process(**kwargs)


# --- tests -------------------------------------------------------------------


@pytest.mark.parametrize("method", ALL_METHODS)
def test_child_runs_target_and_reports_start_method(method):
    ctx = context_for(method)
    r, w = multiprocessing.Pipe(duplex=False)
    p = make_process(ctx, target=report_identity, args=(w,), name="the-child")
    p.start()
    w.close()
    try:
        info = r.recv()
    finally:
        p.join()
    assert p.exitcode == 0
    assert info["start_method"] == method
    assert info["pid"] == p.pid != os.getpid()
    assert info["name"] == "the-child"
    assert info["parent_pid"] == os.getpid()
    assert info["parent_alive"] is True
    assert info["authkey"] == bytes(multiprocessing.current_process().authkey)
    assert info["daemon"] is False


@pytest.mark.parametrize("method", ALL_METHODS)
def test_exit_codes(method):
    ctx = context_for(method)
    p42 = make_process(ctx, target=exit_with, args=(42,))
    p_err = make_process(ctx, target=raise_error)
    for p in (p42, p_err):
        p.start()
    for p in (p42, p_err):
        p.join()
    assert p42.exitcode == 42
    assert p_err.exitcode == 1


def test_threads_joining_the_same_child_all_see_its_exit_code():
    # The executor's manager thread and a user's join() may reap one worker at
    # once: the thread that loses the waitpid race must not read None.
    for _ in range(5):
        p = LokyProcess(target=exit_with, args=(7,))
        p.start()
        codes = []
        barrier = threading.Barrier(4)

        def join_and_read(process=p, barrier=barrier, codes=codes):
            barrier.wait()
            process.join()
            codes.append(process.exitcode)

        threads = [threading.Thread(target=join_and_read) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert codes == [7, 7, 7, 7]


def test_a_child_reaped_behind_our_back_is_not_alive_for_ever():
    # Someone else's waitpid (psutil.wait_procs on every child, say) takes the
    # exit status: the process must still end, leave multiprocessing's
    # children and release what it holds - not look alive for ever.
    p = LokyProcess(target=exit_with, args=(7,))
    p.start()
    assert wait([p.sentinel], 60)
    os.waitpid(p.pid, 0)
    p.join(timeout=60)
    assert p.exitcode == 0  # the status is lost; 0, as subprocess reports it
    assert not p.is_alive()
    assert p not in multiprocessing.active_children()


@pytest.mark.parametrize("method", ALL_METHODS)
def test_exitcode_is_minus_signum_after_a_signal(method):
    ctx = context_for(method)
    pipes = [multiprocessing.Pipe() for _ in range(2)]
    procs = [make_process(ctx, target=block_on, args=(w,)) for _, w in pipes]
    for p in procs:
        p.start()
    try:
        for (r, _), p in zip(pipes, procs, strict=True):
            assert r.recv() == "ready"
            assert p.is_alive()
            assert p.exitcode is None
        procs[0].terminate()
        procs[1].kill()
        for p in procs:
            p.join()
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join()
    assert procs[0].exitcode == -signal.SIGTERM
    assert procs[1].exitcode == -signal.SIGKILL
    for p in procs:
        assert not p.is_alive()
        # Signalling a dead process is a no-op.
        p.terminate()
        p.kill()


def test_base_process_semantics():
    p = LokyProcess(target=block_on, args=(None,))
    with pytest.raises(ValueError, match="not started"):
        _ = p.sentinel
    assert p.exitcode is None
    r, w = multiprocessing.Pipe()
    p = LokyProcess(target=block_on, args=(w,))
    p.start()
    try:
        assert r.recv() == "ready"
        assert p in multiprocessing.active_children()
        # join(0) / join(-1) return at once on a running process.
        p.join(0)
        p.join(-1)
        assert p.is_alive()
        assert wait([p.sentinel], timeout=0) == []
        with pytest.raises(ValueError, match="still running"):
            p.close()
        r.send("stop")
        p.join()
        assert wait([p.sentinel], timeout=0) == [p.sentinel]
    finally:
        if p.is_alive():
            p.kill()
            p.join()
    assert p.exitcode == 0
    assert p not in multiprocessing.active_children()
    with pytest.raises(AssertionError, match="cannot start a process twice"):
        p.start()
    p.close()
    with pytest.raises(ValueError, match="closed"):
        p.is_alive()


def test_loky_process_attributes():
    p = LokyProcess(target=exit_with, args=(0,))
    assert p._start_method == "loky"
    assert p.env == {}
    assert p.init_main_module is False
    q = LokyProcess(env={"A": "1"}, init_main_module=True)
    assert q.env == {"A": "1"} and q.init_main_module is True

    m = LokyInitMainProcess(target=exit_with, args=(0,))
    assert m._start_method == "loky_init_main"
    assert m.init_main_module is True
    # No env argument: the executor retries without it on TypeError.
    with pytest.raises(TypeError):
        LokyInitMainProcess(target=exit_with, env={"A": "1"})


def test_authkey_is_protected_outside_spawning():
    p = LokyProcess()
    assert isinstance(p.authkey, AuthenticationKey)
    assert p.authkey == multiprocessing.current_process().authkey
    with pytest.raises(TypeError, match="disallowed for security reasons"):
        pickle.dumps(p.authkey)
    p.authkey = b"another key"
    assert isinstance(p.authkey, AuthenticationKey)
    assert p.authkey == b"another key"


def test_custom_authkey_reaches_child():
    r, w = multiprocessing.Pipe(duplex=False)
    p = LokyProcess(target=report_identity, args=(w,))
    p.authkey = b"secret-for-child"
    p.start()
    w.close()
    info = r.recv()
    p.join()
    assert info["authkey"] == b"secret-for-child"


@pytest.mark.parametrize("method", ALL_METHODS)
def test_connections_passed_as_arguments(method):
    ctx = context_for(method)
    to_child_r, to_child_w = multiprocessing.Pipe(duplex=False)
    from_child_r, from_child_w = multiprocessing.Pipe(duplex=False)
    p = make_process(ctx, target=echo_back, args=(to_child_r, from_child_w))
    p.start()
    to_child_r.close()
    from_child_w.close()
    to_child_w.send({"hello": [1, 2, 3]})
    assert from_child_r.recv() == ("echo", {"hello": [1, 2, 3]})
    p.join()
    assert p.exitcode == 0


def test_recursive_process_tree_passes_connections_down():
    r, w = multiprocessing.Pipe(duplex=False)
    p = LokyProcess(target=start_grandchild, args=(w, 3))
    p.start()
    w.close()
    kind, leaf_pid = r.recv()
    p.join()
    assert kind == "leaf"
    assert leaf_pid not in (os.getpid(), p.pid)
    assert p.exitcode == 0


def test_payload_larger_than_a_pipe_buffer():
    payload = b"x" * (4 * 1024 * 1024)
    r, w = multiprocessing.Pipe(duplex=False)
    p = LokyProcess(target=report_len, args=(w, payload))
    p.start()
    w.close()
    assert r.recv() == len(payload)
    p.join()
    assert p.exitcode == 0


def test_env_is_applied_before_the_interpreter_starts(monkeypatch):
    monkeypatch.setenv("LOKY_TEST_INHERITED", "from-parent")
    monkeypatch.setenv("LOKY_TEST_OVERRIDDEN", "parent-value")
    r, w = multiprocessing.Pipe(duplex=False)
    names = ["LOKY_TEST_INHERITED", "LOKY_TEST_OVERRIDDEN", "LOKY_TEST_NEW"]
    env = {
        "LOKY_TEST_OVERRIDDEN": "child-value",
        "LOKY_TEST_NEW": "new",
        # Read by the interpreter at start-up only.
        "PYTHONHASHSEED": "0",
    }
    p = LokyProcess(target=report_env, args=(w, names), env=env)
    p.start()
    w.close()
    info = r.recv()
    p.join()
    assert info["env"] == {
        "LOKY_TEST_INHERITED": "from-parent",
        "LOKY_TEST_OVERRIDDEN": "child-value",
        "LOKY_TEST_NEW": "new",
    }
    assert info["hash_randomization"] == 0
    assert os.environ["LOKY_TEST_OVERRIDDEN"] == "parent-value"
    assert "LOKY_TEST_NEW" not in os.environ


@pytest.mark.parametrize(
    "env, error, match",
    [
        ({"A": 1}, TypeError, "must be str"),
        ({"A=B": "1"}, ValueError, "illegal environment variable name"),
        ({"A": "x\0y"}, ValueError, "null byte"),
    ],
)
def test_bad_env_is_a_clear_error_and_starts_nothing(env, error, match):
    before = set(multiprocessing.active_children())
    p = LokyProcess(target=exit_with, args=(0,), env=env)
    with pytest.raises(error, match=match):
        p.start()
    assert set(multiprocessing.active_children()) == before


def test_fd_hygiene_child_holds_exactly_the_needed_fds():
    # An fd the child must not see, even though it is inheritable.
    stray_r, stray_w = os.pipe()
    os.set_inheritable(stray_r, True)
    r, w = multiprocessing.Pipe(duplex=False)
    try:
        p = LokyProcess(target=report_fds, args=(w, stray_r))
        p.start()
        w.close()
        info = r.recv()
        p.join()
    finally:
        os.close(stray_r)
        os.close(stray_w)
    from multiprocessing.resource_tracker import _resource_tracker as mp_tracker

    from loky.backend.resource_tracker import _resource_tracker

    # sentinel, loky tracker, the Connection, stdlib tracker.
    assert len(info["pipe_fds"]) == 4, info
    assert info["conn_fd"] in info["pipe_fds"]
    assert _resource_tracker._fd in info["pipe_fds"]
    assert mp_tracker._fd in info["pipe_fds"]
    assert info["has_extra"] is False


def test_concurrent_starts_from_threads_do_not_leak_fds_to_siblings():
    n = 4
    results = [None] * n

    def start_one(i):
        r, w = multiprocessing.Pipe(duplex=False)
        p = LokyProcess(target=report_fds, args=(w,))
        p.start()
        w.close()
        results[i] = r.recv()
        p.join()

    threads = [threading.Thread(target=start_one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for info in results:
        assert len(info["pipe_fds"]) == 4, info


def test_parent_never_calls_os_fork(monkeypatch):
    def forbidden_fork():
        raise AssertionError("the loky launcher must not call os.fork()")

    monkeypatch.setattr(os, "fork", forbidden_fork)
    # A native thread alive in the parent (what makes a bare fork unsafe).
    stop = threading.Event()
    thread = threading.Thread(target=stop.wait)
    thread.start()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            p = LokyProcess(target=exit_with, args=(7,))
            p.start()
            p.join()
    finally:
        stop.set()
        thread.join()
    assert p.exitcode == 7


def test_daemon_flag_reaches_the_child():
    r, w = multiprocessing.Pipe(duplex=False)
    p = LokyProcess(target=report_identity, args=(w,), daemon=True)
    p.start()
    w.close()
    info = r.recv()
    p.join()
    assert info["daemon"] is True


def test_parent_sentinel_reports_parent_death():
    r, w = multiprocessing.Pipe(duplex=False)
    p = LokyProcess(target=report_parent_death, args=(w, 1))
    p.start()
    w.close()
    message = r.recv()
    p.join()
    assert message == ("parent alive", False)


def test_child_failing_to_unpickle_the_process_reports_on_stdout(capfd):
    p = LokyProcess(target=report_len, args=(None, Unpicklable()), name="broken-one")
    p.start()
    p.join()
    assert p.exitcode == 1
    out, _ = capfd.readouterr()
    assert "broken-one failed with traceback" in out
    assert "cannot rebuild in the child" in out


def test_manager_runs_its_server_in_a_loky_process():
    ctx = get_context("loky")
    with ctx.Manager() as manager:
        shared = manager.dict()
        shared["key"] = "value"
        assert dict(shared) == {"key": "value"}
        assert isinstance(manager._process, LokyProcess)


def test_child_stderr_has_no_warning(capfd):
    """The child runs this package's launcher module with -m: no runpy
    RuntimeWarning (module already imported) nor any other warning."""
    p = LokyProcess(target=exit_with, args=(0,), env={"PYTHONWARNINGS": "always"})
    p.start()
    p.join()
    _, err = capfd.readouterr()
    assert p.exitcode == 0
    assert "Warning" not in err, err


def test_sentinel_fires_even_if_a_forked_grandchild_lives_on():
    r, w = multiprocessing.Pipe()
    p = LokyProcess(target=fork_grandchild_then_exit, args=(w,))
    p.start()
    w.close()
    messages = [r.recv(), r.recv()]
    grandchild_pid = next(m for m in messages if m != "ready")
    try:
        # The grandchild still runs, yet the child's exit is seen.
        assert wait([p.sentinel], timeout=60) == [p.sentinel]
        p.join()
        assert p.exitcode == 0
    finally:
        os.kill(grandchild_pid, signal.SIGKILL)


def test_popen_api():
    from loky.backend import popen_loky_posix

    r, w = multiprocessing.Pipe()
    p = LokyProcess(target=block_on, args=(w,))
    p.start()
    try:
        popen = p._popen
        assert isinstance(popen, popen_loky_posix.Popen)
        assert popen.method == "loky"
        assert popen.pid == p.pid
        assert popen.sentinel == p.sentinel
        assert popen.thread_is_spawning() is True
        assert r.recv() == "ready"
        assert popen.poll() is None
        assert popen.wait(timeout=0) is None
        assert popen.returncode is None
        popen.interrupt()  # KeyboardInterrupt in the target: exit code 1
        assert popen.wait() == 1
        assert popen.poll() == 1
        popen.kill()  # already dead: no-op
        popen.terminate()
    finally:
        p.join()
    assert popen_loky_posix.Popen.DupFd(5).detach() == 5


def test_unpicklable_process_fails_to_start_cleanly():
    import threading as threading_module

    def open_fds():
        return set(os.listdir("/proc/self/fd"))

    before_fds = open_fds()
    before_children = set(multiprocessing.active_children())
    p = LokyProcess(target=report_len, args=(None, threading_module.Lock()))
    with pytest.raises(TypeError, match="lock"):
        p.start()
    assert set(multiprocessing.active_children()) == before_children
    assert open_fds() <= before_fds | {str(fd) for fd in _tracker_fds()}


def _tracker_fds():
    from multiprocessing.resource_tracker import _resource_tracker as mp_tracker

    from loky.backend.resource_tracker import _resource_tracker

    return [fd for fd in (mp_tracker._fd, _resource_tracker._fd) if fd is not None]


def test_children_share_the_parents_resource_trackers():
    from multiprocessing.resource_tracker import _resource_tracker as mp_tracker

    from loky.backend.resource_tracker import _resource_tracker

    r, w = multiprocessing.Pipe(duplex=False)
    p = LokyProcess(target=report_trackers, args=(w,))
    p.start()
    w.close()
    info = r.recv()
    p.join()
    assert info == {
        "loky_fd": _resource_tracker._fd,
        "loky_pid": None,  # not launched by the child
        "mp_fd": mp_tracker._fd,
        "children": 0,
    }


def test_parent_keeps_only_the_sentinel():
    r, w = multiprocessing.Pipe()
    warm_up = LokyProcess(target=exit_with, args=(0,))  # trackers now run
    warm_up.start()
    warm_up.join()
    warm_up.close()
    before = pipe_fds()
    p = LokyProcess(target=block_on, args=(w,))
    p.start()
    try:
        assert r.recv() == "ready"
        assert set(pipe_fds()) - set(before) == {p.sentinel}
        r.send("stop")
        p.join()
    finally:
        if p.is_alive():
            p.kill()
            p.join()
    p.close()
    assert pipe_fds() == before


def test_launch_interrupted_after_exec_leaves_no_child(monkeypatch):
    import psutil

    from loky.backend import popen_loky_posix

    def interrupted_open(*args, **kwargs):
        raise KeyboardInterrupt

    warm_up = LokyProcess(target=exit_with, args=(0,))  # trackers now run
    warm_up.start()
    warm_up.join()
    children_before = {c.pid for c in psutil.Process().children()}
    fds_before = pipe_fds()
    monkeypatch.setattr(popen_loky_posix, "open", interrupted_open, raising=False)
    p = LokyProcess(target=exit_with, args=(0,))
    with pytest.raises(KeyboardInterrupt):
        p.start()
    monkeypatch.undo()
    assert {c.pid for c in psutil.Process().children()} == children_before
    assert pipe_fds() == fds_before


@pytest.mark.parametrize("method", LOKY_METHODS)
def test_loky_pickler_sends_lambdas_and_closures(method):
    offset = 40

    def add_offset(x):
        return x + offset

    r, w = multiprocessing.Pipe(duplex=False)
    p = context_for(method).Process(
        target=lambda conn, f: conn.send(f(2)), args=(w, add_offset)
    )
    p.start()
    w.close()
    assert r.recv() == 42
    p.join()
    assert p.exitcode == 0
