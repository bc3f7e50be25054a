"""Conformance (black-box): ProcessPoolExecutor against loky_api.md §2-§5
(constructor order and state, map, shutdown, Future, nesting depth)."""

from __future__ import annotations

import gc
import logging
import multiprocessing
import os
import pickle
import queue
import re
import signal
import subprocess
import sys
import textwrap
import threading
import warnings
import weakref
from concurrent.futures import CancelledError, as_completed, wait
from concurrent.futures import TimeoutError as FuturesTimeoutError

import pytest

import loky
from loky import ProcessPoolExecutor
from loky import process_executor as pe
from loky.backend import get_context
from loky.backend.queues import SimpleQueue


def square(x):
    return x * x


def identity(x):
    return x


def get_pid(_=None):
    return os.getpid()


_EVENT = None


def _store_event(event):
    # Synchronisation primitives reach workers only at spawn (initargs).
    global _EVENT
    _EVENT = event


def wait_on_event(_=None):
    _EVENT.wait()
    return "released"


def raise_value_error(x):
    raise ValueError(x)


def make_nested_executor():
    executor = ProcessPoolExecutor(max_workers=1)
    try:
        return executor.submit(square, 3).result()
    finally:
        executor.shutdown()


def current_depth(_=None):
    return pe._CURRENT_DEPTH


def get_env(name):
    return os.environ.get(name)


def return_lambda():
    return lambda: 1


class UnpicklableError(Exception):
    def __init__(self):
        super().__init__("unpicklable")
        self.lock = threading.Lock()


def raise_unpicklable():
    raise UnpicklableError()


def return_exception_with_traceback():
    # joblib's pattern: the wrapped exception travels back as a *result*.
    try:
        raise KeyError("in worker")
    except KeyError as e:
        return pe._ExceptionWithTraceback(e)


@pytest.fixture(autouse=True)
def _collect_cycles():
    # Exceptions kept by futures reference the test frame (a cycle): collect
    # them so that the semaphores they reach are unlinked before the leak check.
    yield
    gc.collect()


@pytest.fixture(scope="module")
def executor():
    executor = ProcessPoolExecutor(max_workers=2)
    try:
        yield executor
    finally:
        executor.shutdown(wait=True, kill_workers=True)


# ------------------------------------------------------------ constructor
def test_constructor_checks_max_workers_before_initializer():
    with pytest.raises(ValueError, match=r"^max_workers must be greater than 0$"):
        ProcessPoolExecutor(max_workers=0, initializer="not callable")
    with pytest.raises(ValueError) as info:
        ProcessPoolExecutor(max_workers=-3)
    assert info.value.args == ("max_workers must be greater than 0",)


def test_constructor_checks_initializer_before_depth(monkeypatch):
    monkeypatch.setattr(pe, "_CURRENT_DEPTH", 50)
    monkeypatch.setattr(pe, "MAX_DEPTH", 10)
    with pytest.raises(TypeError, match=r"^initializer must be a callable, got: 'x'$"):
        ProcessPoolExecutor(max_workers=1, initializer="x")
    with pytest.raises(pe.LokyRecursionError):
        ProcessPoolExecutor(max_workers=1)


def test_constructor_state(monkeypatch):
    job_reducers = {type(None): lambda o: (type(None), ())}
    executor = ProcessPoolExecutor(
        max_workers=3, job_reducers=job_reducers, timeout=7, env={"A": "1"}
    )
    try:
        assert executor._processes == {}
        assert executor._pending_work_items == {}
        assert executor._running_work_items == []
        assert isinstance(executor._work_ids, queue.Queue)
        assert executor._queue_count == 0
        assert isinstance(executor._shutdown_lock, type(threading.Lock()))
        assert executor._executor_manager_thread is None
        assert isinstance(executor._executor_manager_thread_wakeup, pe._ThreadWakeup)
        assert isinstance(executor._flags, pe._ExecutorFlags)
        assert executor._flags.shutdown_lock is executor._shutdown_lock
        assert executor._max_workers == 3
        assert executor._context is get_context()
        assert executor._env == {"A": "1"}
        assert executor._initializer is None
        assert executor._initargs == ()
        assert executor._timeout == 7
        assert isinstance(executor._call_queue, pe._SafeQueue)
        assert executor._call_queue._maxsize == 2 * 3 + pe.EXTRA_QUEUED_CALLS
        assert executor._call_queue._ignore_epipe is True
        assert executor._call_queue._reducers is job_reducers
        assert isinstance(executor._result_queue, SimpleQueue)
        # result_reducers defaults to job_reducers
        assert executor._result_queue._reducers is job_reducers
        assert hasattr(executor._processes_management_lock, "acquire")
        # instances accept new attributes
        executor.some_new_attribute = 1
        assert threading.active_count() >= 1
        assert executor._executor_manager_thread is None
        assert multiprocessing.active_children() == [] or all(
            p.pid not in executor._processes for p in multiprocessing.active_children()
        )
    finally:
        executor.shutdown()


def test_constructor_positional_order():
    executor = ProcessPoolExecutor(1, None, None, 5)
    try:
        assert executor._max_workers == 1 and executor._timeout == 5
    finally:
        executor.shutdown()


def test_submit_starts_all_workers_as_direct_children():
    executor = ProcessPoolExecutor(max_workers=2)
    try:
        executor.submit(square, 2)
        assert len(executor._processes) == 2
        thread = executor._executor_manager_thread
        assert thread is not None and thread.is_alive()
        assert thread.name == "ExecutorManagerThread" and not thread.daemon
        children = {p.pid for p in multiprocessing.active_children()}
        for pid, process in executor._processes.items():
            assert process.pid == pid
            assert pid in children
            assert process.is_alive()
            assert hasattr(process, "_worker_exit_lock")
            assert process.sentinel is not None
    finally:
        executor.shutdown(wait=True)


# ----------------------------------------------------------------- Future
def test_future_is_stdlib_compatible():
    future = loky.Future()
    assert re.match(r"<Future at 0x[0-9a-f]+ state=pending>", repr(future))
    future.set_result(3)
    assert re.match(
        r"<Future at 0x[0-9a-f]+ state=finished returned int>", repr(future)
    )
    seen = []
    future.add_done_callback(seen.append)  # added after completion: runs now
    assert seen == [future]
    cancelled = loky.Future()
    assert cancelled.cancel() and cancelled.cancel()
    with pytest.raises(CancelledError):
        cancelled.result()
    pending = loky.Future()
    with pytest.raises(FuturesTimeoutError):
        pending.result(timeout=0)
    pending._state = "FINISHED"
    pending._result = 5
    assert pending.result() == 5
    assert hasattr(pending, "_condition") and hasattr(pending, "_exception")


def test_future_callback_base_exception_is_logged(caplog):
    future = loky.Future()
    ran = []

    def raise_system_exit(_):
        raise SystemExit(3)

    future.add_done_callback(raise_system_exit)
    future.add_done_callback(lambda f: ran.append(f))
    with caplog.at_level(logging.ERROR, logger="concurrent.futures"):
        future.set_result(1)
    assert ran == [future]
    assert any(
        r.getMessage() == f"exception calling callback for {future!r}"
        for r in caplog.records
    )


# ----------------------------------------------------------------- submit
def test_submit_on_broken_executor_reraises_the_same_instance():
    executor = ProcessPoolExecutor(max_workers=1)
    try:
        future = executor.submit(os._exit, 3)
        with pytest.raises(pe.TerminatedWorkerError) as first:
            future.result(timeout=60)
        assert "EXIT(3)" in str(first.value)
        with pytest.raises(pe.TerminatedWorkerError) as again:
            executor.submit(square, 1)
        assert again.value is first.value is executor._flags.broken
        with pytest.raises(pe.TerminatedWorkerError):
            executor.map(square, range(3))
        assert executor._pending_work_items == {}
    finally:
        executor.shutdown(wait=True)


def test_unpicklable_exception_is_reported(executor):
    future = executor.submit(raise_unpicklable)
    error = future.exception(timeout=60)
    assert error is not None
    # The pool survives (a picklable stand-in was allowed).
    assert executor.submit(square, 4).result(timeout=60) == 16


def test_exception_with_traceback_returned_as_a_result(executor):
    obj = executor.submit(return_exception_with_traceback).result(timeout=60)
    # Unpickling a _ExceptionWithTraceback rebuilds the exception itself.
    assert isinstance(obj, KeyError)
    assert isinstance(obj.__cause__, pe._RemoteTraceback)
    assert "in worker" in obj.__cause__.tb
    wrapped = pe._ExceptionWithTraceback(KeyError("local"))
    rebuild, args = wrapped.__reduce__()
    error = rebuild(*args)
    assert isinstance(error, KeyError) and error.args == ("local",)
    assert isinstance(error.__cause__, pe._RemoteTraceback)


def test_lambda_results_and_tasks_travel_with_cloudpickle(executor):
    assert executor.submit(lambda x: x + 1, 1).result(timeout=60) == 2
    assert executor.submit(return_lambda).result(timeout=60)() == 1


def test_env_reaches_workers_and_depth_is_one():
    executor = ProcessPoolExecutor(max_workers=1, env={"LOKY_CONFORMANCE_VAR": "x"})
    try:
        assert executor.submit(get_env, "LOKY_CONFORMANCE_VAR").result() == "x"
        assert executor.submit(current_depth).result() == 1
    finally:
        executor.shutdown(wait=True)
    assert "LOKY_CONFORMANCE_VAR" not in os.environ


def test_replaced_result_queue_is_used():
    class CountingQueue(SimpleQueue):
        def close(self):
            self.closed_by_manager = True
            super().close()

    executor = ProcessPoolExecutor(max_workers=1)
    replacement = CountingQueue(ctx=executor._context)
    executor._result_queue.close()
    executor._result_queue = replacement
    try:
        assert executor.submit(square, 6).result(timeout=60) == 36
    finally:
        executor.shutdown(wait=True)
    assert replacement.closed_by_manager


def test_wait_result_broken_or_wakeup_is_looked_up_on_the_instance(executor):
    thread = executor._executor_manager_thread
    if thread is None:
        executor.submit(square, 1).result()
        thread = executor._executor_manager_thread
    calls = []
    original = thread.wait_result_broken_or_wakeup

    def spy():
        calls.append(1)
        return original()

    thread.wait_result_broken_or_wakeup = spy
    try:
        assert executor.submit(square, 9).result(timeout=60) == 81
    finally:
        del thread.wait_result_broken_or_wakeup  # back to the class method
    assert calls


# -------------------------------------------------------------------- map
def test_map_checks_chunksize_eagerly_and_ignores_other_keywords(executor):
    with pytest.raises(ValueError) as info:
        executor.map(square, iter([]), chunksize=-1)
    assert info.value.args == ("chunksize must be >= 1.",)
    assert list(executor.map(square, delay=0.1, unknown=True)) == []
    assert list(executor.map(square, range(5), chunksize=10, foo="bar")) == [
        0,
        1,
        4,
        9,
        16,
    ]


def test_map_multiple_iterables_stop_at_the_shortest(executor):
    assert list(executor.map(pow, [2, 3, 4], [2, 2], chunksize=2)) == [4, 9]


def test_map_input_error_surfaces_from_map_even_later_in_the_input(executor):
    def bad(n):
        yield from range(n)
        raise OSError("input broke")

    with pytest.raises(OSError, match="input broke"):
        executor.map(square, bad(7), chunksize=3)


def test_map_timeout_cancels_remaining_futures():
    event = get_context().Event()
    executor = ProcessPoolExecutor(
        max_workers=1, initializer=_store_event, initargs=(event,)
    )
    submitted = []
    original_submit = executor.submit

    def recording_submit(fn, *args, **kwargs):
        future = original_submit(fn, *args, **kwargs)
        submitted.append(future)
        return future

    executor.submit = recording_submit
    try:
        results = executor.map(wait_on_event, range(12), timeout=0.5)
        with pytest.raises(FuturesTimeoutError):
            next(results)
        # At most 1 running + 3 in the call queue; the rest was cancelled.
        assert len(submitted) == 12
        assert all(f.cancelled() for f in submitted[4:])
    finally:
        event.set()
        executor.shutdown(wait=True, kill_workers=True)


def test_map_iterator_dropped_mid_iteration_with_executor_dropped():
    executor = ProcessPoolExecutor(max_workers=1)
    ref = weakref.ref(executor)
    flags = executor._flags
    results = executor.map(square, range(30), chunksize=4)
    assert next(results) == 0
    del executor
    gc.collect()
    assert ref() is None
    assert list(results) == [i * i for i in range(1, 30)]
    assert flags.shutdown and flags.broken is None


def test_map_task_error_keeps_remote_traceback(executor):
    results = executor.map(raise_value_error, [1])
    with pytest.raises(ValueError) as info:
        next(results)
    assert isinstance(info.value.__cause__, pe._RemoteTraceback)


# --------------------------------------------------------------- shutdown
def test_shutdown_releases_internals_and_is_idempotent():
    executor = ProcessPoolExecutor(max_workers=2)
    assert executor.submit(square, 3).result(timeout=60) == 9
    processes = executor._processes
    flags = executor._flags
    workers = list(processes.values())
    executor.shutdown(True, False)  # positional order (wait, kill_workers)
    for name in (
        "_executor_manager_thread",
        "_executor_manager_thread_wakeup",
        "_call_queue",
        "_result_queue",
        "_processes_management_lock",
    ):
        assert getattr(executor, name) is None, name
    assert executor._processes is processes
    assert executor._flags is flags and flags.shutdown and flags.broken is None
    for p in workers:
        p.join(timeout=30)
        assert not p.is_alive()
    executor.shutdown()
    executor.shutdown(wait=False, kill_workers=True)
    with pytest.raises(pe.ShutdownExecutorError):
        executor.submit(square, 1)


def test_shutdown_of_an_unused_executor_and_cancel_futures_keyword():
    executor = ProcessPoolExecutor(max_workers=1)
    executor.shutdown(wait=False)
    executor.shutdown(wait=True)
    assert executor._call_queue is None
    executor = ProcessPoolExecutor(max_workers=1)
    executor.shutdown(cancel_futures=True)
    assert executor._flags.shutdown


def test_shutdown_no_wait_keeps_jobs_running_to_completion():
    event = get_context().Event()
    executor = ProcessPoolExecutor(
        max_workers=1, initializer=_store_event, initargs=(event,)
    )
    blocked = executor.submit(wait_on_event)
    queued = [executor.submit(square, i) for i in range(5)]
    manager = executor._executor_manager_thread
    executor.shutdown(wait=False)
    assert not blocked.done()
    event.set()
    assert blocked.result(timeout=60) == "released"
    assert [f.result(timeout=60) for f in queued] == [i * i for i in range(5)]
    manager.join(timeout=60)
    assert not manager.is_alive()


def test_with_block_never_hangs_with_a_full_call_queue():
    with ProcessPoolExecutor(max_workers=1) as executor:
        futures = [executor.submit(identity, b"x" * 1000) for _ in range(300)]
        futures[-1].cancel()
    assert all(f.done() for f in futures)
    assert futures[0].result() == b"x" * 1000


def test_gc_with_a_running_job_then_a_worker_crash():
    event = get_context().Event()
    executor = ProcessPoolExecutor(
        max_workers=1, initializer=_store_event, initargs=(event,)
    )
    running = executor.submit(wait_on_event)
    crashing = executor.submit(os._exit, 7)
    flags = executor._flags
    workers = list(executor._processes.values())
    ref = weakref.ref(executor)
    del executor
    gc.collect()
    assert ref() is None
    event.set()
    assert running.result(timeout=60) == "released"
    with pytest.raises(pe.TerminatedWorkerError, match=r"EXIT\(7\)"):
        crashing.result(timeout=60)
    assert flags.broken is not None
    for p in workers:
        p.join(timeout=30)
        assert not p.is_alive()


# ------------------------------------------------------------------ depth
def test_check_max_depth_messages(monkeypatch):
    loky_ctx = get_context("loky")
    monkeypatch.setattr(pe, "MAX_DEPTH", 3)
    monkeypatch.setattr(pe, "_CURRENT_DEPTH", 2)
    pe._check_max_depth(loky_ctx)  # depth 3 allowed
    monkeypatch.setattr(pe, "_CURRENT_DEPTH", 3)
    with pytest.raises(pe.LokyRecursionError) as info:
        pe._check_max_depth(loky_ctx)
    assert str(info.value) == (
        "Could not spawn extra nested processes at depth superior to MAX_DEPTH=3. "
        "If this is intendend, you can change this limit with the LOKY_MAX_DEPTH "
        "environment variable."
    )
    monkeypatch.setattr(pe, "MAX_DEPTH", 0)  # unlimited
    monkeypatch.setattr(pe, "_CURRENT_DEPTH", 1000)
    pe._check_max_depth(loky_ctx)
    if sys.platform != "win32":
        monkeypatch.setattr(pe, "_CURRENT_DEPTH", 1)
        with pytest.raises(pe.LokyRecursionError) as info:
            pe._check_max_depth(multiprocessing.get_context("fork"))
        assert str(info.value) == (
            "Could not spawn extra nested processes at depth superior to MAX_DEPTH=1. "
            "It is not possible to increase this limit when using the 'fork' start "
            "method."
        )
        monkeypatch.setattr(pe, "_CURRENT_DEPTH", 0)
        pe._check_max_depth(multiprocessing.get_context("fork"))


def nested_chain(levels):
    """Depths seen along a chain of ``levels`` executors nested in workers."""
    if levels == 0:
        return [pe._CURRENT_DEPTH]
    executor = loky.get_reusable_executor(max_workers=1)
    return [pe._CURRENT_DEPTH, *executor.submit(nested_chain, levels - 1).result()]


def test_chain_of_max_depth_executors_works_one_more_fails():
    # Workers (and their children) read LOKY_MAX_DEPTH=2 at import.
    executor = ProcessPoolExecutor(max_workers=1, env={"LOKY_MAX_DEPTH": "2"})
    try:
        # 2 nested executors: this one and one inside its worker
        assert executor.submit(nested_chain, 1).result(timeout=60) == [1, 2]
        with pytest.raises(pe.LokyRecursionError) as info:
            executor.submit(nested_chain, 2).result(timeout=60)
        assert "MAX_DEPTH=2." in str(info.value)
        assert executor.submit(make_nested_executor).result(timeout=60) == 9
    finally:
        executor.shutdown(wait=True)


# -------------------------------------------------------- §16 no warnings
QUIET_SCRIPT = textwrap.dedent(
    """
    import warnings
    warnings.simplefilter("always")
    import logging, multiprocessing.util
    multiprocessing.util.log_to_stderr(logging.DEBUG)
    from loky import ProcessPoolExecutor, get_reusable_executor

    def square(x):
        return x * x

    if __name__ == "__main__":
        with ProcessPoolExecutor(max_workers=2) as executor:
            assert list(executor.map(square, range(10))) == [x * x for x in range(10)]
            assert executor.submit(square, 3).result() == 9
        executor = get_reusable_executor(max_workers=2)
        assert executor.submit(square, 4).result() == 16
        executor = get_reusable_executor(max_workers=1)
        assert executor.submit(square, 5).result() == 25
        executor.shutdown(wait=True)
        print("done")
    """
)


def test_normal_use_emits_no_warning_with_debug_logging(tmp_path):
    script = tmp_path / "quiet_script.py"
    script.write_text(QUIET_SCRIPT)
    proc = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout == "done\n"
    assert "Warning" not in proc.stderr, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    # the multiprocessing logger did reach stderr, from the workers too
    assert "[DEBUG/" in proc.stderr
    assert "[DEBUG/LokyProcess" in proc.stderr or "[INFO/LokyProcess" in proc.stderr


def test_pickled_call_item_records_the_pickler():
    item = pe._CallItem(0, square, (3,), {})
    clone = pickle.loads(pickle.dumps(item))
    assert clone.loky_pickler == item.loky_pickler
    assert clone() == 9


# -------------------------------------------------------------- contexts
@pytest.fixture
def stop_forkserver():
    yield
    from multiprocessing import forkserver

    forkserver._forkserver._stop()


def initializer_sets_env(value):
    os.environ["LOKY_CONFORMANCE_INIT"] = value


@pytest.mark.parametrize("method", ["loky_init_main", "forkserver"])
def test_other_contexts_run_tasks_initializers_and_ignore_env(method, stop_forkserver):
    if method == "forkserver" and sys.platform == "win32":
        pytest.skip("POSIX only")
    context = get_context(method)
    executor = ProcessPoolExecutor(
        max_workers=1,
        context=context,
        initializer=initializer_sets_env,
        initargs=("yes",),
        env={"LOKY_CONFORMANCE_VAR": "x"},
    )
    try:
        assert executor._context is context
        assert executor.submit(get_env, "LOKY_CONFORMANCE_INIT").result(60) == "yes"
        assert list(executor.map(square, range(4))) == [0, 1, 4, 9]
        assert executor.submit(current_depth).result(60) == 1
    finally:
        executor.shutdown(wait=True)


def test_exit_hook_is_registered_at_the_first_manager_start():
    executor = ProcessPoolExecutor(max_workers=1)
    try:
        executor.submit(square, 1).result(timeout=60)
        assert pe.process_pool_executor_at_exit is pe._python_exit
        assert executor._executor_manager_thread in pe._threads_wakeups
    finally:
        manager = executor._executor_manager_thread
        executor.shutdown(wait=True)
    assert manager not in pe._threads_wakeups


def test_shutdown_from_a_done_callback_does_not_deadlock():
    executor = ProcessPoolExecutor(max_workers=1)
    done = threading.Event()

    def shutdown_in_callback(_):
        executor.shutdown(wait=True)
        done.set()

    try:
        executor.submit(square, 2).add_done_callback(shutdown_in_callback)
        assert done.wait(60)
        assert executor._flags.shutdown
    finally:
        executor.shutdown(wait=True)


def test_worker_stopping_while_work_waits_is_replaced_with_the_exact_warning():
    executor = ProcessPoolExecutor(max_workers=1)
    try:
        assert executor.submit(square, 1).result(timeout=60) == 1
        old_pids = set(executor._processes)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            # The worker reads this sentinel first and leaves through the
            # exit handshake while a task is waiting for it.
            executor._call_queue.put(None)
            assert executor.submit(square, 2).result(timeout=60) == 4
        messages = [str(w.message) for w in caught if w.category is UserWarning]
        assert messages == [
            "A worker stopped while some jobs were given to the executor. This can "
            "be caused by a too short worker timeout or by a memory leak triggered "
            "by the OS-level out-of-memory (OOM) process killer."
        ]
        assert executor._flags.broken is None
        assert len(executor._processes) == 1
        assert not set(executor._processes) & old_pids
    finally:
        executor.shutdown(wait=True)


# ------------------------------------- cancelled futures when work is dropped
_BLOCKER = None


def _store_blocker(semaphore):
    global _BLOCKER
    _BLOCKER = semaphore


def block_on_semaphore(_=None):
    # A semaphore, not an Event: a killed waiter cannot hang a later notify.
    _BLOCKER.acquire()
    return "released"


def _busy_executor_with_cancelled_futures():
    blocker = get_context().Semaphore(0)
    executor = ProcessPoolExecutor(
        max_workers=1, initializer=_store_blocker, initargs=(blocker,)
    )
    futures = [executor.submit(block_on_semaphore) for _ in range(12)]
    # 1 running + 3 in the call queue at most: the last ones are still pending.
    cancelled = [f for f in futures[-4:] if f.cancel()]
    assert len(cancelled) == 4
    return executor, futures, cancelled


def test_broken_pool_notifies_cancelled_futures():
    executor, futures, cancelled = _busy_executor_with_cancelled_futures()
    try:
        os.kill(next(iter(executor._processes)), signal.SIGKILL)
        done, not_done = wait(futures, timeout=60)
        assert not not_done  # wait() must not hang on a cancelled future
        assert len(list(as_completed(futures, timeout=60))) == len(futures)
        for future in futures:
            if future in cancelled:
                assert future.cancelled()
            else:
                assert isinstance(future.exception(), pe.TerminatedWorkerError)
        assert executor._pending_work_items == {}
    finally:
        executor.shutdown(wait=True)


def test_kill_workers_shutdown_notifies_cancelled_futures():
    executor, futures, cancelled = _busy_executor_with_cancelled_futures()
    executor.shutdown(wait=True, kill_workers=True)
    done, not_done = wait(futures, timeout=60)
    assert not not_done
    for future in futures:
        if future not in cancelled:
            assert isinstance(future.exception(), pe.ShutdownExecutorError)


def test_shutdown_cancel_futures_notifies_the_cancelled_ones():
    blocker = get_context().Semaphore(0)
    executor = ProcessPoolExecutor(
        max_workers=1, initializer=_store_blocker, initargs=(blocker,)
    )
    futures = [executor.submit(block_on_semaphore) for _ in range(12)]
    try:
        executor.shutdown(wait=False, cancel_futures=True)
        assert futures[-1].cancelled()
    finally:
        for _ in futures:
            blocker.release()
    done, not_done = wait(futures, timeout=60)
    assert not not_done
    assert futures[0].result() == "released"


def test_instance_level_semi_public_internals(executor):
    assert executor.submit(square, 2).result(timeout=60) == 4
    for name in ("_adjust_process_count", "_ensure_executor_running", "_setup_queues"):
        assert callable(getattr(executor, name))
    for process in executor._processes.values():
        for name in ("terminate", "join", "is_alive"):
            assert callable(getattr(process, name))
        assert process.exitcode is None and process.is_alive()
        assert isinstance(process.sentinel, int)
        assert hasattr(process._worker_exit_lock, "acquire")
    thread = executor._executor_manager_thread
    assert thread.is_alive() and callable(thread.join)
    assert callable(thread.wait_result_broken_or_wakeup)
    assert isinstance(executor._call_queue.running_work_items, list)
    assert callable(executor._call_queue.join_thread)
    assert executor._result_queue.empty() in (True, False)
    assert executor._call_queue.empty() in (True, False)
    flags = executor._flags
    assert (flags.broken, flags.shutdown, flags.kill_workers) == (None, False, False)
    assert flags.shutdown_lock is executor._shutdown_lock
    # the pids are exactly the keys
    assert all(pid == p.pid for pid, p in executor._processes.items())
    # _ensure_executor_running is idempotent at full strength
    pids = set(executor._processes)
    executor._ensure_executor_running()
    assert set(executor._processes) == pids


def echo_kwargs(**kwargs):
    return kwargs


def test_submit_forwards_keywords_named_fn_and_self(executor):
    # Like the stdlib: submit(fn, /, *args, **kwargs).
    future = executor.submit(echo_kwargs, fn=1, self=2)
    assert future.result(timeout=60) == {"fn": 1, "self": 2}
