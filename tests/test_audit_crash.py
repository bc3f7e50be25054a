"""Audit regressions: crash matrix, exit paths and done-callbacks (spec 2, 4.5, 4.6, 17, 18)."""

from __future__ import annotations

import threading

import pytest

from loky.process_executor import ProcessPoolExecutor


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
