"""Audit regressions for the executor (spec loky_api.md sections 2-5, 17, 18)."""

from __future__ import annotations

import gc
import os
import warnings

import pytest
from test_worker_lifecycle import get_pid, leak, set_memory_check_delay

from loky import ProcessPoolExecutor
from loky import process_executor as pe


# ------------------------------------- recycling after shutdown / collection
@pytest.mark.skipif(not pe._USE_PSUTIL, reason="recycling needs psutil")
@pytest.mark.parametrize("how", ["shutdown_nowait", "collected"])
def test_recycled_worker_is_replaced_after_shutdown_or_collection(how):
    # Queued jobs complete after shutdown(wait=False) or when the executor is
    # dropped (spec 3.4): a worker recycled by the memory guard meanwhile must
    # be replaced, else the remaining work (and interpreter exit) waits for ever.
    executor = ProcessPoolExecutor(
        max_workers=1, env={"LOKY_MAX_MEMORY_LEAK_SIZE": "5e6"}, timeout=None
    )
    flags = executor._flags
    processes = executor._processes
    try:
        first_pid = executor.submit(set_memory_check_delay, 0).result(timeout=60)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            futures = [executor.submit(leak, 20_000_000)]
            futures += [executor.submit(get_pid) for _ in range(3)]
            manager = executor._executor_manager_thread
            if how == "shutdown_nowait":
                executor.shutdown(wait=False)
            else:
                del executor
                gc.collect()
            pids = {f.result(timeout=60) for f in futures}
            manager.join(timeout=60)
            assert not manager.is_alive()
        assert first_pid in pids and len(pids) == 2
        assert flags.broken is None and flags.shutdown
        assert not processes
        assert any("memory leak" in str(w.message) for w in caught)
    finally:
        if how == "shutdown_nowait":
            executor.shutdown(wait=True, kill_workers=True)
        for process in list(processes.values()):
            process.kill()
            process.join()


# ------------------------------------------------- results are _ResultItems
class _Unpicklable:
    def __reduce__(self):
        raise ValueError("cannot pickle me")


def test_sendback_result_puts_result_items():
    # Spec 5.1: a worker sends _ResultItem(work_id, ...); when the result
    # cannot be sent, _ResultItem(work_id, exception=_ExceptionWithTraceback).
    from loky.backend.queues import SimpleQueue

    result_queue = SimpleQueue()
    try:
        pe._sendback_result(result_queue, 3, result=[1, 2])
        pe._sendback_result(result_queue, 4, result=_Unpicklable())
        pe._sendback_result(
            result_queue, 5, exception=pe._ExceptionWithTraceback(KeyError("k"))
        )
        first, second, third = (result_queue.get() for _ in range(3))
    finally:
        result_queue.close()
    assert isinstance(first, pe._ResultItem)
    assert (first.work_id, first.exception, first.result) == (3, None, [1, 2])
    assert isinstance(second, pe._ResultItem)
    assert second.work_id == 4 and second.result is None
    assert isinstance(second.exception, ValueError)
    assert "cannot pickle me" in str(second.exception)
    assert isinstance(second.exception.__cause__, pe._RemoteTraceback)
    assert isinstance(third, pe._ResultItem) and third.work_id == 5
    assert isinstance(third.exception, KeyError)


def test_worker_loop_sends_result_items_then_its_pid():
    # Spec 5.1, run as a real process on queues we read ourselves.
    from loky.backend import get_context
    from loky.backend.queues import Queue, SimpleQueue

    ctx = get_context()
    call_queue = Queue(4, ctx=ctx)
    result_queue = SimpleQueue(ctx=ctx)
    management_lock = ctx.Lock()
    exit_lock = ctx.BoundedSemaphore(1)
    exit_lock.acquire()
    call_queue.put(pe._CallItem(7, divmod, (7, 2), {}))
    call_queue.put(pe._CallItem(8, divmod, (1, 0), {}))
    call_queue.put(None)
    args = (call_queue, result_queue, None, (), management_lock, None, exit_lock, 1)
    worker = ctx.Process(target=pe._process_worker, args=args)
    worker.start()
    try:
        ok, failed, pid = (result_queue.get() for _ in range(3))
        exit_lock.release()
        worker.join()
    finally:
        if worker.is_alive():
            worker.kill()
            worker.join()
        call_queue.close()
        call_queue.join_thread()
        result_queue.close()
    assert isinstance(ok, pe._ResultItem) and ok.work_id == 7
    assert ok.exception is None and ok.result == (3, 1)
    assert isinstance(failed, pe._ResultItem) and failed.work_id == 8
    assert isinstance(failed.exception, ZeroDivisionError)
    assert isinstance(failed.exception.__cause__, pe._RemoteTraceback)
    assert pid == worker.pid and type(pid) is int
    assert worker.exitcode == 0


# ------------------------------------------- state seen by the failed caller
def _exit_now(code):
    os._exit(code)


@pytest.mark.parametrize("n_workers", [1, 2])
def test_broken_executor_state_is_set_when_the_caller_sees_the_error(n_workers):
    # Spec 17: a row that breaks the executor leaves _flags.broken set, no
    # workers and no pending work; the caller sees that state as soon as its
    # future fails (the workers left _processes before the futures failed).
    executor = ProcessPoolExecutor(max_workers=n_workers)
    workers = []
    try:
        assert executor.submit(int).result(timeout=60) == 0
        workers = list(executor._processes.values())
        future = executor.submit(_exit_now, 3)
        with pytest.raises(pe.TerminatedWorkerError, match=r"EXIT\(3\)") as info:
            future.result(timeout=60)
        assert executor._flags.broken is info.value
        assert executor._processes == {}
        assert executor._pending_work_items == {}
        with pytest.raises(pe.TerminatedWorkerError) as again:
            executor.submit(int)
        assert again.value is info.value
    finally:
        executor.shutdown(wait=True)
    for worker in workers:
        worker.join()
        assert not worker.is_alive()


# ---------------------------------------------------- repeated shutdown calls
def _sleep_then_return(seconds):
    import time

    time.sleep(seconds)
    return "slept"


@pytest.mark.parametrize("order", ["kill_then_plain", "no_wait_then_kill"])
def test_a_later_shutdown_keeps_or_honours_kill_workers(order):
    # Spec 3.4: kill_workers=True fails unfinished futures and leaves no
    # worker. A kill asked for by shutdown(wait=False, kill_workers=True) is
    # not undone by a later plain shutdown (leaving a with block), and a
    # shutdown(wait=True, kill_workers=True) after shutdown(wait=False) still
    # kills and waits.
    executor = ProcessPoolExecutor(max_workers=1)
    try:
        future = executor.submit(_sleep_then_return, 30)
        workers = list(executor._processes.values())
        manager = executor._executor_manager_thread
        if order == "kill_then_plain":
            executor.shutdown(wait=False, kill_workers=True)
            executor.shutdown(wait=True)
        else:
            executor.shutdown(wait=False)
            executor.shutdown(wait=True, kill_workers=True)
        assert not manager.is_alive()  # the second call waited
        assert isinstance(future.exception(timeout=60), pe.ShutdownExecutorError)
        assert executor._flags.kill_workers
        assert executor._processes == {}
        for worker in workers:
            worker.join()
            assert worker.exitcode is not None and worker.exitcode < 0
    finally:
        executor.shutdown(wait=True, kill_workers=True)


def test_a_plain_shutdown_after_shutdown_no_wait_does_not_wait():
    # Like the stdlib (and loky): the second call does not wait for the jobs
    # the first one let run; a third one asking for the kill still gets it.
    executor = ProcessPoolExecutor(max_workers=1)
    try:
        future = executor.submit(_sleep_then_return, 30)
        workers = list(executor._processes.values())
        executor.shutdown(wait=False)
        executor.shutdown(wait=True)
        assert not future.done()
        executor.shutdown(wait=True, kill_workers=True)
        assert isinstance(future.exception(timeout=60), pe.ShutdownExecutorError)
        for worker in workers:
            worker.join()
            assert worker.exitcode is not None and worker.exitcode < 0
    finally:
        executor.shutdown(wait=True, kill_workers=True)
