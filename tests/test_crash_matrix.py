"""The crash and error matrix (spec section 17): every row, exact types and texts.

Each row runs one task on a healthy executor, submitted directly or from a
done-callback through the manager thread's own reusable executor, then checks
what ``future.result()`` raises, whether the executor broke, and that nothing
hangs or outlives the test.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import faulthandler
import gc
import logging
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import threading
from concurrent.futures.process import BrokenProcessPool as StdlibBrokenProcessPool

import pytest

from loky import get_reusable_executor
from loky.process_executor import (
    BrokenProcessPool,
    ProcessPoolExecutor,
    TerminatedWorkerError,
    _RemoteTraceback,
)

TASK_UNSERIALIZE = (
    "A task has failed to un-serialize. Please ensure that the arguments of the "
    "function are all picklable."
)
RESULT_UNSERIALIZE = (
    "A result has failed to un-serialize. Please ensure that the objects returned "
    "by the function are always picklable."
)
TERMINATED_PREFIX = (
    "A worker process managed by the executor was unexpectedly terminated. This "
    "could be caused by a segmentation fault while calling the function or by an "
    "excessive memory usage causing the Operating System to kill the worker.\n"
)
TERMINATED_SUFFIX = (
    "\nDetailed tracebacks of the workers should have been printed to stderr in "
    "the executor process if faulthandler was not disabled."
)


# --------------------------------------------------------------- failure kinds
def _c_exit(code=0):
    """Leave through libc's exit(): no Python cleanup at all."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    libc.exit(code)


def _segfault():
    # Keep the worker's stderr quiet: the crash dump is not what is tested here.
    faulthandler.disable()
    faulthandler._sigsegv()


def _raise_system_exit():
    raise SystemExit()


def _raise_unpickling_error():
    raise pickle.UnpicklingError("unpickling went wrong")


def _raise_runtime_error():
    raise RuntimeError("the reconstructor failed")


class FailsToPickle:
    """Its ``__reduce__`` runs ``action`` (so it fails where it is pickled)."""

    def __init__(self, action, *args):
        self.action = action
        self.args = args

    def __reduce__(self):
        self.action(*self.args)
        return FailsToPickle, (self.action, *self.args)


class FailsToUnpickle:
    """Unpickling runs ``action`` (so it fails where it is loaded)."""

    def __init__(self, action, *args):
        self.action = action
        self.args = args

    def __reduce__(self):
        return _failing_reconstructor, (self.action, self.args)


def _failing_reconstructor(action, args):
    action(*args)


def _raise_value_error():
    raise ValueError("reduce failed")


def _raise_pickling_error():
    raise pickle.PicklingError("the result cannot be pickled")


# ------------------------------------------------------------------ the tasks
def identity(x):
    return x


def call(fn, *args):
    return fn(*args)


def return_instance(cls, *args):
    return cls(*args)


def exit_with(code):
    sys.exit(code)


def get_pid(_=None):
    return os.getpid()


# ---------------------------------------------------------------- submitters
def submit_direct(executor, fn, *args):
    return executor.submit(fn, *args)


def submit_from_callback(executor, fn, *args):
    """Submit from a done-callback of ``executor`` (runs in its manager thread)
    through that thread's own reusable executor."""
    box = {}
    ready = threading.Event()

    def callback(_):
        try:
            inner = get_reusable_executor(max_workers=1)
            box["executor"] = inner
            box["future"] = inner.submit(fn, *args)
        except BaseException as e:  # pragma: no cover - reported below
            box["error"] = e
        finally:
            ready.set()

    executor.submit(identity, 0).add_done_callback(callback)
    assert ready.wait(30)
    if "error" in box:
        raise box["error"]
    submit_from_callback.inner_executors.append(box["executor"])
    return box["future"]


submit_from_callback.inner_executors = []


@pytest.fixture(scope="module")
def shared_executor():
    """The healthy rows leave the executor usable: they share one pool."""
    executor = ProcessPoolExecutor(max_workers=2)
    try:
        yield executor
    finally:
        for inner in submit_from_callback.inner_executors:
            inner.shutdown(wait=True, kill_workers=True)
        submit_from_callback.inner_executors.clear()
        executor.shutdown(wait=True, kill_workers=True)


@pytest.fixture(params=["direct", "callback"])
def submit(request, shared_executor):
    submitter = submit_direct if request.param == "direct" else submit_from_callback
    return lambda fn, *args: submitter(shared_executor, fn, *args)


# ---------------------------------------------------------------- the rows
HEALTHY_ROWS = {
    "1-parent-pickle-systemexit": (
        identity,
        lambda: (FailsToPickle(_raise_system_exit),),
        pickle.PicklingError,
        "Could not pickle the task to send it to the workers.",
        "SystemExit",
    ),
    "2-parent-pickle-error": (
        identity,
        lambda: (FailsToPickle(_raise_value_error),),
        pickle.PicklingError,
        "Could not pickle the task to send it to the workers.",
        "ValueError: reduce failed",
    ),
    "8-run-sys-exit": (exit_with, lambda: (0,), SystemExit, None, "SystemExit"),
    "10-run-raises": (
        call,
        lambda: (_raise_runtime_error,),
        RuntimeError,
        "the reconstructor failed",
        "_raise_runtime_error",
    ),
    "12-result-pickle-systemexit": (
        return_instance,
        lambda: (FailsToPickle, _raise_system_exit),
        SystemExit,
        None,
        "SystemExit",
    ),
    "14-result-pickle-error": (
        return_instance,
        lambda: (FailsToPickle, _raise_pickling_error),
        pickle.PicklingError,
        "the result cannot be pickled",
        "PicklingError",
    ),
}


@pytest.mark.parametrize("row", sorted(HEALTHY_ROWS))
def test_rows_that_leave_the_executor_healthy(submit, row):
    fn, make_args, exc_type, message, in_cause = HEALTHY_ROWS[row]
    future = submit(fn, *make_args())
    with pytest.raises(exc_type) as info:
        future.result(timeout=60)
    if message is not None:
        assert str(info.value) == message
    cause = info.value.__cause__
    assert isinstance(cause, _RemoteTraceback)
    assert in_cause in cause.tb
    # The pool survived: the same workers keep serving.
    assert submit(identity, 41).result(timeout=60) == 41


def test_sys_exit_in_task_keeps_the_worker():
    with ProcessPoolExecutor(max_workers=1) as executor:
        pid = executor.submit(get_pid).result()
        with pytest.raises(SystemExit):
            executor.submit(exit_with, 0).result()
        assert executor.submit(get_pid).result() == pid


BROKEN_ROWS = {
    "3-worker-unpickle-systemexit": (
        identity,
        lambda: (FailsToUnpickle(_raise_system_exit),),
        BrokenProcessPool,
        TASK_UNSERIALIZE,
        ["SystemExit"],
    ),
    "4-worker-unpickle-c-exit": (
        identity,
        lambda: (FailsToUnpickle(_c_exit),),
        TerminatedWorkerError,
        "EXIT(0)",
        [],
    ),
    "5-worker-unpickle-unpicklingerror": (
        identity,
        lambda: (FailsToUnpickle(_raise_unpickling_error),),
        BrokenProcessPool,
        TASK_UNSERIALIZE,
        ["UnpicklingError", "unpickling went wrong"],
    ),
    "5-worker-unpickle-runtimeerror": (
        identity,
        lambda: (FailsToUnpickle(_raise_runtime_error),),
        BrokenProcessPool,
        TASK_UNSERIALIZE,
        ["RuntimeError", "the reconstructor failed"],
    ),
    "6-worker-unpickle-segfault": (
        identity,
        lambda: (FailsToUnpickle(_segfault),),
        TerminatedWorkerError,
        "SIGSEGV(-11)",
        [],
    ),
    "7-run-segfault": (
        call,
        lambda: (_segfault,),
        TerminatedWorkerError,
        "SIGSEGV(-11)",
        [],
    ),
    "9-run-c-exit": (call, lambda: (_c_exit,), TerminatedWorkerError, "EXIT(0)", []),
    "9-run-c-exit-42": (
        call,
        lambda: (_c_exit, 42),
        TerminatedWorkerError,
        "EXIT(42)",
        [],
    ),
    "11-result-pickle-segfault": (
        return_instance,
        lambda: (FailsToPickle, _segfault),
        TerminatedWorkerError,
        "SIGSEGV(-11)",
        [],
    ),
    "13-result-pickle-c-exit": (
        return_instance,
        lambda: (FailsToPickle, _c_exit),
        TerminatedWorkerError,
        "EXIT(0)",
        [],
    ),
    "15-parent-unpickle-systemexit": (
        return_instance,
        lambda: (FailsToUnpickle, _raise_system_exit),
        BrokenProcessPool,
        RESULT_UNSERIALIZE,
        ["SystemExit"],
    ),
    "16-parent-unpickle-unpicklingerror": (
        return_instance,
        lambda: (FailsToUnpickle, _raise_unpickling_error),
        BrokenProcessPool,
        RESULT_UNSERIALIZE,
        ["UnpicklingError"],
    ),
}


def _check_terminated_message(error, exit_code_text):
    message = str(error)
    assert message.startswith(TERMINATED_PREFIX)
    assert message.endswith(TERMINATED_SUFFIX)
    assert "\nThe exit codes of the workers are {" in message
    assert exit_code_text in message


@pytest.mark.parametrize("row", sorted(BROKEN_ROWS))
def test_rows_that_break_the_executor(row):
    fn, make_args, exc_type, expected, in_cause = BROKEN_ROWS[row]
    executor = ProcessPoolExecutor(max_workers=1)
    try:
        future = executor.submit(fn, *make_args())
        with pytest.raises(exc_type) as info:
            future.result(timeout=60)
        error = info.value
        assert type(error) is exc_type
        assert isinstance(error, StdlibBrokenProcessPool)
        if exc_type is TerminatedWorkerError:
            _check_terminated_message(error, expected)
        else:
            assert str(error) == expected
            assert isinstance(error.__cause__, _RemoteTraceback)
            for text in in_cause:
                assert text in error.__cause__.tb
        # The pool is torn down: flag set, no worker left, same error re-raised.
        executor._executor_manager_thread.join(timeout=30)
        assert executor._flags.broken is error
        assert executor._pending_work_items == {}
        assert executor._processes == {}
        with pytest.raises(exc_type) as again:
            executor.submit(identity, 1)
        assert again.value is error
    finally:
        executor.shutdown(wait=True, kill_workers=True)


@pytest.mark.parametrize(
    "row",
    ["3-worker-unpickle-systemexit", "7-run-segfault", "15-parent-unpickle-systemexit"],
)
def test_broken_rows_from_a_done_callback(row):
    """The same failures through the manager thread's own reusable executor,
    which get_reusable_executor() then replaces by a working one."""
    fn, make_args, exc_type, _expected, _ = BROKEN_ROWS[row]
    outer = ProcessPoolExecutor(max_workers=1)
    box = {}
    done = threading.Event()

    def callback(_):
        try:
            inner = get_reusable_executor(max_workers=1)
            box["first"] = inner
            try:
                inner.submit(fn, *make_args()).result(timeout=60)
            except BaseException as e:
                box["error"] = e
            replacement = get_reusable_executor(max_workers=1)
            box["replacement"] = replacement
            box["value"] = replacement.submit(identity, 7).result(timeout=60)
        finally:
            done.set()

    try:
        outer.submit(identity, 0).add_done_callback(callback)
        assert done.wait(90)
        assert type(box["error"]) is exc_type
        assert box["replacement"] is not box["first"]
        assert box["value"] == 7
        assert box["first"]._flags.broken is box["error"]
    finally:
        for key in ("first", "replacement"):
            if key in box:
                box[key].shutdown(wait=True, kill_workers=True)
        box.clear()
        outer.shutdown(wait=True, kill_workers=True)
        # The error raised in the callback references its frames, which
        # reference the executors (a cycle through _flags.broken): collect it
        # so that their semaphores are released now.
        gc.collect()


def test_reusable_executor_replaces_a_broken_one():
    executor = get_reusable_executor(max_workers=1)
    with pytest.raises(TerminatedWorkerError):
        executor.submit(call, _segfault).result(timeout=60)
    replacement = get_reusable_executor(max_workers=1)
    assert replacement is not executor
    assert replacement.submit(identity, 3).result(timeout=60) == 3


# ------------------------------------------------------ killed from outside
def sleep_forever():
    threading.Event().wait()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_worker_killed_from_outside(sig):
    executor = ProcessPoolExecutor(max_workers=2)
    try:
        pids = {executor.submit(get_pid, i).result() for i in range(4)}
        assert pids <= set(executor._processes)
        running = executor.submit(sleep_forever)
        os.kill(next(iter(executor._processes)), sig)
        with pytest.raises(TerminatedWorkerError) as info:
            running.result(timeout=60)
        _check_terminated_message(
            info.value, f"{signal.Signals(sig).name}(-{int(sig)})"
        )
        with pytest.raises(TerminatedWorkerError) as again:
            executor.submit(identity, 1)
        assert again.value is info.value
    finally:
        executor.shutdown(wait=True, kill_workers=True)


def kill_other_workers(pids):
    for pid in pids:
        if pid != os.getpid():
            os.kill(pid, signal.SIGKILL)


def test_workers_killing_each_other():
    executor = ProcessPoolExecutor(max_workers=2)
    try:
        executor.submit(identity, 0).result()
        pids = list(executor._processes)
        with pytest.raises(TerminatedWorkerError) as info:
            # The killer may itself be killed by the pool teardown.
            executor.submit(kill_other_workers, pids).result(timeout=60)
            executor.submit(identity, 1).result(timeout=60)
        assert "SIGKILL(-9)" in str(info.value)
    finally:
        executor.shutdown(wait=True, kill_workers=True)


# ------------------------------------------------ failures after the result
class DiesOnDelete:
    def __init__(self, action, *args):
        self.action = action
        self.args = args

    def __del__(self):
        self.action(*self.args)


def make_dies_on_delete(action, *args):
    return DiesOnDelete(action, *args)


def _segfault_quietly():
    _segfault()


@pytest.mark.parametrize(
    "action, exit_code_text",
    [(_segfault_quietly, "SIGSEGV(-11)"), (_c_exit, "EXIT(0)")],
)
def test_argument_whose_del_kills_the_worker(action, exit_code_text):
    executor = ProcessPoolExecutor(max_workers=1)
    try:
        # The argument is created in the worker (by the unpickling of a
        # partial-like reduce) and dies right after the result was sent.
        future = executor.submit(identity_len, ArgumentKiller(action))
        assert future.result(timeout=60) == 1
        with pytest.raises(TerminatedWorkerError) as info:
            executor.submit(identity, 2).result(timeout=60)
        _check_terminated_message(info.value, exit_code_text)
    finally:
        executor.shutdown(wait=True, kill_workers=True)


class ArgumentKiller:
    """Pickles fine; once loaded in the worker it dies with the call item."""

    def __init__(self, action):
        self.action = action

    def __reduce__(self):
        return make_dies_on_delete, (self.action,)


def identity_len(obj):
    return 1


# -------------------------------------------------------------- initializer
def failing_initializer():
    raise ValueError("initializer failed")


def test_initializer_raising_is_a_terminated_worker(caplog):
    executor = ProcessPoolExecutor(max_workers=1, initializer=failing_initializer)
    try:
        with pytest.raises(TerminatedWorkerError) as info:
            executor.submit(identity, 1).result(timeout=60)
        _check_terminated_message(info.value, "EXIT(0)")
    finally:
        executor.shutdown(wait=True, kill_workers=True)


# ------------------------------------------- manager and feeder hook crashes
def test_manager_thread_crash_breaks_the_pool(caplog):
    executor = ProcessPoolExecutor(max_workers=1)
    try:
        assert executor.submit(identity, 1).result() == 1
        manager = executor._executor_manager_thread

        def crashing_wait():
            raise ValueError("manager bug")

        manager.wait_result_broken_or_wakeup = crashing_wait
        with caplog.at_level(logging.CRITICAL, logger="concurrent.futures"):
            future = executor.submit(identity, 2)
            with pytest.raises(BrokenProcessPool) as info:
                future.result(timeout=60)
            manager.join(timeout=30)
        assert not manager.is_alive()
        assert str(info.value) == (
            "The executor manager thread crashed: the executor is broken and the "
            "pending tasks have been cancelled."
        )
        assert "ValueError: manager bug" in info.value.__cause__.tb
        assert "Exception in executor manager thread:" in caplog.text
        with pytest.raises(BrokenProcessPool):
            executor.submit(identity, 3)
        assert executor._processes == {}
    finally:
        executor.shutdown(wait=True, kill_workers=True)
        # The logged record's traceback holds the manager's frames.
        caplog.clear()
        gc.collect()


def test_feeder_error_hook_crash_breaks_the_pool(caplog):
    executor = ProcessPoolExecutor(max_workers=1)
    try:
        assert executor.submit(identity, 1).result() == 1
        # The hook's bookkeeping fails: list.remove raises ValueError.
        executor._call_queue.running_work_items = []
        with caplog.at_level(logging.CRITICAL, logger="concurrent.futures"):
            future = executor.submit(identity, FailsToPickle(_raise_value_error))
            with pytest.raises(BrokenProcessPool) as info:
                future.result(timeout=60)
            executor._executor_manager_thread.join(timeout=30)
        assert str(info.value) == (
            "The call queue feeder thread crashed: the executor is broken and the "
            "pending tasks have been cancelled."
        )
        assert "ValueError" in info.value.__cause__.tb
        assert "Exception in call queue feeder error hook:" in caplog.text
        with pytest.raises(BrokenProcessPool):
            executor.submit(identity, 3)
    finally:
        executor.shutdown(wait=True, kill_workers=True)
        caplog.clear()
        gc.collect()


def test_many_pickling_failures_never_exhaust_the_call_queue():
    with ProcessPoolExecutor(max_workers=1) as executor:
        futures = [
            executor.submit(identity, FailsToPickle(_raise_value_error))
            for _ in range(30)
        ]
        for future in futures:
            with pytest.raises(pickle.PicklingError):
                future.result(timeout=60)
        assert executor.submit(identity, 5).result(timeout=60) == 5


# ------------------------------------------------------- raising callbacks
def test_done_callbacks_raising_are_logged_and_harmless(caplog):
    with ProcessPoolExecutor(max_workers=1) as executor:
        seen = []

        def raise_system_exit(_):
            raise SystemExit("from callback")

        def raise_unpickling_error(_):
            raise pickle.UnpicklingError("from callback")

        with caplog.at_level(logging.ERROR, logger="concurrent.futures"):
            future = executor.submit(identity, 1)
            future.add_done_callback(raise_system_exit)
            future.add_done_callback(raise_unpickling_error)
            future.add_done_callback(seen.append)
            assert future.result() == 1
            # Still healthy, the later callback ran.
            assert executor.submit(identity, 2).result(timeout=60) == 2
        assert seen == [future]
        assert "exception calling callback for" in caplog.text
        assert executor._flags.broken is None


# ------------------------------------------------------ segfault in a script
def test_script_segfault_exits_1_with_the_crash_dump(tmp_path):
    script = tmp_path / "segfault_script.py"
    script.write_text(
        textwrap.dedent(
            """
            import faulthandler
            from loky import ProcessPoolExecutor

            def crash():
                faulthandler._sigsegv()

            if __name__ == "__main__":
                with ProcessPoolExecutor(max_workers=1) as executor:
                    executor.submit(crash).result()
            """
        )
    )
    proc = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 1
    assert "Current thread" in proc.stderr
    assert "TerminatedWorkerError" in proc.stderr
