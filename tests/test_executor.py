"""ProcessPoolExecutor: constructor, submit, map, shutdown, GC, interpreter exit,
remote tracebacks, the facade, and the pickling-check hook."""

from __future__ import annotations

import gc
import os
import pickle
import subprocess
import sys
import textwrap
import threading
import time
import weakref
from concurrent.futures import TimeoutError as FuturesTimeoutError
from concurrent.futures import as_completed, wait

import pytest

import loky
from loky import ProcessPoolExecutor
from loky import process_executor as pe
from loky.backend.queues import SimpleQueue
from loky.backend.reduction import dumps
from loky.process_executor import (
    ShutdownExecutorError,
    _CallItem,
    _ExceptionWithTraceback,
    _RemoteTraceback,
    _WorkItem,
)


def square(x):
    return x * x


def add(x, y):
    return x + y


def get_pid(_=None):
    return os.getpid()


def raise_value_error(message):
    raise ValueError(message)


def wait_for_event(event):
    event.wait()


def sleep_then_return(delay, value):
    time.sleep(delay)
    return value


def kwargs_echo(*args, **kwargs):
    return args, kwargs


@pytest.fixture(scope="module")
def executor():
    executor = ProcessPoolExecutor(max_workers=2)
    try:
        yield executor
    finally:
        executor.shutdown(wait=True, kill_workers=True)


# ---------------------------------------------------------------- facade
def test_loky_namespace():
    assert loky.__version__ == "3.7.0"
    assert sorted(loky.__all__) == sorted(
        [
            "get_reusable_executor",
            "cpu_count",
            "Future",
            "ProcessPoolExecutor",
            "BrokenProcessPool",
            "wrap_non_picklable_objects",
            "set_loky_pickler",
            "wait",
            "as_completed",
            "Executor",
            "CancelledError",
            "TimeoutError",
            "FIRST_COMPLETED",
            "FIRST_EXCEPTION",
            "ALL_COMPLETED",
        ]
    )
    import concurrent.futures as cf

    assert loky.wait is cf.wait and loky.TimeoutError is cf.TimeoutError
    assert issubclass(loky.BrokenProcessPool, cf.process.BrokenProcessPool)
    assert issubclass(pe.TerminatedWorkerError, loky.BrokenProcessPool)
    assert pe.BrokenExecutor is loky.BrokenProcessPool
    assert issubclass(pe.ShutdownExecutorError, RuntimeError)
    assert issubclass(pe.LokyRecursionError, RuntimeError)
    assert issubclass(loky.Future, cf.Future)
    loky.some_attribute = 1  # arbitrary attributes may be set
    del loky.some_attribute


def test_import_starts_no_thread_or_process():
    code = textwrap.dedent(
        """
        import threading, multiprocessing
        import loky
        from loky.backend import resource_tracker
        assert threading.active_count() == 1, threading.enumerate()
        assert multiprocessing.active_children() == []
        assert resource_tracker._resource_tracker._fd is None
        import multiprocessing.synchronize as ms
        assert ms.SemLock._make_name().startswith("/loky-")
        import multiprocessing.context as mc
        assert "loky" in mc._concrete_contexts
        print("ok")
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )
    assert proc.stdout == "ok\n", proc.stderr


# ----------------------------------------------------------- constructor
def test_constructor_validation():
    with pytest.raises(ValueError) as info:
        ProcessPoolExecutor(max_workers=0)
    assert info.value.args[0] == "max_workers must be greater than 0"
    with pytest.raises(ValueError):
        ProcessPoolExecutor(max_workers=-1)
    with pytest.raises(TypeError) as info:
        ProcessPoolExecutor(max_workers=1, initializer=3)
    assert str(info.value) == "initializer must be a callable, got: 3"


def test_constructor_starts_nothing():
    executor = ProcessPoolExecutor(max_workers=2)
    try:
        assert executor._processes == {}
        assert executor._executor_manager_thread is None
        assert executor._max_workers == 2
        assert executor._call_queue._maxsize == 2 * 2 + pe.EXTRA_QUEUED_CALLS
        assert executor._pickle_check == "off"
        assert executor._pickle_checker is None
        assert executor._flags.shutdown is False and executor._flags.broken is None
    finally:
        executor.shutdown()
    assert executor._call_queue is None and executor._result_queue is None


def test_default_max_workers_is_cpu_count():
    executor = ProcessPoolExecutor()
    try:
        assert executor._max_workers == loky.cpu_count()
    finally:
        executor.shutdown()


# ------------------------------------------------------- submit and results
def test_submit_result_and_workers(executor):
    future = executor.submit(square, 7)
    assert isinstance(future, loky.Future)
    assert future.result(timeout=60) == 49
    # All workers exist once submit returned; they are direct children.
    assert len(executor._processes) == 2
    pids = {executor.submit(get_pid, i).result() for i in range(20)}
    assert pids <= set(executor._processes)
    assert executor.submit(kwargs_echo, 1, a=2).result() == ((1,), {"a": 2})


def test_task_exception_has_remote_traceback_cause(executor):
    future = executor.submit(raise_value_error, "boom")
    with pytest.raises(ValueError, match="^boom$") as info:
        future.result(timeout=60)
    cause = info.value.__cause__
    assert isinstance(cause, _RemoteTraceback)
    assert cause.tb.startswith('\n"""\n') and cause.tb.endswith('"""')
    assert "raise ValueError(message)" in cause.tb
    assert str(cause) == cause.tb


def test_exception_with_traceback_rebuilt_by_reduce():
    # joblib returns it as a result and rebuilds it in the parent.
    try:
        raise KeyError("missing")
    except KeyError as e:
        wrapped = _ExceptionWithTraceback(e)
    assert wrapped.exc.args == ("missing",)
    assert "KeyError: 'missing'" in wrapped.tb
    assert wrapped.exc.__traceback__ is None  # frames released
    rebuild, args = wrapped.__reduce__()
    rebuilt = rebuild(*args)
    assert isinstance(rebuilt, KeyError)
    assert isinstance(rebuilt.__cause__, _RemoteTraceback)
    assert "KeyError: 'missing'" in rebuilt.__cause__.tb
    # Through pickle (as a result from a worker) it arrives rebuilt.
    unpickled = pickle.loads(pickle.dumps(_ExceptionWithTraceback(KeyError("again"))))
    assert isinstance(unpickled, KeyError)
    assert isinstance(unpickled.__cause__, _RemoteTraceback)


def test_falsey_exception_is_still_an_exception(executor):
    class Falsey(Exception):
        def __bool__(self):
            return False

    def raise_falsey():
        raise Falsey()

    # The manager tests identity, not truth (the stdlib Future.result() itself
    # tests truth, so look at exception()).
    assert isinstance(executor.submit(raise_falsey).exception(timeout=60), Falsey)


def test_submit_from_done_callback(executor):
    results = []
    done = threading.Event()

    def callback(future):
        second = executor.submit(add, future.result(), 1)
        second.add_done_callback(lambda f: (results.append(f.result()), done.set()))

    executor.submit(add, 1, 1).add_done_callback(callback)
    assert done.wait(60)
    assert results == [3]


def test_many_small_tasks_and_as_completed(executor):
    futures = [executor.submit(square, i) for i in range(500)]
    assert sorted(f.result() for f in as_completed(futures, timeout=60)) == sorted(
        i * i for i in range(500)
    )
    done, not_done = wait(futures, timeout=60)
    assert not not_done


def test_completed_task_references_are_released(executor):
    class Payload:
        pass

    payload = Payload()
    ref = weakref.ref(payload)
    result = executor.submit(id, payload)
    result.result(timeout=60)
    del payload
    gc.collect()
    assert ref() is None
    assert executor._pending_work_items == {}


# --------------------------------------------------------------------- map
def test_map_order_chunks_and_kwargs(executor):
    assert list(executor.map(square, range(20))) == [i * i for i in range(20)]
    assert list(executor.map(add, range(10), range(10), chunksize=3)) == [
        2 * i for i in range(10)
    ]
    # Unknown keywords are ignored; no iterable means no task.
    assert list(executor.map(square, delay=0.1)) == []
    with pytest.raises(ValueError, match=r"^chunksize must be >= 1\.$"):
        executor.map(square, range(3), chunksize=0)


def test_map_goes_through_submit_with_process_chunk(executor):
    calls = []
    original = type(executor).submit

    class Spy(ProcessPoolExecutor):
        def submit(self, fn, *args, **kwargs):
            calls.append(fn)
            return original(self, fn, *args, **kwargs)

    spy = Spy.__new__(Spy)
    spy.__dict__ = executor.__dict__
    assert list(spy.map(square, range(4), chunksize=2)) == [0, 1, 4, 9]
    assert calls == [pe._process_chunk, pe._process_chunk]


def test_map_input_error_surfaces_from_map_itself(executor):
    def bad_iterable():
        yield 1
        raise ZeroDivisionError("bad input")

    with pytest.raises(ZeroDivisionError):
        executor.map(square, bad_iterable())


def test_map_task_error_surfaces_when_reached(executor):
    results = executor.map(raise_value_error_if_odd, range(4))
    assert next(results) == 0
    with pytest.raises(ValueError, match="odd 1"):
        next(results)


def raise_value_error_if_odd(x):
    if x % 2:
        raise ValueError(f"odd {x}")
    return x


def test_map_timeout_cancels_the_rest():
    executor = ProcessPoolExecutor(max_workers=1)
    try:
        executor.submit(square, 1).result(timeout=60)  # worker started
        results = executor.map(
            sleep_then_return, [0, 60, 60, 60], [0, 1, 2, 3], timeout=2
        )
        assert next(results) == 0
        with pytest.raises(FuturesTimeoutError):
            next(results)
    finally:
        executor.shutdown(wait=True, kill_workers=True)


def test_map_iterator_does_not_keep_the_executor_alive():
    executor = ProcessPoolExecutor(max_workers=1)
    flags = executor._flags
    ref = weakref.ref(executor)
    results = executor.map(square, range(10))
    del executor
    gc.collect()
    assert ref() is None
    assert list(results) == [i * i for i in range(10)]
    assert flags.shutdown is True and flags.broken is None


# ---------------------------------------------------------------- shutdown
def test_submit_after_shutdown():
    executor = ProcessPoolExecutor(max_workers=1)
    executor.submit(square, 1).result()
    executor.shutdown()
    executor.shutdown()  # idempotent
    with pytest.raises(ShutdownExecutorError) as info:
        executor.submit(square, 2)
    assert str(info.value) == "cannot schedule new futures after shutdown"
    assert executor._executor_manager_thread is None
    assert executor._processes_management_lock is None


def test_shutdown_without_wait_completes_queued_jobs():
    executor = ProcessPoolExecutor(max_workers=1)
    futures = [executor.submit(sleep_then_return, 0.01, i) for i in range(10)]
    manager = executor._executor_manager_thread
    executor.shutdown(wait=False)
    assert [f.result(timeout=60) for f in futures] == list(range(10))
    manager.join(timeout=60)
    assert not manager.is_alive()


def test_shutdown_kill_workers_fails_unfinished_jobs():
    executor = ProcessPoolExecutor(max_workers=2)
    running = [executor.submit(sleep_then_return, 60, i) for i in range(6)]
    executor.submit(square, 1)
    processes = list(executor._processes.values())
    start = time.monotonic()
    executor.shutdown(wait=True, kill_workers=True)
    assert time.monotonic() - start < 30
    for future in running:
        with pytest.raises(ShutdownExecutorError) as info:
            future.result(timeout=0)
        assert str(info.value) == (
            "The Executor was shutdown with `kill_workers=True` before this job could "
            "complete."
        )
    assert not any(p.is_alive() for p in processes)


def test_context_manager_and_cancelled_futures_never_hang():
    with ProcessPoolExecutor(max_workers=1) as executor:
        futures = [executor.submit(square, i) for i in range(200)]
        cancelled = executor.submit(square, 3)
        cancelled.cancel()
    assert [f.result() for f in futures] == [i * i for i in range(200)]
    assert executor._flags.shutdown


def test_garbage_collected_executor_finishes_its_jobs():
    executor = ProcessPoolExecutor(max_workers=1)
    futures = [executor.submit(sleep_then_return, 0.01, i) for i in range(5)]
    flags = executor._flags
    processes = list(executor._processes.values())
    manager = executor._executor_manager_thread
    ref = weakref.ref(executor)
    del executor
    gc.collect()
    assert ref() is None
    assert [f.result(timeout=60) for f in futures] == list(range(5))
    manager.join(timeout=60)
    assert flags.shutdown and flags.broken is None
    for p in processes:
        p.join(timeout=30)
        assert not p.is_alive()


# ------------------------------------------------------- interpreter exit
@pytest.mark.parametrize("shutdown_call", ["", "executor.shutdown(wait=False)"])
def test_interpreter_exit_completes_queued_jobs(tmp_path, shutdown_call):
    script = tmp_path / "exit_script.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import os, time
            from loky import ProcessPoolExecutor

            def touch(path):
                time.sleep(0.05)
                with open(path, "w") as f:
                    f.write("done")

            if __name__ == "__main__":
                executor = ProcessPoolExecutor(max_workers=2)
                for i in range(6):
                    executor.submit(touch, os.path.join({str(tmp_path)!r}, f"out{{i}}"))
                {shutdown_call}
            """
        )
    )
    proc = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0
    assert proc.stderr == ""
    for i in range(6):
        assert (tmp_path / f"out{i}").read_text() == "done"


def test_submit_during_interpreter_exit(monkeypatch):
    executor = ProcessPoolExecutor(max_workers=1)
    try:
        monkeypatch.setattr(pe, "_global_shutdown", True)
        with pytest.raises(RuntimeError) as info:
            executor.submit(square, 1)
        assert (
            str(info.value) == "cannot schedule new futures after interpreter shutdown"
        )
    finally:
        monkeypatch.setattr(pe, "_global_shutdown", False)
        executor.shutdown()


# -------------------------------------------------------- other contexts
def test_stdlib_spawn_context():
    import multiprocessing

    executor = ProcessPoolExecutor(
        max_workers=1, context=multiprocessing.get_context("spawn")
    )
    try:
        assert executor.submit(square, 5).result(timeout=60) == 25
        assert list(executor.map(square, range(3))) == [0, 1, 4]
    finally:
        executor.shutdown(wait=True)


# -------------------------------------------------------- pickle-check hook
class FakeChecker:
    """Stands in for loky_check.runtime.SubmitChecker."""

    def __init__(self, behaviour):
        self.behaviour = behaviour
        self.calls = []

    def check_submit(self, fn, args, kwargs):
        self.calls.append((fn, args, kwargs))
        if self.behaviour == "raise":
            raise pickle.PicklingError("rejected by the check")
        if self.behaviour == "payload":
            return None, None, None, bytes(dumps((fn, args, kwargs)))
        if self.behaviour == "bad-payload":
            return fn, args, kwargs, b"not a pickle"
        return fn, args, kwargs, None


def test_pickle_check_mode_validation(monkeypatch):
    monkeypatch.delenv("LOKY_PICKLE_CHECK", raising=False)
    assert pe._resolve_pickle_check(None) == "off"
    for mode in pe.PICKLE_CHECK_MODES:
        assert pe._resolve_pickle_check(mode) == mode
    with pytest.raises(ValueError) as info:
        pe._resolve_pickle_check("loud")
    assert str(info.value) == (
        "pickle_check must be one of 'off', 'warn', 'error', 'wrap' or None, got 'loud'"
    )
    with pytest.raises(ValueError):
        ProcessPoolExecutor(max_workers=1, pickle_check="loud")
    monkeypatch.setenv("LOKY_PICKLE_CHECK", "nope")
    with pytest.raises(ValueError) as info:
        pe._resolve_pickle_check(None)
    assert str(info.value) == (
        "LOKY_PICKLE_CHECK must be one of 'off', 'warn', 'error', 'wrap', got 'nope'"
    )
    monkeypatch.setenv("LOKY_PICKLE_CHECK", "")
    assert pe._resolve_pickle_check(None) == "off"


def test_pickle_check_on_builds_the_checker_lazily(monkeypatch):
    made = []

    def fake_make(mode, executor):
        made.append((mode, executor._job_reducers))
        return FakeChecker("pass")

    monkeypatch.setattr(pe, "_make_pickle_checker", fake_make)
    reducers = {}
    executor = ProcessPoolExecutor(
        max_workers=1, job_reducers=reducers, pickle_check="warn"
    )
    try:
        assert executor._pickle_check == "warn"
        assert made == [("warn", reducers)]
        assert executor.submit(square, 3).result(timeout=60) == 9
        assert executor._pickle_checker.calls == [(square, (3,), {})]
    finally:
        executor.shutdown()


def test_pickle_check_hook_payload_and_errors():
    executor = ProcessPoolExecutor(max_workers=1)
    try:
        executor._pickle_checker = FakeChecker("payload")
        assert executor.submit(add, 2, y=3).result(timeout=60) == 5
        assert list(executor.map(square, range(3))) == [0, 1, 4]
        assert [c[0] for c in executor._pickle_checker.calls[1:]] == [
            pe._process_chunk
        ] * 3

        executor._pickle_checker = FakeChecker("raise")
        with pytest.raises(pickle.PicklingError, match="rejected by the check"):
            executor.submit(square, 3)
        assert executor._pending_work_items == {}

        executor._pickle_checker = FakeChecker("bad-payload")
        with pytest.raises(pickle.UnpicklingError):
            executor.submit(square, 3).result(timeout=60)

        # The pool stayed healthy through all of it.
        executor._pickle_checker = None
        assert executor.submit(square, 4).result(timeout=60) == 16
        assert executor._flags.broken is None
    finally:
        executor.shutdown(wait=True, kill_workers=True)


def test_call_and_work_items_carry_the_payload():
    item = _WorkItem(None, square, (1,), {})
    assert item.payload is None
    call = _CallItem(0, None, None, None, payload=bytes(dumps((square, (6,), {}))))
    assert call.pickle_check is None
    assert call() == 36
    restored = pickle.loads(
        pickle.dumps(_CallItem(1, square, (2,), {}, pickle_check="warn"))
    )
    assert (restored.work_id, restored.pickle_check, restored()) == (1, "warn", 4)


def test_hook_is_not_called_when_off(monkeypatch):
    # With checks off, loky_check is never imported.
    code = textwrap.dedent(
        """
        import sys
        from loky import ProcessPoolExecutor
        def f(x):
            return x
        if __name__ == "__main__":
            with ProcessPoolExecutor(max_workers=1) as e:
                assert e.submit(f, 1).result() == 1
            assert not any(m.startswith("loky_check") for m in sys.modules), "imported"
            print("ok")
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "LOKY_PICKLE_CHECK"}
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert proc.stdout == "ok\n", proc.stderr


class CountingSimpleQueue(SimpleQueue):
    """A result queue whose own put() must be honoured by the workers."""

    def put(self, obj):
        from loky.process_executor import _ResultItem

        if isinstance(obj, _ResultItem):
            obj = _ResultItem(obj.work_id, obj.exception, ("via subclass", obj.result))
        super().put(obj)


def test_result_queue_replaced_before_the_first_submit():
    executor = ProcessPoolExecutor(max_workers=1)
    try:
        executor._result_queue.close()
        executor._result_queue = CountingSimpleQueue(ctx=executor._context)
        assert executor.submit(square, 3).result(timeout=60) == ("via subclass", 9)
    finally:
        executor.shutdown(wait=True)


class Tagged:
    def __init__(self, value):
        self.value = value


def _rebuild_tagged_as_tuple(value):
    return ("reduced in the worker", value)


def _reduce_tagged(obj):
    return _rebuild_tagged_as_tuple, (obj.value,)


def register_then_return_tagged(value):
    from loky.backend.reduction import register

    register(Tagged, _reduce_tagged)
    return Tagged(value)


def test_reducers_registered_in_a_worker_apply_to_its_results():
    with ProcessPoolExecutor(max_workers=1) as executor:
        # The worker has sent a result already (its pickler exists).
        assert executor.submit(square, 2).result(timeout=60) == 4
        result = executor.submit(register_then_return_tagged, 3).result(timeout=60)
    assert result == ("reduced in the worker", 3)


def exit_after(delay):
    time.sleep(delay)
    os._exit(7)


def test_dropped_executor_still_reports_a_later_worker_crash():
    executor = ProcessPoolExecutor(max_workers=1)
    executor.submit(square, 1).result(timeout=60)
    flags = executor._flags
    processes = list(executor._processes.values())
    future = executor.submit(exit_after, 0.2)
    del executor
    gc.collect()
    with pytest.raises(pe.TerminatedWorkerError, match=r"EXIT\(7\)"):
        future.result(timeout=60)
    assert isinstance(flags.broken, pe.TerminatedWorkerError)
    for p in processes:
        p.join(timeout=30)
        assert not p.is_alive()
    # The error's traceback references this frame: break the cycle so that
    # the workers' semaphores are released now rather than at some later gc.
    del future, flags, processes, p


def test_context_may_be_given_by_name():
    with ProcessPoolExecutor(max_workers=1, context="loky_init_main") as executor:
        assert executor._context.get_start_method() == "loky_init_main"
        assert executor.submit(abs, -2).result(timeout=60) == 2
    with pytest.raises(ValueError, match="Unknown context 'threads'"):
        ProcessPoolExecutor(max_workers=1, context="threads")


class Relabelled:
    pass


def register_tag_and_return(tag):
    """Runs in a worker: (re)register a reducer for Relabelled, return an instance."""
    import copyreg

    copyreg.pickle(Relabelled, lambda obj: (str, (tag,)))
    return Relabelled()


def test_a_reducer_replaced_in_a_worker_is_used_for_the_next_result():
    import copyreg

    try:
        with ProcessPoolExecutor(max_workers=1) as executor:
            first = executor.submit(register_tag_and_return, "one").result(timeout=60)
            second = executor.submit(register_tag_and_return, "two").result(timeout=60)
    finally:
        copyreg.dispatch_table.pop(Relabelled, None)
    assert (first, second) == ("one", "two")
