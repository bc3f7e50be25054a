"""A per-thread executor singleton, reused (and resized) across calls.

``get_reusable_executor()`` returns the calling thread's executor when it can
be reused with the requested settings, resizing it if needed, and replaces it
when it is broken, shut down, or configured differently.
"""

from __future__ import annotations

import threading
import time
import warnings
from concurrent.futures import wait as _wait_futures
from multiprocessing import util as mp_util

from .backend import get_context
from .backend.context import cpu_count
from .process_executor import (
    EXTRA_QUEUED_CALLS,
    ProcessPoolExecutor,
    _resolve_pickle_check,
)

__all__ = ["get_reusable_executor"]

# Guards the id counter and the creation of executors (re-entrant: the
# replacement of a stale executor calls get_reusable_executor again).
_executor_lock = threading.RLock()
_next_executor_id = 0


class _ExecutorStorage(threading.local):
    """Each thread owns its reusable executor."""

    executor = None
    executor_kwargs = None


_executor_storage = _ExecutorStorage()


def _get_next_executor_id() -> int:
    """Ensure that each successive executor instance has a unique, monotonic id."""
    global _next_executor_id
    with _executor_lock:
        executor_id = _next_executor_id
        _next_executor_id += 1
        return executor_id


def get_reusable_executor(
    max_workers=None,
    context=None,
    timeout=10,
    kill_workers=False,
    reuse="auto",
    job_reducers=None,
    result_reducers=None,
    initializer=None,
    initargs=(),
    env=None,
    pickle_check=None,
):
    """Return the current thread's reusable executor, creating it if needed.

    With ``reuse="auto"`` the executor is reused when the other arguments
    equal those it was created with (it is resized to ``max_workers`` if
    needed); ``reuse=True`` keeps its settings whatever is asked;
    ``reuse=False`` always makes a new one. A broken or shut down executor is
    replaced. Replacing shuts the old one down, killing its workers if
    ``kill_workers``. ``timeout`` is the idle time (s) after which workers exit.
    ``pickle_check`` turns on the pickling check mode (part of the reuse key).
    """
    executor, _ = _ReusablePoolExecutor.get_reusable_executor(
        max_workers=max_workers,
        context=context,
        timeout=timeout,
        kill_workers=kill_workers,
        reuse=reuse,
        job_reducers=job_reducers,
        result_reducers=result_reducers,
        initializer=initializer,
        initargs=initargs,
        env=env,
        pickle_check=pickle_check,
    )
    return executor


class _ReusablePoolExecutor(ProcessPoolExecutor):
    """The executor behind ``get_reusable_executor``: resizable in place."""

    def __init__(
        self,
        max_workers=None,
        context=None,
        timeout=None,
        executor_id=0,
        job_reducers=None,
        result_reducers=None,
        initializer=None,
        initargs=(),
        env=None,
        pickle_check=None,
    ):
        # Shared by _resize and downstream code (joblib cleans up under it);
        # re-entrant and independent of the shutdown machinery, so it is
        # usable after shutdown and cannot deadlock with it.
        self._submit_resize_lock = threading.RLock()
        super().__init__(
            max_workers=max_workers,
            context=context,
            timeout=timeout,
            job_reducers=job_reducers,
            result_reducers=result_reducers,
            initializer=initializer,
            initargs=initargs,
            env=env,
            pickle_check=pickle_check,
        )
        self.executor_id = executor_id

    @classmethod
    def get_reusable_executor(
        cls,
        max_workers=None,
        context=None,
        timeout=10,
        kill_workers=False,
        reuse="auto",
        job_reducers=None,
        result_reducers=None,
        initializer=None,
        initargs=(),
        env=None,
        pickle_check=None,
    ):
        """Like the module function, but return ``(executor, is_reused)``."""
        with _executor_lock:
            executor = _executor_storage.executor
            if max_workers is None:
                if reuse is True and executor is not None:
                    max_workers = executor._max_workers
                else:
                    max_workers = cpu_count()
            elif max_workers <= 0:
                raise ValueError(
                    f"max_workers must be greater than 0, got {max_workers}."
                )

            if isinstance(context, str):
                context = get_context(context)
            if context is not None and context.get_start_method() == "fork":
                raise ValueError("Cannot use reusable executor with the 'fork' context")

            kwargs = dict(
                context=context,
                timeout=timeout,
                job_reducers=job_reducers,
                result_reducers=result_reducers,
                initializer=initializer,
                initargs=initargs,
                env=env,
            )
            # The check mode is part of the reuse key; left out when off so
            # subclasses written for loky 3.7 keep their constructor.
            mode = _resolve_pickle_check(pickle_check)
            if mode != "off":
                kwargs["pickle_check"] = mode

            if executor is None:
                is_reused = False
                mp_util.debug(f"Create a executor with max_workers={max_workers}.")
                executor_id = _get_next_executor_id()
                executor = cls(
                    max_workers=max_workers, executor_id=executor_id, **kwargs
                )
                _executor_storage.executor = executor
                _executor_storage.executor_kwargs = kwargs
                return executor, is_reused

            if reuse == "auto":
                reuse = kwargs == _executor_storage.executor_kwargs
            if executor._flags.broken is not None:
                reason = "broken"
            elif executor._flags.shutdown:
                reason = "shutdown"
            elif executor.queue_size < max_workers:
                reason = "queue size too small"
            elif not reuse:
                reason = "arguments have changed"
            else:
                reason = None
            if reason is not None:
                mp_util.debug(
                    f"Creating a new executor with max_workers={max_workers} as the "
                    f"previous instance cannot be reused ({reason})."
                )
                _executor_storage.executor = _executor_storage.executor_kwargs = None
            else:
                mp_util.debug(
                    "Reusing existing executor with "
                    f"max_workers={executor._max_workers}."
                )

        # Waiting for the old executor (shutdown, resize) happens outside the
        # lock: its manager thread may be running a done-callback that itself
        # calls get_reusable_executor (for the manager thread's own executor).
        if reason is not None:
            executor.shutdown(wait=True, kill_workers=kill_workers)
            return cls.get_reusable_executor(max_workers=max_workers, **kwargs)
        executor._resize(max_workers)
        if executor._flags.shutdown:
            # Broken or shut down while resizing: the next call replaces it.
            return cls.get_reusable_executor(
                max_workers=max_workers, kill_workers=kill_workers, **kwargs
            )
        return executor, True

    def _setup_queues(self, job_reducers, result_reducers):
        # Room for every worker to be busy even when resized above cpu_count.
        queue_size = 2 * max(cpu_count(), self._max_workers) + EXTRA_QUEUED_CALLS
        self.queue_size = queue_size
        super()._setup_queues(job_reducers, result_reducers, queue_size=queue_size)

    def _wait_job_completion(self):
        """Wait for every submitted job to finish (warning once if any is)."""
        if self._pending_work_items:
            warnings.warn(
                "Trying to resize an executor with running jobs: waiting for jobs "
                "completion before resizing.",
                UserWarning,
                stacklevel=3,
            )
            mp_util.debug(
                f"Executor {self.executor_id} waiting for its "
                f"{len(self._pending_work_items)} pending jobs."
            )
        # Wait on the futures themselves: the manager drops a work item before
        # resolving its future, and empties the dict when the pool breaks.
        while self._pending_work_items and self._flags.broken is None:
            futures = [item.future for item in list(self._pending_work_items.values())]
            _wait_futures(futures)

    def _resize(self, max_workers):
        with self._submit_resize_lock:
            if max_workers is None:
                raise ValueError("Trying to resize with max_workers=None")
            if max_workers == self._max_workers:
                return
            if self._executor_manager_thread is None:
                # No worker yet: the first submit spawns the new count.
                self._max_workers = max_workers
                return

            self._wait_job_completion()

            # Shut down meanwhile (say by a done-callback): its queues and
            # locks are gone and no worker may be spawned any more.
            if self._flags.shutdown:
                return
            with self._processes_management_lock:
                # Workers that left on their idle timeout are not in the dict.
                n_alive = sum(p.is_alive() for p in list(self._processes.values()))
                self._max_workers = max_workers
                with self._call_item_lock:  # the call queue's other putters
                    for _ in range(max_workers, n_alive):
                        self._call_queue.put(None)
            # The manager removes each worker once it has handshaked its exit.
            while len(self._processes) > max_workers and not self._flags.shutdown:
                _sleep_briefly()
            with self._shutdown_lock:
                if self._flags.shutdown:
                    return
                management_lock = self._processes_management_lock
            with management_lock:
                self._adjust_process_count()
            # The manager must watch the new workers' sentinels.
            with self._shutdown_lock:
                wakeup = self._executor_manager_thread_wakeup
                if wakeup is not None:
                    wakeup.wakeup()
            while (
                not all(p.is_alive() for p in list(self._processes.values()))
                and not self._flags.shutdown
            ):
                _sleep_briefly()


def _sleep_briefly():
    time.sleep(1e-3)
