"""get_reusable_executor: per-thread reuse, the reuse key, resizing, replacement,
and the joblib-facing subclass contract (``_submit_resize_lock``)."""

from __future__ import annotations

import os
import threading
import time
import warnings

import pytest

from loky import get_reusable_executor
from loky.backend import get_context
from loky.backend.context import cpu_count
from loky.process_executor import EXTRA_QUEUED_CALLS, ShutdownExecutorError
from loky.reusable_executor import _ReusablePoolExecutor


def get_pid(_=None):
    return os.getpid()


def square(x):
    return x * x


def sleep_then_pid(delay):
    time.sleep(delay)
    return os.getpid()


def test_same_arguments_return_the_same_executor(fresh_storage):
    first = get_reusable_executor(max_workers=2)
    assert get_reusable_executor(max_workers=2) is first
    assert first.submit(square, 3).result(timeout=60) == 9
    assert get_reusable_executor(max_workers=2) is first
    assert isinstance(first, _ReusablePoolExecutor)
    assert first._timeout == 10  # the default idle timeout
    assert first.queue_size == 2 * max(cpu_count(), 2) + EXTRA_QUEUED_CALLS


def test_executor_ids_are_unique_and_increasing(fresh_storage):
    first = get_reusable_executor(max_workers=1)
    second = get_reusable_executor(max_workers=1, reuse=False)
    assert second is not first
    assert second.executor_id > first.executor_id
    assert first._flags.shutdown  # the replaced one was shut down


@pytest.mark.parametrize(
    "changed",
    [
        {"timeout": 5},
        {"initializer": lambda: None},
        {"initargs": (1,)},
        {"env": {"A": "1"}},
        {"job_reducers": {}},
        {"context": "loky"},
    ],
)
def test_changed_arguments_give_a_new_executor(fresh_storage, changed):
    first = get_reusable_executor(max_workers=1)
    kwargs = dict(changed)
    if kwargs.get("initargs"):
        kwargs["initializer"] = print
    second = get_reusable_executor(max_workers=1, **kwargs)
    assert second is not first
    assert first._flags.shutdown


def test_reuse_true_keeps_the_original_settings(fresh_storage):
    first = get_reusable_executor(max_workers=1, timeout=7)
    again = get_reusable_executor(timeout=3, reuse=True)
    assert again is first
    assert again._timeout == 7 and again._max_workers == 1
    # A later "auto" call compares with the original arguments.
    assert get_reusable_executor(max_workers=1, timeout=7) is first


def test_argument_errors(fresh_storage):
    with pytest.raises(ValueError) as info:
        get_reusable_executor(max_workers=0)
    assert str(info.value) == "max_workers must be greater than 0, got 0."
    with pytest.warns(UserWarning, match="`fork` start method should not be used"):
        with pytest.raises(ValueError) as info:
            get_reusable_executor(max_workers=1, context="fork")
    assert str(info.value) == "Cannot use reusable executor with the 'fork' context"
    with pytest.raises(ValueError, match="Unknown context 'nope'"):
        get_reusable_executor(max_workers=1, context="nope")
    with pytest.raises(ValueError, match="pickle_check must be one of"):
        get_reusable_executor(max_workers=1, pickle_check="sometimes")


def test_pickle_check_is_part_of_the_reuse_key(fresh_storage, monkeypatch):
    from loky import process_executor as pe

    class NullChecker:
        def check_submit(self, fn, args, kwargs):
            return fn, args, kwargs, None

    monkeypatch.setattr(
        pe, "_make_pickle_checker", lambda mode, executor: NullChecker()
    )
    off = get_reusable_executor(max_workers=1)
    warn = get_reusable_executor(max_workers=1, pickle_check="warn")
    assert warn is not off and warn._pickle_check == "warn"
    assert get_reusable_executor(max_workers=1, pickle_check="warn") is warn
    assert warn.submit(square, 2).result(timeout=60) == 4


def test_shut_down_executor_is_replaced(fresh_storage):
    first = get_reusable_executor(max_workers=1)
    first.shutdown()
    second = get_reusable_executor(max_workers=1)
    assert second is not first
    assert second.submit(square, 4).result(timeout=60) == 16


def test_kill_workers_on_replacement_fails_running_jobs(fresh_storage):
    first = get_reusable_executor(max_workers=1)
    running = first.submit(sleep_then_pid, 60)
    second = get_reusable_executor(max_workers=1, timeout=3, kill_workers=True)
    assert second is not first
    with pytest.raises(ShutdownExecutorError):
        running.result(timeout=30)


def test_resize_keeps_surviving_workers(fresh_storage):
    executor = get_reusable_executor(max_workers=2)
    executor.submit(square, 1).result(timeout=60)
    pids = set(executor._processes)
    assert len(pids) == 2
    # Shrink: one of the old workers remains.
    assert get_reusable_executor(max_workers=1) is executor
    assert executor._max_workers == 1
    remaining = set(executor._processes)
    assert len(remaining) == 1 and remaining <= pids
    assert executor.submit(get_pid).result(timeout=60) in remaining
    # Grow: the survivor is kept, one new worker joins.
    assert get_reusable_executor(max_workers=2) is executor
    assert remaining <= set(executor._processes)
    assert len(executor._processes) == 2
    # Same size: nothing changes.
    before = set(executor._processes)
    assert get_reusable_executor(max_workers=2) is executor
    assert set(executor._processes) == before


def test_resize_waits_for_running_jobs_with_one_warning(fresh_storage):
    executor = get_reusable_executor(max_workers=2)
    futures = [executor.submit(sleep_then_pid, 0.2) for _ in range(4)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert get_reusable_executor(max_workers=1) is executor
    messages = [str(w.message) for w in caught]
    assert messages == [
        "Trying to resize an executor with running jobs: waiting for jobs completion "
        "before resizing."
    ]
    assert all(f.done() for f in futures)
    assert len(executor._processes) == 1


def test_resize_before_the_first_submit_only_records_the_size(fresh_storage):
    executor = get_reusable_executor(max_workers=1)
    assert get_reusable_executor(max_workers=2) is executor
    assert executor._processes == {} and executor._max_workers == 2
    with pytest.raises(ValueError, match="Trying to resize with max_workers=None"):
        executor._resize(None)


@pytest.mark.filterwarnings("ignore:Trying to resize an executor with running jobs")
def test_resize_sequence_with_pending_maps_never_deadlocks(fresh_storage):
    results = []
    for n in [1, 2, 1, 2, 2, 1]:
        executor = get_reusable_executor(max_workers=n)
        results.append(executor.map(square, range(20)))
    for result in results:
        assert list(result) == [i * i for i in range(20)]


def test_too_small_queue_gives_a_new_executor(fresh_storage):
    executor = get_reusable_executor(max_workers=1)
    bigger = executor.queue_size + 1
    replacement = get_reusable_executor(max_workers=bigger)
    assert replacement is not executor
    assert replacement._max_workers == bigger


def test_each_thread_owns_its_executor(fresh_storage):
    mine = get_reusable_executor(max_workers=1)
    box = {}

    def other_thread():
        theirs = get_reusable_executor(max_workers=2, timeout=3)
        box["executor"] = theirs
        box["value"] = theirs.submit(square, 5).result(timeout=60)

    thread = threading.Thread(target=other_thread)
    thread.start()
    thread.join(90)
    try:
        assert box["value"] == 25
        assert box["executor"] is not mine
        # Asking for other arguments elsewhere did not shut ours down.
        assert not mine._flags.shutdown
        assert get_reusable_executor(max_workers=1) is mine
    finally:
        box["executor"].shutdown(wait=True, kill_workers=True)


def test_concurrent_calls_from_many_threads(fresh_storage):
    errors = []
    made = []

    def worker(n):
        try:
            executor = get_reusable_executor(max_workers=n, timeout=2)
            made.append(executor)
            assert executor.submit(square, n).result(timeout=60) == n * n
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(1 + i % 2,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    try:
        assert errors == []
        assert len({id(e) for e in made}) == 4
    finally:
        for executor in made:
            executor.shutdown(wait=True, kill_workers=True)


def test_string_context_and_explicit_context(fresh_storage):
    executor = get_reusable_executor(max_workers=1, context="loky")
    assert executor._context is get_context("loky")
    assert executor.submit(square, 6).result(timeout=60) == 36


# ------------------------------------------------ joblib-style subclass
class MemmappingLikeExecutor(_ReusablePoolExecutor):
    """What joblib does with the class (see the spec's downstream section)."""

    @classmethod
    def get_memmapping_executor(cls, n_jobs, **kwargs):
        executor, is_reused = super().get_reusable_executor(
            n_jobs,
            job_reducers={},
            result_reducers={},
            reuse=kwargs.get("reuse", "auto"),
            timeout=3,
            initializer=None,
            initargs=(),
            env={"SOME_THREADS": "1"},
        )
        if not is_reused:
            executor._temp_folder_manager = "manager"
        return executor, is_reused

    def map(self, f, *args):
        return super().map(f, *args)

    def terminate(self, kill_workers=False):
        self.shutdown(kill_workers=kill_workers)
        with self._submit_resize_lock:
            self.cleaned = True


def test_subclass_gets_its_own_instances_and_reuse_flag(fresh_storage):
    executor, is_reused = MemmappingLikeExecutor.get_memmapping_executor(1)
    assert isinstance(executor, MemmappingLikeExecutor)
    assert is_reused is False and executor._temp_folder_manager == "manager"
    again, is_reused = MemmappingLikeExecutor.get_memmapping_executor(1)
    assert again is executor and is_reused is True
    assert list(executor.map(square, [1, 2])) == [1, 4]
    executor.terminate(kill_workers=True)
    assert executor.cleaned


def test_submit_resize_lock_is_reentrant_and_usable_after_shutdown(fresh_storage):
    executor = get_reusable_executor(max_workers=1)
    lock = executor._submit_resize_lock
    with lock:
        with lock:
            executor._resize(2)  # _resize takes it too: re-entrant
    assert executor._max_workers == 2
    executor.shutdown(wait=True)
    with executor._submit_resize_lock:
        pass
