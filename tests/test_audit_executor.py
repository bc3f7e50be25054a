"""Audit regressions for the executor (spec loky_api.md sections 2-5, 17, 18)."""

from __future__ import annotations

import gc
import os
import warnings

import pytest

from loky import ProcessPoolExecutor
from loky import process_executor as pe

_LEAKED = []


def get_pid(_=None):
    return os.getpid()


def set_memory_check_delay(delay):
    pe._MEMORY_LEAK_CHECK_DELAY = delay
    return os.getpid()


def leak(n_bytes):
    _LEAKED.append(bytearray(n_bytes))
    return os.getpid()


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
