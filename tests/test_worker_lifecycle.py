"""Worker lifecycle: idle timeout, memory-leak recycling, nesting depth,
environment, faulthandler, process tree, and killing nested pools."""

from __future__ import annotations

import faulthandler
import os
import threading
import time
import warnings

import psutil
import pytest

from loky import ProcessPoolExecutor
from loky import process_executor as pe
from loky.backend import get_context
from loky.process_executor import LokyRecursionError, _check_max_depth

_LEAKED = []


def get_pid(_=None):
    return os.getpid()


def square(x):
    return x * x


def worker_info():
    return {
        "pid": os.getpid(),
        "ppid": os.getppid(),
        "depth": pe._CURRENT_DEPTH,
        "faulthandler": faulthandler.is_enabled(),
        "env": os.environ.get("LOKY_TEST_WORKER_ENV"),
        "max_leak": pe._MAX_MEMORY_LEAK_SIZE,
    }


def set_memory_check_delay(delay):
    pe._MEMORY_LEAK_CHECK_DELAY = delay
    return os.getpid()


def leak(n_bytes):
    _LEAKED.append(bytearray(n_bytes))
    return os.getpid()


def nested_depths(levels):
    """Run a chain of nested executors; return each level's depth."""
    depths = [pe._CURRENT_DEPTH]
    if levels > 0:
        with ProcessPoolExecutor(max_workers=1) as executor:
            depths += executor.submit(nested_depths, levels - 1).result()
    return depths


def nested_sleep(delay):
    with ProcessPoolExecutor(max_workers=1) as executor:
        executor.submit(time.sleep, delay).result()


# ---------------------------------------------------------------- idle timeout
def test_idle_worker_exits_and_is_respawned_without_warning():
    executor = ProcessPoolExecutor(max_workers=1, timeout=0.1)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            first_pid = executor.submit(get_pid).result(timeout=60)
            process = executor._processes[first_pid]
            process.join(timeout=30)  # it leaves on its own once idle
            assert process.exitcode == 0
            assert first_pid not in executor._processes
            second_pid = executor.submit(get_pid).result(timeout=60)
        assert second_pid != first_pid
        assert executor._flags.broken is None
    finally:
        executor.shutdown(wait=True, kill_workers=True)


@pytest.mark.filterwarnings("ignore:A worker stopped while some jobs")
def test_millisecond_timeouts_lose_no_result():
    executor = ProcessPoolExecutor(max_workers=2, timeout=0.001)
    try:
        futures = [executor.submit(square, i) for i in range(30)]
        assert [f.result(timeout=60) for f in futures] == [i * i for i in range(30)]
        assert executor._flags.broken is None
    finally:
        executor.shutdown(wait=True)


def test_no_timeout_means_workers_stay():
    executor = ProcessPoolExecutor(max_workers=1)
    try:
        pid = executor.submit(get_pid).result(timeout=60)
        process = executor._processes[pid]
        process.join(timeout=0.5)
        assert process.is_alive()
        assert executor.submit(get_pid).result(timeout=60) == pid
    finally:
        executor.shutdown(wait=True)
    assert process.exitcode == 0  # a deliberate exit, after the handshake


# ----------------------------------------------------- memory-leak recycling
@pytest.mark.skipif(not pe._USE_PSUTIL, reason="recycling needs psutil")
def test_leaking_worker_is_recycled_with_a_single_warning():
    executor = ProcessPoolExecutor(
        max_workers=1, env={"LOKY_MAX_MEMORY_LEAK_SIZE": "5e6"}, timeout=None
    )
    try:
        info = executor.submit(worker_info).result(timeout=60)
        assert info["max_leak"] == 5_000_000  # read at import in the worker
        executor.submit(set_memory_check_delay, 0).result(timeout=60)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            pids = set()
            for _ in range(2):
                # A leak with work queued behind it: the worker is replaced
                # and the queued work still runs.
                futures = [executor.submit(leak, 20_000_000)]
                futures += [executor.submit(get_pid) for _ in range(3)]
                pids.update(f.result(timeout=60) for f in futures)
                executor.submit(set_memory_check_delay, 0).result(timeout=60)
        assert info["pid"] in pids and len(pids) >= 2
        messages = [str(w.message) for w in caught]
        assert len(messages) == 1
        assert messages[0].startswith(
            "A worker was restarted while some jobs were given"
        )
        # The limit shown is the parent's (the worker's came from its env).
        assert (
            f"more than {pe._MAX_MEMORY_LEAK_SIZE / 1e6:.0f} MB more memory"
            in messages[0]
        )
        assert "memory leak" in messages[0]
        assert executor._flags.broken is None
    finally:
        executor.shutdown(wait=True, kill_workers=True)


# ------------------------------------------------------------------- nesting
def test_check_max_depth(monkeypatch):
    loky_context = get_context("loky")
    monkeypatch.setattr(pe, "MAX_DEPTH", 3)
    monkeypatch.setattr(pe, "_CURRENT_DEPTH", 2)
    _check_max_depth(loky_context)
    monkeypatch.setattr(pe, "_CURRENT_DEPTH", 3)
    with pytest.raises(LokyRecursionError) as info:
        _check_max_depth(loky_context)
    assert str(info.value) == (
        "Could not spawn extra nested processes at depth superior to MAX_DEPTH=3. If "
        "this is intendend, you can change this limit with the LOKY_MAX_DEPTH "
        "environment variable."
    )
    monkeypatch.setattr(pe, "MAX_DEPTH", 0)  # unlimited
    _check_max_depth(loky_context)
    monkeypatch.setattr(pe, "_CURRENT_DEPTH", 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fork_context = get_context("fork")
    with pytest.raises(LokyRecursionError) as info:
        _check_max_depth(fork_context)
    assert str(info.value) == (
        "Could not spawn extra nested processes at depth superior to MAX_DEPTH=1. It "
        "is not possible to increase this limit when using the 'fork' start method."
    )


def test_nested_executors_track_their_depth():
    with ProcessPoolExecutor(max_workers=1) as executor:
        assert executor.submit(nested_depths, 1).result(timeout=120) == [1, 2]


def test_depth_limit_propagates_from_the_deepest_worker():
    env = {"LOKY_MAX_DEPTH": "1"}
    with ProcessPoolExecutor(max_workers=1, env=env) as executor:
        with pytest.raises(LokyRecursionError, match="MAX_DEPTH=1"):
            executor.submit(nested_depths, 1).result(timeout=120)
        assert executor._flags.broken is None


# ----------------------------------------------------- environment and tree
def test_workers_environment_faulthandler_and_tree():
    executor = ProcessPoolExecutor(max_workers=2, env={"LOKY_TEST_WORKER_ENV": "set"})
    try:
        infos = [executor.submit(worker_info).result(timeout=60) for _ in range(4)]
        for info in infos:
            assert info["env"] == "set"
            assert info["depth"] == 1
            assert info["faulthandler"] is True
            assert info["ppid"] == os.getpid()
        children = {p.pid for p in psutil.Process().children()}
        assert set(executor._processes) <= children
        assert {info["pid"] for info in infos} <= set(executor._processes)
        assert "LOKY_TEST_WORKER_ENV" not in os.environ
    finally:
        executor.shutdown(wait=True)


def _worker_descendants(executor):
    """The workers of ``executor`` and everything they started.

    Only this executor's tree: waiting on (and so reaping) a process another
    executor owns - say the reusable executor's idle workers, which leave on
    their own after 10 s - would take its exit status away from its
    ``multiprocessing`` process object, which then never leaves
    ``multiprocessing``'s children and keeps its semaphore alive.
    """
    found = []
    for pid in list(executor._processes):
        try:
            worker = psutil.Process(pid)
            found.append(worker)
            found.extend(worker.children(recursive=True))
        except psutil.Error:
            continue
    return found


def test_kill_workers_kills_nested_pools_quickly():
    executor = ProcessPoolExecutor(max_workers=2)
    try:
        futures = [executor.submit(nested_sleep, 120) for _ in range(2)]
        # Wait until the grandchildren exist.
        deadline = time.monotonic() + 60
        descendants = _worker_descendants(executor)
        while len(descendants) < 4 and time.monotonic() < deadline:
            threading.Event().wait(0.05)
            descendants = _worker_descendants(executor)
        assert len(descendants) >= 4
    finally:
        start = time.monotonic()
        executor.shutdown(wait=True, kill_workers=True)
        elapsed = time.monotonic() - start
    assert elapsed < 30
    for future in futures:
        with pytest.raises(pe.ShutdownExecutorError):
            future.result(timeout=0)
    gone, alive = psutil.wait_procs(descendants, timeout=10)
    assert alive == []
    _forget_semaphores_of([p.pid for p in descendants])


def _forget_semaphores_of(pids):
    """SIGKILLed grandchildren cannot unlink their semaphores: the resource
    tracker would at its exit; do it now so the session's leak check passes."""
    import _multiprocessing

    from loky.backend import resource_tracker

    for name in os.listdir("/dev/shm"):
        if not any(name.startswith(f"sem.loky-{pid}-") for pid in pids):
            continue
        sem_name = "/" + name[len("sem.") :]
        try:
            _multiprocessing.sem_unlink(sem_name)
        except FileNotFoundError:
            continue
        resource_tracker.unregister(sem_name, "semlock")


_ORPHAN_SCRIPT = """
import os, signal, sys
from loky import ProcessPoolExecutor

if __name__ == "__main__":
    executor = ProcessPoolExecutor(max_workers=2, timeout=None)
    pids = {executor.submit(os.getpid).result() for _ in range(8)}
    print(" ".join(map(str, sorted(executor._processes))), flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
"""


def test_workers_without_idle_timeout_leave_when_the_parent_is_killed(tmp_path):
    import subprocess
    import sys

    script = tmp_path / "orphans.py"
    script.write_text(_ORPHAN_SCRIPT)
    result = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == -9, result.stderr
    pids = [int(pid) for pid in result.stdout.split()]
    assert len(pids) == 2
    workers = []
    for pid in pids:
        try:
            workers.append(psutil.Process(pid))
        except psutil.NoSuchProcess:
            continue
    _, alive = psutil.wait_procs(workers, timeout=30)
    for proc in alive:  # do not leave them behind even when failing
        proc.kill()
    assert alive == []
