"""Conformance (black-box): the reusable executor against loky_api.md §6 and
the joblib patterns of §20."""

from __future__ import annotations

import os
import threading
import warnings

import pytest

from loky import ProcessPoolExecutor, get_reusable_executor
from loky import reusable_executor as re_mod
from loky.backend import get_context
from loky.backend.context import cpu_count
from loky.process_executor import EXTRA_QUEUED_CALLS, ShutdownExecutorError
from loky.reusable_executor import _ReusablePoolExecutor


def square(x):
    return x * x


def get_pid(_=None):
    return os.getpid()


_RENDEZVOUS = None


def _store_rendezvous(arrived, go):
    global _RENDEZVOUS
    _RENDEZVOUS = (arrived, go)


def meet(_=None):
    # Semaphores, not an Event: a Condition's notify waits for its sleepers,
    # which hangs if one of them was killed.
    arrived, go = _RENDEZVOUS
    arrived.release()
    assert go.acquire(timeout=60)
    return os.getpid()


pytestmark = pytest.mark.usefixtures("fresh_storage")


def test_constructor_positional_order_and_executor_id():
    executor = _ReusablePoolExecutor(1, None, 4, 17)
    try:
        assert executor.executor_id == 17
        assert executor._timeout == 4
        assert executor._max_workers == 1
        assert executor.queue_size == 2 * max(cpu_count(), 1) + EXTRA_QUEUED_CALLS
        assert executor._call_queue._maxsize == executor.queue_size
        assert type(executor._submit_resize_lock) is type(threading.RLock())
    finally:
        executor.shutdown()


def test_stored_kwargs_are_the_reuse_key(fresh_storage):
    executor = get_reusable_executor(max_workers=1, timeout=4)
    assert fresh_storage.executor is executor
    assert fresh_storage.executor_kwargs == dict(
        context=None,
        timeout=4,
        job_reducers=None,
        result_reducers=None,
        initializer=None,
        initargs=(),
        env=None,
    )


def test_classmethod_returns_instance_and_reuse_flag():
    executor, is_reused = _ReusablePoolExecutor.get_reusable_executor(max_workers=1)
    assert type(executor) is _ReusablePoolExecutor and is_reused is False
    again, is_reused = _ReusablePoolExecutor.get_reusable_executor(max_workers=1)
    assert again is executor and is_reused is True
    assert get_reusable_executor(max_workers=1) is executor
    other, is_reused = _ReusablePoolExecutor.get_reusable_executor(
        max_workers=1, timeout=3
    )
    assert other is not executor and is_reused is False
    assert executor._flags.shutdown


class JoblibLikeExecutor(_ReusablePoolExecutor):
    @classmethod
    def get_executor(cls, n_jobs, reuse="auto", **kwargs):
        executor, is_reused = super().get_reusable_executor(
            n_jobs,
            job_reducers=None,
            result_reducers=None,
            reuse=reuse,
            timeout=kwargs.get("timeout", 300),
            initializer=None,
            initargs=(),
            env={"OMP_NUM_THREADS": "1"},
        )
        if not is_reused:
            executor._temp_folder_manager = object()
        return executor, is_reused


def test_subclass_replacement_is_an_instance_of_the_subclass():
    executor, is_reused = JoblibLikeExecutor.get_executor(1)
    assert isinstance(executor, JoblibLikeExecutor) and not is_reused
    manager = executor._temp_folder_manager
    same, is_reused = JoblibLikeExecutor.get_executor(1, reuse=True)
    assert same is executor and is_reused and same._temp_folder_manager is manager
    assert same.submit(square, 3).result(timeout=60) == 9
    replaced, is_reused = JoblibLikeExecutor.get_executor(1, timeout=5)
    assert isinstance(replaced, JoblibLikeExecutor)
    assert replaced is not executor and not is_reused
    assert replaced._temp_folder_manager is not manager
    assert replaced.submit(get_pid).result(timeout=60) in replaced._processes


def test_reuse_true_and_max_workers_none_keep_the_stored_size():
    executor = get_reusable_executor(max_workers=1, timeout=6)
    assert get_reusable_executor(reuse=True) is executor
    assert executor._max_workers == 1
    # reuse=True resizes but keeps the stored kwargs (and the old timeout)
    assert get_reusable_executor(max_workers=2, timeout=99, reuse=True) is executor
    assert executor._max_workers == 2 and executor._timeout == 6
    assert re_mod._executor_storage.executor_kwargs["timeout"] == 6
    # "auto" with None: cpu_count() and the default timeout, hence a new one
    fresh = get_reusable_executor()
    assert fresh is not executor and fresh._max_workers == cpu_count()


def test_reuse_false_always_replaces():
    executor = get_reusable_executor(max_workers=1)
    again = get_reusable_executor(max_workers=1, reuse=False)
    assert again is not executor and executor._flags.shutdown
    assert again.submit(square, 5).result(timeout=60) == 25


def test_context_none_and_explicit_loky_context_differ():
    executor = get_reusable_executor(max_workers=1)
    explicit = get_reusable_executor(max_workers=1, context=get_context("loky"))
    assert explicit is not executor
    assert get_reusable_executor(max_workers=1, context=get_context("loky")) is explicit
    # a string is resolved before comparing
    assert get_reusable_executor(max_workers=1, context="loky") is explicit


def test_argument_errors_come_in_order():
    with pytest.raises(ValueError) as info:
        get_reusable_executor(max_workers=-1, context="nope")
    assert info.value.args == ("max_workers must be greater than 0, got -1.",)
    with pytest.raises(ValueError) as info:
        get_reusable_executor(max_workers=1, context="nope")
    assert str(info.value).startswith("Unknown context 'nope'. Value should be in [")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(ValueError) as info:
            get_reusable_executor(
                max_workers=1,
                context=get_context("fork") if os.name == "posix" else "fork",
            )
    assert info.value.args == ("Cannot use reusable executor with the 'fork' context",)
    assert any("`fork` start method" in str(w.message) for w in caught)
    assert re_mod._executor_storage.executor is None


def test_stdlib_spawn_context_by_name():
    executor = get_reusable_executor(max_workers=1, context="spawn")
    assert executor._context is get_context("spawn")
    assert executor.submit(square, 7).result(timeout=60) == 49


def test_more_workers_than_cpus_are_all_busy_at_once():
    n_workers = cpu_count() + 1
    ctx = get_context("loky")
    arrived, go = ctx.Semaphore(0), ctx.Semaphore(0)
    executor = get_reusable_executor(
        max_workers=n_workers,
        initializer=_store_rendezvous,
        initargs=(arrived, go),
    )
    assert executor.queue_size == 2 * n_workers + EXTRA_QUEUED_CALLS
    futures = [executor.submit(meet) for _ in range(n_workers)]
    try:
        for _ in range(n_workers):
            assert arrived.acquire(timeout=60)
    finally:
        for _ in range(n_workers):
            go.release()
    assert len({f.result(timeout=60) for f in futures}) == n_workers


def test_resize_keeps_pids_and_same_size_is_a_no_op():
    executor = get_reusable_executor(max_workers=2)
    list(executor.map(square, range(4)))
    pids = set(executor._processes)
    executor._resize(2)
    assert set(executor._processes) == pids
    executor._resize(1)
    assert len(executor._processes) == 1 and set(executor._processes) <= pids
    survivor = set(executor._processes)
    executor._resize(3)
    assert survivor <= set(executor._processes) and len(executor._processes) == 3
    assert all(p.is_alive() for p in executor._processes.values())
    assert set(executor.map(get_pid, range(3))) <= set(executor._processes)


def test_submit_resize_lock_is_per_executor_and_never_deadlocks_with_shutdown():
    first = get_reusable_executor(max_workers=1)
    second = get_reusable_executor(max_workers=1, reuse=False)
    assert first._submit_resize_lock is not second._submit_resize_lock
    lock = second._submit_resize_lock
    second.submit(square, 2).result(timeout=60)
    with lock:
        # joblib's terminate: shutdown and clean-up under the lock
        second.shutdown(wait=True, kill_workers=True)
        with lock:
            pass
    acquired = []
    thread = threading.Thread(target=lambda: acquired.append(lock.acquire(timeout=30)))
    thread.start()
    thread.join(60)
    assert acquired == [True]


def test_replacement_shuts_the_old_executor_down_killing_if_asked():
    ctx = get_context("loky")
    arrived, go = ctx.Semaphore(0), ctx.Semaphore(0)
    executor = get_reusable_executor(
        max_workers=1, initializer=_store_rendezvous, initargs=(arrived, go)
    )
    running = executor.submit(meet)
    try:
        assert arrived.acquire(timeout=60)
        replacement = get_reusable_executor(max_workers=1, kill_workers=True)
    finally:
        go.release()
    assert replacement is not executor
    with pytest.raises(ShutdownExecutorError):
        running.result(timeout=60)
    assert executor._flags.shutdown and executor._call_queue is None
    assert replacement.submit(square, 3).result(timeout=60) == 9


def test_executor_made_by_the_plain_class_is_not_stored():
    plain = ProcessPoolExecutor(max_workers=1)
    try:
        assert re_mod._executor_storage.executor is None
        assert get_reusable_executor(max_workers=1) is not plain
    finally:
        plain.shutdown()


def test_reusable_instance_internals():
    executor = get_reusable_executor(max_workers=1)
    for name in ("_resize", "_wait_job_completion", "_adjust_process_count"):
        assert callable(getattr(executor, name))
    assert isinstance(executor.queue_size, int) and isinstance(
        executor.executor_id, int
    )
    # no job: no warning, returns at once
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        executor._wait_job_completion()
