"""Audit regressions: crash matrix, exit paths and done-callbacks (spec 2, 4.5, 4.6, 17, 18)."""

from __future__ import annotations

import faulthandler
import gc
import os
import pickle
import threading

import pytest

from loky.process_executor import (
    BrokenProcessPool,
    ProcessPoolExecutor,
    TerminatedWorkerError,
    _RemoteTraceback,
)


def identity(x):
    return x


CALLBACK_ADDED = threading.Event()


class FailsToPickleOnceAllowed:
    """Fails to pickle in the parent's feeder thread, only once the test has
    added its done-callback (so that callback runs in the feeder thread)."""

    def __reduce__(self):
        CALLBACK_ADDED.wait(60)
        raise ValueError("cannot pickle this")


@pytest.mark.parametrize("kill_workers", [False, True])
def test_shutdown_wait_from_a_callback_run_by_the_feeder_thread(kill_workers):
    """The feeder's error hook fails the future in the feeder thread; a
    done-callback shutting the executor down with wait=True must not join
    the manager, whose teardown joins that very feeder thread."""
    executor = ProcessPoolExecutor(max_workers=1)
    seen = []
    done = threading.Event()

    def callback(_):
        seen.append(threading.current_thread().name)
        try:
            executor.shutdown(wait=True, kill_workers=kill_workers)
            seen.append("returned")
        finally:
            done.set()

    CALLBACK_ADDED.clear()
    try:
        future = executor.submit(identity, FailsToPickleOnceAllowed())
        future.add_done_callback(callback)
        CALLBACK_ADDED.set()
        assert done.wait(60)
        assert seen == ["QueueFeederThread", "returned"]
        with pytest.raises(Exception, match="Could not pickle the task"):
            future.result(timeout=0)
    finally:
        executor.shutdown(wait=True, kill_workers=True)


# ------------------------------------------- crash rows through map (chunks)
def _raise_system_exit():
    raise SystemExit()


def _segfault():
    faulthandler.disable()  # the crash dump is not what is tested here
    faulthandler._sigsegv()


class FailsToPickle:
    def __init__(self, action):
        self.action = action

    def __reduce__(self):
        self.action()
        return FailsToPickle, (self.action,)


class FailsToUnpickle:
    def __init__(self, action):
        self.action = action

    def __reduce__(self):
        return _call, (self.action,)


def _call(action):
    return action()


def call_it(action):
    return action() if callable(action) else action


def make(cls_and_action):
    cls, action = cls_and_action
    return cls(action) if cls is not None else action


TASK_UNSERIALIZE = (
    "A task has failed to un-serialize. Please ensure that the arguments of the "
    "function are all picklable."
)
RESULT_UNSERIALIZE = (
    "A result has failed to un-serialize. Please ensure that the objects returned "
    "by the function are always picklable."
)

# (function, failing item, ok item, expected type, message or exit-code text, breaks)
MAP_ROWS = {
    "1-parent-pickle-systemexit": (
        identity,
        lambda: FailsToPickle(_raise_system_exit),
        1,
        pickle.PicklingError,
        "Could not pickle the task to send it to the workers.",
        False,
    ),
    "3-worker-unpickle-systemexit": (
        identity,
        lambda: FailsToUnpickle(_raise_system_exit),
        1,
        BrokenProcessPool,
        TASK_UNSERIALIZE,
        True,
    ),
    "7-run-segfault": (
        call_it,
        lambda: _segfault,
        1,
        TerminatedWorkerError,
        "SIGSEGV(-11)",
        True,
    ),
    "8-run-sys-exit": (
        call_it,
        lambda: _raise_system_exit,
        1,
        SystemExit,
        None,
        False,
    ),
    "12-result-pickle-systemexit": (
        make,
        lambda: (FailsToPickle, _raise_system_exit),
        (None, 1),
        SystemExit,
        None,
        False,
    ),
    "15-parent-unpickle-systemexit": (
        make,
        lambda: (FailsToUnpickle, _raise_system_exit),
        (None, 1),
        BrokenProcessPool,
        RESULT_UNSERIALIZE,
        True,
    ),
}


@pytest.mark.parametrize("chunksize", [1, 3])
@pytest.mark.parametrize("row", sorted(MAP_ROWS))
def test_crash_rows_through_map(row, chunksize):
    """The same outcome when the failing item travels in a map chunk (alone or
    between two good items): type, message, breakage and a working pool."""
    fn, make_bad, good, exc_type, expected, breaks = MAP_ROWS[row]
    executor = ProcessPoolExecutor(max_workers=2)
    info = None
    try:
        results = executor.map(fn, [good, make_bad(), good], chunksize=chunksize)
        with pytest.raises(exc_type) as info:
            list(results)
        error = info.value
        assert type(error) is exc_type
        if exc_type is TerminatedWorkerError:
            assert expected in str(error)
        elif expected is not None:
            assert str(error) == expected
        if exc_type is not TerminatedWorkerError:
            assert isinstance(error.__cause__, _RemoteTraceback)
        if breaks:
            executor._executor_manager_thread.join(timeout=30)
            assert executor._flags.broken is error
            assert executor._processes == {}
            with pytest.raises(exc_type) as again:
                executor.map(identity, [1])
            assert again.value is error
        else:
            assert executor._flags.broken is None
            assert list(executor.map(identity, range(4), chunksize=chunksize)) == [
                0,
                1,
                2,
                3,
            ]
    finally:
        executor.shutdown(wait=True, kill_workers=True)
        # The error's traceback holds this frame (and the executor).
        info = None
        gc.collect()


# ---------------------------------------------- BaseExceptions from a task
class CustomBaseException(BaseException):
    pass


def raise_base(kind):
    if kind == "keyboard":
        raise KeyboardInterrupt("from the task")
    raise CustomBaseException("from the task")


def get_pid():
    return os.getpid()


@pytest.mark.parametrize("kind", ["keyboard", "custom"])
def test_base_exception_in_a_task_is_its_exception_and_the_worker_lives(kind):
    expected = KeyboardInterrupt if kind == "keyboard" else CustomBaseException
    with ProcessPoolExecutor(max_workers=1) as executor:
        pid = executor.submit(get_pid).result(timeout=60)
        future = executor.submit(raise_base, kind)
        assert isinstance(future.exception(timeout=60), expected)
        assert future.exception().args == ("from the task",)
        assert "raise_base" in future.exception().__cause__.tb
        assert executor.submit(get_pid).result(timeout=60) == pid
        assert executor._flags.broken is None
