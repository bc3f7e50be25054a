r"""A robust process pool executor: workers may crash, leak, time out or be
killed, and the caller always gets an exception instead of a hang.

Data flow (one executor)::

  caller threads              |  manager thread ("ExecutorManagerThread")  |  worker processes
  --------------------------- | ------------------------------------------ | ------------------
  submit(fn, *args)           |                                            |
   |-[pickle-check hook]      |                                            |
   |-_pending_work_items      |                                            |
   |   {id: _WorkItem}        |                                            |
   |-_work_ids.put(id)        |                                            |
   |-_move_work_to_call_queue + add_call_item_to_queue() (same function,   |
   |   under _call_item_lock  |   same lock): oldest ids first, while the  |
   |   (room for it: the item |   call queue has room; future -> RUNNING,  |
   |   goes straight out)     |   id -> _running_work_items                |
   |         \                |          /                                 |
   |          +---------------+---------+-> _call_queue (bounded loky Queue)|
   |                          |             its feeder thread pickles the  |
   |                          |             call tuple with the job        |
   |                          |             reducers and writes the pipe --+--> _process_worker:
   |-wakeup.wakeup() ---------+--> (one byte, skipped if one is pending)   |    get -> call ->
   |                          |                                            |    _sendback_result
   |                          |  poll([result reader, wakeup] + sentinels) |        |
   |                          |  results first, every ready one <---------+--- _result_queue
   |                          |  process_result_item():                    |   (loky SimpleQueue,
   |  future.result() <-------+--  pop _WorkItem, set_result/exception     |    pickled in the
   |                          |    (done-callbacks run here)               |    worker, synchronous)
   |                          |  int pid: a worker left on purpose         |
   |                          |    (idle timeout, sentinel, memory guard)  |
   |                          |  a sentinel without a pid: a worker died   |
   |                          |    -> terminate_broken(TerminatedWorkerError)

Threads: the caller's (submit), the manager (one per executor, non-daemon),
the call queue's feeder (daemon, started by the first put). Ownership:
``_pending_work_items`` and ``_work_ids`` are filled by submit() and emptied
by the manager; moving work to the call queue happens under
``_call_item_lock`` (submit or manager); ``_processes`` changes only under the
cross-process ``_processes_management_lock`` (idle workers test it before
leaving). ``_flags`` is shared by the executor, the manager and the feeder's
error hook, so the executor's state outlives the executor object, which the
manager only references weakly.

A task's life: submit stores a _WorkItem and, when a worker slot is free,
puts its call tuple on the call queue itself (else the manager does it when a
result frees a slot); the feeder pickles it into the pipe; a worker runs it
and pickles its _ResultItem (work_id, exception, result) straight into the
result pipe (so what a worker reported is in the pipe before it can die); the
manager reads it, resolves the future and forgets the task.
"""

from __future__ import annotations

import faulthandler
import gc
import importlib.util
import io
import itertools
import os
import pickle
import queue
import select
import struct
import sys
import threading
import time
import traceback
import warnings
import weakref
from concurrent.futures import Executor
from concurrent.futures._base import CANCELLED as _CANCELLED
from concurrent.futures._base import LOGGER, InvalidStateError
from concurrent.futures.process import BrokenProcessPool as _StdlibBrokenProcessPool
from multiprocessing import util as mp_util
from multiprocessing.connection import wait as _mp_wait
from pickle import PicklingError
from pickle import loads as _pickle_loads

from . import _base
from .backend import get_context
from .backend.context import cpu_count
from .backend.queues import Queue, SimpleQueue
from .backend.reduction import get_loky_pickler, get_loky_pickler_name, set_loky_pickler
from .backend.utils import _format_exitcodes, kill_process_tree
from .initializers import _prepare_initializer

# psutil is optional (no memory-leak recycling without it) and slow to
# import: workers import it at their first memory check, not at start.
_USE_PSUTIL = importlib.util.find_spec("psutil") is not None


def _get_memory_usage(pid: int, force_gc: bool = False) -> int:
    """Resident set size of process ``pid`` in bytes (after a gc if asked)."""
    if force_gc:
        gc.collect()
    rss = _read_proc_rss(pid)
    if rss is not None:
        return rss
    from psutil import Process

    return Process(pid).memory_info().rss


_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _read_proc_rss(pid: int) -> int | None:
    """The RSS psutil reports on Linux, read from /proc without importing
    psutil (which would make every worker bigger, and slower to exit)."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as statm:
            return int(statm.read().split()[1]) * _PAGE_SIZE
    except (OSError, ValueError, IndexError):
        return None


# Names looked up at use time (callers and tests may reassign them).
_MEMORY_LEAK_CHECK_DELAY = 1.0
_MAX_MEMORY_LEAK_SIZE = int(float(os.environ.get("LOKY_MAX_MEMORY_LEAK_SIZE", 3e8)))

# Nesting: 0 in the main process, parent's depth + 1 in a worker.
MAX_DEPTH = int(os.environ.get("LOKY_MAX_DEPTH", 10))
_CURRENT_DEPTH = 0

# How many more calls than workers the call queue holds (calls in the queue
# can no longer be cancelled, a small margin keeps workers fed).
EXTRA_QUEUED_CALLS = 1

# How long a worker that sent its pid waits for the parent's go-ahead: bounds
# the life of workers whose parent was SIGKILLed.
_WORKER_EXIT_TIMEOUT = 30

PICKLE_CHECK_MODES = ("off", "warn", "error", "wrap")

# Interpreter exit: the manager threads to wake and join, see _python_exit.
_threads_wakeups: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_global_shutdown = False
_global_shutdown_lock = threading.Lock()
process_pool_executor_at_exit = None

_SHUTDOWN_KILL_MESSAGE = (
    "The Executor was shutdown with `kill_workers=True` before this job could complete."
)
_TASK_UNSERIALIZE_MESSAGE = (
    "A task has failed to un-serialize. Please ensure that the arguments of the "
    "function are all picklable."
)
_RESULT_UNSERIALIZE_MESSAGE = (
    "A result has failed to un-serialize. Please ensure that the objects returned "
    "by the function are always picklable."
)
_MANAGER_CRASH_MESSAGE = (
    "The executor manager thread crashed: the executor is broken and the pending "
    "tasks have been cancelled."
)
_FEEDER_CRASH_MESSAGE = (
    "The call queue feeder thread crashed: the executor is broken and the pending "
    "tasks have been cancelled."
)
_TERMINATED_WORKER_MESSAGE = (
    "A worker process managed by the executor was unexpectedly terminated. This "
    "could be caused by a segmentation fault while calling the function or by an "
    "excessive memory usage causing the Operating System to kill the worker.\n"
)
_TERMINATED_WORKER_SUFFIX = (
    "\nDetailed tracebacks of the workers should have been printed to stderr in "
    "the executor process if faulthandler was not disabled."
)
_WORKER_STOPPED_MESSAGE = (
    "A worker stopped while some jobs were given to the executor. This can be "
    "caused by a too short worker timeout or by a memory leak triggered by the "
    "OS-level out-of-memory (OOM) process killer."
)


def _clear_threads_wakeups_after_fork() -> None:
    _threads_wakeups.clear()


mp_util.register_after_fork(_threads_wakeups, lambda obj: obj.clear())
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_clear_threads_wakeups_after_fork)


# ---------------------------------------------------------------------------
# Exceptions and remote tracebacks
# ---------------------------------------------------------------------------


class BrokenProcessPool(_StdlibBrokenProcessPool):
    """The executor cannot be used any more (a task or result failed to
    un-serialize, an internal thread crashed or a worker died)."""


BrokenExecutor = BrokenProcessPool


class TerminatedWorkerError(BrokenProcessPool):
    """A worker died without the executor asking it to."""


class ShutdownExecutorError(RuntimeError):
    """Submit after shutdown, or a job dropped by ``shutdown(kill_workers=True)``."""


class LokyRecursionError(RuntimeError):
    """Too many nested executors (see ``LOKY_MAX_DEPTH``)."""


class _RemoteTraceback(Exception):
    """Carries a formatted traceback from another process (or thread) as text."""

    def __init__(self, tb=None):
        self.tb = '\n"""\n' + (tb or "") + '"""'

    def __str__(self):
        return self.tb


def _format_traceback(exc: BaseException) -> str:
    return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))


class _ExceptionWithTraceback:
    """An exception plus its formatted traceback, rebuilt with the traceback
    attached as ``__cause__`` after unpickling."""

    def __init__(self, exc: BaseException):
        tb = getattr(exc, "__traceback__", None)
        if tb is None:
            _, _, tb = sys.exc_info()
        self.exc = exc
        self.tb = "".join(traceback.format_exception(type(exc), exc, tb))
        # The frames of the traceback hold every local of the failed call.
        exc.__traceback__ = None

    def __reduce__(self):
        return _rebuild_exc, (self.exc, self.tb)


def _rebuild_exc(exc: BaseException, tb: str) -> BaseException:
    exc.__cause__ = _RemoteTraceback(tb)
    return exc


def _with_cause(exc: BaseException, cause: BaseException) -> BaseException:
    exc.__cause__ = _RemoteTraceback(_format_traceback(cause))
    return exc


# ---------------------------------------------------------------------------
# Work, call and result items
# ---------------------------------------------------------------------------


class _WorkItem:
    """A submitted task waiting in the parent (``payload``: pre-pickled call)."""

    __slots__ = ("future", "fn", "args", "kwargs", "payload")

    def __init__(self, future, fn, args, kwargs, payload=None):
        self.future = future
        self.fn = fn
        self.args = args
        self.kwargs = kwargs
        self.payload = payload


class _ResultItem:
    """What a worker sends back for a task: its result or its exception."""

    __slots__ = ("work_id", "exception", "result")

    def __init__(self, work_id, exception=None, result=None):
        self.work_id = work_id
        self.exception = exception
        self.result = result

    def __reduce__(self):
        # A flat tuple pickles faster and smaller than a slots state.
        return _ResultItem, (self.work_id, self.exception, self.result)


class _RecycledWorkerPid(int):
    """Sent instead of the plain pid by a worker the memory guard recycles."""


class _CallItem:
    """A task on its way to a worker.

    Records the parent's pickler name so results travel back with it. With a
    ``payload`` (``(fn, args, kwargs)`` pickled by the submit hook), the
    worker unpickles it when the call runs, so a load failure is the task's
    exception and the pool stays healthy.
    """

    __slots__ = (
        "work_id",
        "fn",
        "args",
        "kwargs",
        "payload",
        "pickle_check",
        "loky_pickler",
    )

    def __init__(
        self,
        work_id,
        fn,
        args,
        kwargs,
        payload=None,
        pickle_check=None,
        loky_pickler=None,
    ):
        self.work_id = work_id
        self.fn = fn
        self.args = args
        self.kwargs = kwargs
        self.payload = payload
        self.pickle_check = pickle_check
        self.loky_pickler = (
            loky_pickler if loky_pickler is not None else get_loky_pickler_name()
        )

    def __reduce__(self):
        return _CallItem, (
            self.work_id,
            self.fn,
            self.args,
            self.kwargs,
            self.payload,
            self.pickle_check,
            self.loky_pickler,
        )

    def __call__(self):
        # Results are pickled with the same pickler as the parent's tasks.
        set_loky_pickler(self.loky_pickler)
        if self.payload is not None:
            fn, args, kwargs = self._load_payload()
            return fn(*args, **kwargs)
        return self.fn(*self.args, **self.kwargs)

    def _load_payload(self):
        try:
            return _pickle_loads(self.payload)
        except BaseException as e:
            if self.pickle_check:
                _annotate_pickling_failure(e, self.payload, "load")
            raise

    def __repr__(self):
        return f"CallItem({self.work_id}, {self.fn}, {self.args}, {self.kwargs})"


def _call_item_work_id(obj):
    """The work id if ``obj`` is a call item (either form), else None."""
    if type(obj) is tuple and len(obj) == _CALL_TUPLE_LEN:
        return obj[0]
    if isinstance(obj, _CallItem):
        return obj.work_id
    return None


def _call_item_fields(obj):
    """A call item (either form) as a dict of _CallItem's fields."""
    if isinstance(obj, _CallItem):
        return {name: getattr(obj, name) for name in _CallItem.__slots__}
    return dict(zip(_CallItem.__slots__, obj, strict=True))


# On the wire a call item is the plain tuple of _CallItem's constructor
# arguments: it pickles without any class lookup (workers also accept a
# _CallItem instance).
_CALL_TUPLE_LEN = 7


# ---------------------------------------------------------------------------
# Thread wakeup, flags and the call queue
# ---------------------------------------------------------------------------


class _ThreadWakeup:
    """A one-way pipe the manager thread waits on, to be woken from elsewhere.

    ``wakeup()`` writes one empty message unless one is already waiting to be
    drained: 10k submits cost a handful of writes, not 10k.
    """

    __slots__ = ("_closed", "_pending", "_lock", "_reader", "_writer", "__weakref__")

    def __init__(self):
        import multiprocessing

        self._closed = False
        self._pending = False
        # Re-entrant: the executor's weakref callback may run (through gc)
        # in a thread that is already inside wakeup() or close().
        self._lock = threading.RLock()
        self._reader, self._writer = multiprocessing.Pipe(duplex=False)

    def close(self):
        with self._lock:
            if not self._closed:
                self._closed = True
                self._writer.close()
                self._reader.close()

    def wakeup(self):
        # Unlocked fast path: a message not yet drained wakes the manager anyway.
        # clear() resets _pending only after draining, so whoever reads
        # _pending True here is still ahead of the manager's next look at the work.
        if self._pending:
            return
        with self._lock:
            if not self._closed:
                self._pending = True
                self._writer.send_bytes(b"")

    def clear(self):
        with self._lock:
            if not self._closed:
                reader = self._reader
                while reader.poll():
                    reader.recv_bytes()
                self._pending = False


class _ExecutorFlags:
    """State shared by the executor, its manager thread and the feeder hook."""

    def __init__(self, shutdown_lock):
        self.shutdown = False
        self.broken = None
        self.kill_workers = False
        self.shutdown_lock = shutdown_lock

    def flag_as_shutting_down(self, kill_workers=None):
        with self.shutdown_lock:
            self.shutdown = True
            if kill_workers is not None:
                self.kill_workers = kill_workers

    def flag_as_broken(self, broken):
        with self.shutdown_lock:
            self.shutdown = True
            self.broken = broken


class _SafeQueue(Queue):
    """The call queue: a pickling failure fails the task's future, not the pool."""

    def __init__(
        self,
        max_size=0,
        ctx=None,
        pending_work_items=None,
        running_work_items=None,
        thread_wakeup=None,
        shutdown_lock=None,
        executor_flags=None,
        reducers=None,
    ):
        self.thread_wakeup = thread_wakeup
        self.shutdown_lock = shutdown_lock
        self.pending_work_items = pending_work_items
        self.running_work_items = running_work_items
        self.executor_flags = executor_flags
        super().__init__(max_size, reducers=reducers, ctx=ctx)

    def _on_queue_feeder_error(self, e, obj):
        work_id = _call_item_work_id(obj)
        if work_id is None:
            super()._on_queue_feeder_error(e, obj)
            return
        if isinstance(e, struct.error):
            raised_error = RuntimeError(
                "The task could not be sent to the workers as it is too large for `send_bytes`."
            )
        else:
            raised_error = PicklingError(
                "Could not pickle the task to send it to the workers."
            )
        _with_cause(raised_error, e)
        call = _call_item_fields(obj)
        if call["pickle_check"] and call["payload"] is None:
            # Check mode (warn, wrap) let a call that does not pickle through:
            # the caller's error says which argument, where and why.
            _annotate_pickling_failure(
                raised_error, (call["fn"], call["args"], call["kwargs"]), "task"
            )
        work_item = self.pending_work_items.pop(work_id, None)
        try:
            self.running_work_items.remove(work_id)
        except BaseException as hook_error:
            raised_error = _with_cause(
                BrokenProcessPool(_FEEDER_CRASH_MESSAGE), hook_error
            )
            LOGGER.critical("Exception in call queue feeder error hook:", exc_info=True)
            self.executor_flags.flag_as_broken(raised_error)
        # work_item is None when the pool broke meanwhile: the manager already
        # failed every pending future.
        if work_item is not None:
            try:
                work_item.future.set_exception(raised_error)
            except InvalidStateError:
                pass
            del work_item
        with self.shutdown_lock:
            self.thread_wakeup.wakeup()


# ---------------------------------------------------------------------------
# Worker side
# ---------------------------------------------------------------------------


def _annotate_pickling_failure(exc: BaseException, obj, stage: str) -> None:
    """Add the pickling diagnosis to ``exc`` (check modes only; never raises).

    ``stage``: "result" and "load" in a worker, "task" in the parent's feeder.
    """
    try:
        from loky_check.runtime import annotate_worker_failure

        annotate_worker_failure(exc, obj, stage)
    except BaseException:
        pass


def _wait_for_exit(pid, timeout):
    """Block until process ``pid`` has exited (reapable), at most ``timeout`` s.

    Uses a pidfd where available: it becomes readable exactly when the process
    is a zombie, so no polling. Returns without waiting elsewhere.
    """
    pidfd_open = getattr(os, "pidfd_open", None)
    if pidfd_open is None:
        return
    try:
        fd = pidfd_open(pid)
    except OSError:
        return
    try:
        select.select([fd], [], [], timeout)
    finally:
        os.close(fd)


def _move_work_to_call_queue(call_queue, work_ids, pending, running, pickle_check):
    """Move queued work items, oldest first, to the call queue while it has room.

    Called by the manager thread and by submit() (which so saves a thread
    hop when a worker is free), always under the executor's call-item lock,
    so ids leave in order and nothing else fills the queue meanwhile: the
    put never blocks.
    """
    get_work_id = work_ids.get_nowait
    while not call_queue.full():
        try:
            work_id = get_work_id()
        except queue.Empty:
            return
        work_item = pending.get(work_id)
        if work_item is None:
            continue
        if work_item.future.set_running_or_notify_cancel():
            running.append(work_id)
            call_queue.put(
                (
                    work_id,
                    work_item.fn,
                    work_item.args,
                    work_item.kwargs,
                    work_item.payload,
                    pickle_check,
                    get_loky_pickler_name(),
                ),
                block=True,
            )
        else:
            del pending[work_id]


def _yield_gil():
    """Release the GIL for a moment so that threads waiting for it can run."""
    sched_yield = getattr(os, "sched_yield", None)
    if sched_yield is not None:
        sched_yield()
    else:
        time.sleep(0)


def _process_chunk(fn, chunk):
    """Run ``fn`` on a chunk of argument tuples (one task per chunk in map)."""
    return [fn(*args) for args in chunk]


def _sendback_result(
    result_queue, work_id, result=None, exception=None, pickle_check=None
):
    """Put a result in the result queue; if it cannot be sent, send why instead."""
    # A _ResultItem, as the contract says (a reader of the result queue, or a
    # test calling this directly, sees one; the manager also accepts the
    # plain (work_id, exception, result) tuple).
    try:
        result_queue.put(_ResultItem(work_id, exception, result))
    except BaseException as e:
        if pickle_check:
            # The object that failed: the result, or the task's own exception.
            culprit = (
                result if exception is None else getattr(exception, "exc", exception)
            )
            _annotate_pickling_failure(e, culprit, "result")
        try:
            result_queue.put(_ResultItem(work_id, _ExceptionWithTraceback(e)))
        except BaseException as e2:
            # Even the pickling error does not pickle (e.g. it holds the
            # object): send a plain stand-in rather than letting the worker die.
            stand_in = PicklingError(f"Could not pickle the result of the task: {e!r}")
            stand_in.__cause__ = None
            result_queue.put(
                _ResultItem(work_id, _RebuildableError(stand_in, _format_traceback(e2)))
            )


class _ResultPipe:
    """The worker's end of the result queue: ``put`` like ``SimpleQueue.put``
    (pickle first, then write under the lock), but with one pickler reused
    across results instead of a new one per result.

    A result queue whose class overrides ``put`` is used through its ``put``.
    """

    def __init__(self, result_queue):
        self._queue = result_queue
        self._fast = type(result_queue).put is SimpleQueue.put
        self._pickler_key = None
        self._pickler = None
        self._buffer = None

    def put(self, obj):
        if not self._fast:
            self._queue.put(obj)
            return
        # Rebuilt when set_loky_pickler() changed the class (each task carries
        # the parent's) or a task registered reducers (register()/copyreg).
        pickler_class = get_loky_pickler()
        key = (pickler_class, pickler_class._tables_generation())
        if key != self._pickler_key:
            self._buffer = io.BytesIO()
            self._pickler = key[0](
                self._buffer, reducers=self._queue._reducers, protocol=None
            )
            self._pickler_key = key
        buffer = self._buffer
        pickler = self._pickler
        try:
            # cloudpickle keeps per-dump state about functions' globals.
            globals_ref = getattr(pickler, "globals_ref", None)
            if globals_ref:
                globals_ref.clear()
            pickler.dump(obj)
            view = buffer.getbuffer()
            try:
                queue = self._queue
                if queue._wlock is None:
                    queue._writer.send_bytes(view)
                else:
                    with queue._wlock:
                        queue._writer.send_bytes(view)
            finally:
                view.release()
        finally:
            pickler.clear_memo()
            buffer.seek(0)
            buffer.truncate()


class _RebuildableError(_ExceptionWithTraceback):
    """An _ExceptionWithTraceback built from a given traceback text."""

    def __init__(self, exc, tb):
        self.exc = exc
        self.tb = tb


def _make_call_item_getter(call_queue, timeout):
    """``call_queue.get(block=True, timeout=timeout)``, made cheap.

    With a timeout, the stdlib ``Queue.get`` polls the pipe through
    ``multiprocessing.connection.wait``, which builds a selector per call (tens
    of microseconds per task). Same steps here with one ``select.poll`` object
    made once. A queue class with its own ``get`` is used through it.
    """
    import multiprocessing.queues

    def get_untimed():
        return call_queue.get(block=True, timeout=timeout)

    if (
        timeout is None
        or type(call_queue).get is not multiprocessing.queues.Queue.get
        or not hasattr(select, "poll")
    ):
        return get_untimed

    rlock = call_queue._rlock
    recv_bytes = call_queue._recv_bytes
    slots = call_queue._sem
    poller = select.poll()
    poller.register(call_queue._reader.fileno(), select.POLLIN)
    monotonic = time.monotonic

    def get_timed():
        deadline = monotonic() + timeout
        if not rlock.acquire(True, timeout):
            raise queue.Empty
        try:
            remaining = max(deadline - monotonic(), 0.0)
            if not poller.poll(int(remaining * 1000) + 1):
                raise queue.Empty
            payload = recv_bytes()
            slots.release()
        finally:
            rlock.release()
        # Unpickle after releasing the lock, as the stdlib does.
        return _pickle_loads(payload)

    return get_timed


def _enable_faulthandler_if_needed():
    if "PYTHONFAULTHANDLER" in os.environ:
        return  # the user configured it: leave it alone
    if not faulthandler.is_enabled():
        faulthandler.enable()


def _exit_when_parent_dies():
    """Leave when the executor's process dies without a word (SIGKILL, OOM).

    Without an idle timeout nothing else would end this worker: it would wait
    for tasks for ever on a queue whose pipe it holds both ends of. A daemon
    thread waits on the parent's sentinel; it costs nothing until it fires.
    """
    import multiprocessing

    parent = multiprocessing.parent_process()
    sentinel = getattr(parent, "sentinel", None)
    if sentinel is None:
        return

    def watch_parent():
        try:
            _mp_wait([sentinel])
        except (OSError, ValueError):
            return  # the fd went away (closed by a task): stop watching
        if parent.is_alive():
            return
        os._exit(1)

    threading.Thread(target=watch_parent, name="ParentWatcher", daemon=True).start()


def _process_worker(
    call_queue,
    result_queue,
    initializer,
    initargs,
    processes_management_lock,
    timeout,
    worker_exit_lock,
    current_depth,
):
    """The worker loop: run call items from ``call_queue`` until told to stop.

    Exits via a handshake (send the pid, wait on ``worker_exit_lock``) on the
    ``None`` sentinel, on idle ``timeout`` (unless the parent holds
    ``processes_management_lock``) and when the memory guard recycles it.
    """
    if initializer is not None:
        try:
            initializer(*initargs)
        except BaseException:
            LOGGER.critical("Exception in initializer:", exc_info=True)
            # Exit 0 without the handshake: the parent reports the death.
            return

    global _CURRENT_DEPTH
    _CURRENT_DEPTH = current_depth
    _enable_faulthandler_if_needed()
    if timeout is None:
        _exit_when_parent_dies()

    pid = os.getpid()
    result_queue = _ResultPipe(result_queue)
    get_call_item = _make_call_item_getter(call_queue, timeout)
    mp_util.debug(f"Worker started with timeout={timeout}")
    reference_memory = None
    last_memory_check = None
    while True:
        try:
            call_item = get_call_item()
        except queue.Empty:
            # Idle: leave unless the parent is spawning or resizing right now.
            if processes_management_lock.acquire(block=False):
                processes_management_lock.release()
                call_item = None
            else:
                mp_util.info("Could not acquire processes_management_lock")
                continue
        except BaseException:
            previous_tb = traceback.format_exc()
            try:
                result_queue.put(_RemoteTraceback(previous_tb))
            except BaseException:
                # Cannot report through the pipe: at least show it.
                print(previous_tb)
            mp_util.debug("Exiting with code 1")
            sys.exit(1)

        if call_item is None:
            # Deliberate exit: the parent must not mistake it for a crash.
            result_queue.put(pid)
            worker_exit_lock.acquire(True, timeout=_WORKER_EXIT_TIMEOUT)
            # Shut down executors nested in this worker (their workers first).
            _python_exit()
            return

        if type(call_item) is tuple:
            call_item = _CallItem(*call_item)
        try:
            result = call_item()
        except BaseException as e:
            _sendback_result(
                result_queue,
                call_item.work_id,
                exception=_ExceptionWithTraceback(e),
                pickle_check=call_item.pickle_check,
            )
        else:
            _sendback_result(
                result_queue,
                call_item.work_id,
                result=result,
                pickle_check=call_item.pickle_check,
            )
            del result
        # Only now: an argument whose __del__ kills the worker must not lose
        # the result that was just sent.
        del call_item

        if _USE_PSUTIL:
            if reference_memory is None:
                reference_memory = _get_memory_usage(pid, force_gc=True)
                last_memory_check = time.monotonic()
                continue
            if time.monotonic() - last_memory_check > _MEMORY_LEAK_CHECK_DELAY:
                memory = _get_memory_usage(pid)
                last_memory_check = time.monotonic()
                if memory - reference_memory < _MAX_MEMORY_LEAK_SIZE:
                    continue
                # Maybe only garbage: measure again after collecting it.
                memory = _get_memory_usage(pid, force_gc=True)
                last_memory_check = time.monotonic()
                if memory - reference_memory < _MAX_MEMORY_LEAK_SIZE:
                    continue
                mp_util.info("Memory leak detected: shutting down worker")
                result_queue.put(_RecycledWorkerPid(pid))
                worker_exit_lock.acquire()
                return
        elif last_memory_check is None or (
            time.monotonic() - last_memory_check > _MEMORY_LEAK_CHECK_DELAY
        ):
            # Without psutil, collect reference cycles now and then.
            gc.collect()
            last_memory_check = time.monotonic()


# ---------------------------------------------------------------------------
# The manager thread
# ---------------------------------------------------------------------------


class _ReadyWaiter:
    """``multiprocessing.connection.wait(objects)`` (no timeout) for a set of
    objects that rarely changes: one ``select.poll`` object, rebuilt only when
    the file descriptors change, instead of a new selector per call."""

    def __init__(self):
        self._poll = getattr(select, "poll", None)
        self._fds = None
        self._poller = None

    def wait(self, objects):
        if self._poll is None:  # e.g. Windows
            return _mp_wait(objects)
        fds = tuple(obj if isinstance(obj, int) else obj.fileno() for obj in objects)
        if fds != self._fds:
            # Registration is by fd number, so an equal tuple of numbers is
            # watched correctly whatever objects now hold them.
            poller = self._poll()
            for fd in fds:
                poller.register(fd, select.POLLIN)
            self._poller, self._fds = poller, fds
        objects_by_fd = dict(zip(fds, objects, strict=True))
        # POLLHUP/POLLERR count as ready, like multiprocessing's wait().
        events = self._poller.poll()
        return [objects_by_fd[fd] for fd, _ in events if fd in objects_by_fd]


def _notify_cancelled(future):
    """Mark a cancelled future as notified, as the manager does when it meets
    one in the queue: ``wait()``/``as_completed()`` only count it as done then,
    and work dropped without reaching the queue would leave them hanging."""
    with future._condition:
        if future._state == _CANCELLED:
            future.set_running_or_notify_cancel()


def _fail_unless_cancelled(future, exc):
    """``future.set_exception(exc)``; a cancelled future is notified instead
    (checking first would race with ``cancel()``)."""
    try:
        future.set_exception(exc)
    except InvalidStateError:
        _notify_cancelled(future)


class _ExecutorManagerThread(threading.Thread):
    """Feeds the call queue, collects results, detects dead workers."""

    def __init__(self, executor):
        # Direct references to the shared state; only a weak one to the
        # executor so that dropping it shuts the pool down.
        self.thread_wakeup = executor._executor_manager_thread_wakeup
        self.shutdown_lock = executor._shutdown_lock

        def weakref_cb(_, thread_wakeup=self.thread_wakeup):
            if mp_util is not None:  # None once the interpreter tears modules down
                mp_util.debug(
                    "Executor collected: triggering callback for QueueManager wakeup"
                )
            thread_wakeup.wakeup()

        self.executor_reference = weakref.ref(executor, weakref_cb)
        self.executor_flags = executor._flags
        self.processes = executor._processes
        self.call_queue = executor._call_queue
        self.result_queue = executor._result_queue
        self.work_ids_queue = executor._work_ids
        self.pending_work_items = executor._pending_work_items
        self.running_work_items = executor._running_work_items
        self.processes_management_lock = executor._processes_management_lock
        self.call_item_lock = executor._call_item_lock
        mode = executor._pickle_check
        self.pickle_check = None if mode == "off" else mode
        self.recycling_warned = False
        # To restore the pool's strength once the executor is shut down or
        # collected (queued work is still owed, see _process_worker_exit).
        self.max_workers = executor._max_workers
        self.worker_spawn_args = {
            "context": executor._context,
            "initializer": executor._initializer,
            "initargs": executor._initargs,
            "timeout": executor._timeout,
            "env": executor._env,
        }
        self._waiter = _ReadyWaiter()
        super().__init__(name="ExecutorManagerThread")

    def run(self):
        try:
            self._run()
        except BaseException as e:
            # A bug or a warning turned into an error must not leave any
            # future pending for ever.
            bpe = _with_cause(BrokenProcessPool(_MANAGER_CRASH_MESSAGE), e)
            LOGGER.critical("Exception in executor manager thread:", exc_info=True)
            try:
                self.terminate_broken(bpe)
            except BaseException:
                LOGGER.critical(
                    "Could not tear down the broken executor:", exc_info=True
                )

    def _run(self):
        result_reader = self.result_queue._reader
        while True:
            self.add_call_item_to_queue()

            result_item, is_broken, bpe = self.wait_result_broken_or_wakeup()
            if not is_broken and self.executor_flags.broken is not None:
                # Set by the feeder's error hook.
                is_broken, bpe = True, self.executor_flags.broken
            if is_broken:
                self.terminate_broken(bpe)
                return
            if result_item is not None:
                self.process_result_item(result_item)
                del result_item
                # Read every result already waiting before polling all the
                # sentinels again: cheaper per result under load, and results
                # stay ahead of death notices.
                while result_reader.poll():
                    self.add_call_item_to_queue()
                    result_item, is_broken, bpe = self._read_result()
                    if is_broken:
                        self.terminate_broken(bpe)
                        return
                    self.process_result_item(result_item)
                    del result_item

            if self.is_shutting_down():
                self.flag_executor_shutting_down()
                # Drop cancelled items that would otherwise stay pending.
                self.add_call_item_to_queue()
                if not self.pending_work_items:
                    self.join_executor_internals()
                    return

    def add_call_item_to_queue(self):
        """Move pending work to the call queue while it has room (never blocks)."""
        with self.call_item_lock:
            _move_work_to_call_queue(
                self.call_queue,
                self.work_ids_queue,
                self.pending_work_items,
                self.running_work_items,
                self.pickle_check,
            )

    def _read_result(self):
        if self.pickle_check:
            return self._read_result_checked()
        try:
            result_item = self.result_queue._reader.recv()
        except BaseException as e:
            bpe = _with_cause(BrokenProcessPool(_RESULT_UNSERIALIZE_MESSAGE), e)
            return None, True, bpe
        return self._result_or_task_load_error(result_item)

    def _read_result_checked(self):
        """``_read_result`` in a check mode: the bytes are kept so that a
        result that does not load here reaches the caller diagnosed."""
        payload = None
        try:
            payload = self.result_queue._reader.recv_bytes()
            result_item = pickle.loads(payload)
        except BaseException as e:
            bpe = _with_cause(BrokenProcessPool(_RESULT_UNSERIALIZE_MESSAGE), e)
        else:
            return self._result_or_task_load_error(result_item)
        if payload is not None:  # diagnosed outside the except: no __context__
            from loky_check.runtime import annotate_result_load_failure

            annotate_result_load_failure(bpe, payload)
        try:
            return None, True, bpe
        finally:
            # The error's traceback holds this frame: dropping the local
            # breaks the cycle frame -> bpe -> cause -> traceback -> frame,
            # which would keep the pool's queues (and semaphores) until gc.
            del bpe

    def _result_or_task_load_error(self, result_item):
        if isinstance(result_item, _RemoteTraceback):
            bpe = BrokenProcessPool(_TASK_UNSERIALIZE_MESSAGE)
            bpe.__cause__ = result_item
            return None, True, bpe
        return result_item, False, None

    def wait_result_broken_or_wakeup(self):
        """Block until a result, a wakeup or a worker death; results first."""
        result_reader = self.result_queue._reader
        wakeup_reader = self.thread_wakeup._reader
        processes = list(self.processes.values())
        readers = [result_reader, wakeup_reader]
        readers.extend(p.sentinel for p in processes)
        ready = self._waiter.wait(readers)

        result_item = None
        is_broken = False
        bpe = None
        if result_reader in ready:
            result_item, is_broken, bpe = self._read_result()
        elif wakeup_reader in ready:
            pass
        else:
            bpe = self._terminated_worker_error(
                [p for p in processes if p.sentinel in ready]
            )
            is_broken = True
        self.thread_wakeup.clear()
        return result_item, is_broken, bpe

    def _terminated_worker_error(self, dead_processes):
        # The sentinel fires when the dying process closes its fds, a hair
        # before it can be reaped: wait for exactly those, briefly, with no
        # fixed sleep when the exit codes are already there.
        for p in dead_processes:
            if p.exitcode is None:
                _wait_for_exit(p.pid, timeout=5.0)
            delay = 1e-4
            deadline = time.monotonic() + 1.0
            while p.exitcode is None and time.monotonic() < deadline:
                time.sleep(delay)
                delay = min(delay * 2, 0.02)
        exit_codes = ""
        if sys.platform != "win32":
            codes = [
                p.exitcode
                for p in list(self.processes.values())
                if p.exitcode is not None
            ]
            exit_codes = (
                f"\nThe exit codes of the workers are {_format_exitcodes(codes)}"
            )
        return TerminatedWorkerError(
            _TERMINATED_WORKER_MESSAGE + exit_codes + _TERMINATED_WORKER_SUFFIX
        )

    def process_result_item(self, result_item):
        if type(result_item) is tuple:
            work_id, exception, result = result_item
        elif isinstance(result_item, int):
            self._process_worker_exit(result_item)
            return
        else:  # a _ResultItem
            work_id = result_item.work_id
            exception = result_item.exception
            result = result_item.result
        del result_item
        work_item = self.pending_work_items.pop(work_id, None)
        if work_item is not None:
            future = work_item.future
            del work_item
            try:
                # Identity, not truth: falsey exceptions exist.
                if exception is not None:
                    future.set_exception(exception)
                else:
                    future.set_result(result)
            except InvalidStateError:
                pass
            del future
        del result, exception
        try:
            self.running_work_items.remove(work_id)
        except ValueError:
            pass

    def _process_worker_exit(self, pid):
        """A worker left on purpose (sentinel, idle timeout, memory recycle)."""
        with self.processes_management_lock:
            p = self.processes.pop(pid, None)
        # Judged before the worker may exit: work submitted once it is gone
        # respawns it from submit() and is no reason to warn.
        n_pending = len(self.pending_work_items)
        n_running = len(self.running_work_items)
        work_was_waiting = n_pending - n_running > 0 or n_running > len(self.processes)
        if p is not None:
            try:
                p._worker_exit_lock.release()
            except ValueError:
                pass
            p.join()
            del p

        if not work_was_waiting:
            return
        flags = self.executor_flags
        # A shut-down or collected executor still owes its queued work (only
        # kill_workers or a broken pool drops it): restore its strength too,
        # else that work would wait for ever (and so would interpreter exit).
        if flags.broken is not None or flags.kill_workers:
            return
        executor = self.executor_reference()
        if executor is not None:
            self.max_workers = executor._max_workers
        if len(self.processes) >= self.max_workers:
            return
        with self.processes_management_lock:
            if executor is not None:
                executor._adjust_process_count()
            else:
                # Collected: spawn with the manager's own references.
                _spawn_workers(
                    self.processes,
                    self.max_workers,
                    call_queue=self.call_queue,
                    result_queue=self.result_queue,
                    processes_management_lock=self.processes_management_lock,
                    **self.worker_spawn_args,
                )
        executor = None
        # Warn only once the pool is back to strength: with warnings turned
        # into errors, this raise must not cost a worker.
        if isinstance(pid, _RecycledWorkerPid):
            if not self.recycling_warned:
                self.recycling_warned = True
                warnings.warn(
                    "A worker was restarted while some jobs were given to the executor "
                    "because it was using more than "
                    f"{_MAX_MEMORY_LEAK_SIZE / 1e6:.0f} MB more memory than when it "
                    "started, which usually indicates a memory leak. Further restarts "
                    "of this executor will not be reported.",
                    UserWarning,
                    stacklevel=2,
                )
        else:
            warnings.warn(_WORKER_STOPPED_MESSAGE, UserWarning, stacklevel=2)

    def is_shutting_down(self):
        if _global_shutdown:
            return True
        executor_gone = self.executor_reference() is None
        flags = self.executor_flags
        return (executor_gone or flags.shutdown) and flags.broken is None

    def terminate_broken(self, bpe):
        """Fail every pending future with ``bpe``, kill the workers, clean up."""
        self.executor_flags.flag_as_broken(bpe)
        # The workers leave _processes before any caller sees the error: a
        # broken executor has no workers any more (the kill itself comes
        # after failing the futures, so callers learn of the crash at once).
        with self.processes_management_lock:
            processes = list(self.processes.items())
            self.processes.clear()
        pending = self.pending_work_items
        # Pop while iterating: a done-callback may submit meanwhile (its
        # submit then raises the stored broken error).
        while pending:
            try:
                _, work_item = pending.popitem()
            except KeyError:
                break
            _fail_unless_cancelled(work_item.future, bpe)
            del work_item
        # Let the callers woken above take the GIL before the (Python-heavy)
        # tree kill: they see their exception now, not a switch interval later.
        _yield_gil()
        self.kill_workers(reason="broken executor", processes=processes)
        self.join_executor_internals(broken=True)

    def flag_executor_shutting_down(self):
        flags = self.executor_flags
        flags.flag_as_shutting_down()
        if not flags.kill_workers:
            return
        # Drain the ids first so nothing is moved to the call queue any more.
        while True:
            try:
                self.work_ids_queue.get_nowait()
            except queue.Empty:
                break
        pending = self.pending_work_items
        while pending:
            try:
                _, work_item = pending.popitem()
            except KeyError:
                break
            _fail_unless_cancelled(
                work_item.future, ShutdownExecutorError(_SHUTDOWN_KILL_MESSAGE)
            )
            del work_item
        self.kill_workers(reason="executor shutting down")

    def kill_workers(self, reason="", *, processes=None):
        """Tree-kill every worker (or the (pid, process) pairs given, already
        taken out of ``self.processes``)."""
        mp_util.debug(f"Killing workers: {reason}")
        with self.processes_management_lock:
            if processes is None:
                processes = list(self.processes.items())
            self.processes.clear()
        for _pid, p in processes:
            try:
                kill_process_tree(p)
            except ProcessLookupError:
                pass
        # Nobody reads the call queue any more: close our reading end too so
        # a feeder blocked on a full pipe gets EPIPE instead of blocking for ever.
        try:
            self.call_queue._reader.close()
        except Exception:
            pass

    def join_executor_internals(self, broken=False):
        processes = self.processes
        with self.processes_management_lock:
            live = list(processes.values())
        # Workers exiting now need no go-ahead: nobody will read their pid.
        for p in live:
            try:
                p._worker_exit_lock.release()
            except (ValueError, AttributeError):
                pass
        if not broken:
            self._send_sentinels(len(live))
        call_queue = self.call_queue
        call_queue.close()
        call_queue.join_thread()
        with self.shutdown_lock:
            self.thread_wakeup.close()
        while processes:
            try:
                _, p = processes.popitem()
            except KeyError:
                break
            p.join()
        # Last: exiting workers write their pid into it.
        self.result_queue.close()
        mp_util.debug("executor management thread clean shutdown of worker processes")

    def _send_sentinels(self, n_workers):
        deadline = time.monotonic() + 5.0
        sent = 0
        while sent < n_workers and time.monotonic() < deadline:
            try:
                self.call_queue.put_nowait(None)
                sent += 1
            except queue.Full:
                time.sleep(1e-3)


# ---------------------------------------------------------------------------
# Checks run by the constructor
# ---------------------------------------------------------------------------


_system_limits_checked = False
_system_limited = None


def _check_system_limits():
    """Fail early when the OS gives too few POSIX semaphores (cached)."""
    global _system_limits_checked, _system_limited
    if _system_limits_checked:
        if _system_limited:
            raise NotImplementedError(_system_limited)
        return
    _system_limits_checked = True
    try:
        nsems_max = os.sysconf("SC_SEM_NSEMS_MAX")
    except (AttributeError, ValueError):
        return  # undefined limit
    if nsems_max == -1:
        return  # indeterminate limit, assume enough
    if nsems_max >= 256:
        return
    _system_limited = (
        f"system provides too few semaphores ({nsems_max} available, 256 necessary)"
    )
    raise NotImplementedError(_system_limited)


def _check_max_depth(context):
    """Refuse to nest executors deeper than ``MAX_DEPTH`` (or at all under fork)."""
    if context.get_start_method() == "fork" and _CURRENT_DEPTH > 0:
        raise LokyRecursionError(
            "Could not spawn extra nested processes at depth superior to MAX_DEPTH=1. "
            "It is not possible to increase this limit when using the 'fork' start method."
        )
    if 0 < MAX_DEPTH and _CURRENT_DEPTH + 1 > MAX_DEPTH:
        raise LokyRecursionError(
            "Could not spawn extra nested processes at depth superior to "
            f"MAX_DEPTH={MAX_DEPTH}. If this is intendend, you can change this limit "
            "with the LOKY_MAX_DEPTH environment variable."
        )


def _resolve_pickle_check(mode):
    """The check mode to use: ``mode``, else ``$LOKY_PICKLE_CHECK``, else "off"."""
    if mode is None:
        value = os.environ.get("LOKY_PICKLE_CHECK") or "off"
        if value not in PICKLE_CHECK_MODES:
            raise ValueError(
                "LOKY_PICKLE_CHECK must be one of 'off', 'warn', 'error', 'wrap', "
                f"got {value!r}"
            )
        return value
    if not isinstance(mode, str) or mode not in PICKLE_CHECK_MODES:
        raise ValueError(
            "pickle_check must be one of 'off', 'warn', 'error', 'wrap' or None, "
            f"got {mode!r}"
        )
    return mode


def _check_worker_setup(mode, **parts):
    # Lazy, like the checker: loky imports loky_check only in a check mode.
    from loky_check.runtime import check_worker_setup

    check_worker_setup(mode, **parts)


def _make_pickle_checker(mode, executor):
    # Lazy: loky never imports loky_check unless a check mode is on.
    from loky_check.runtime import SubmitChecker

    return SubmitChecker(mode, job_reducers=executor._job_reducers)


def _spawn_workers(
    processes,
    max_workers,
    *,
    context,
    call_queue,
    result_queue,
    initializer,
    initargs,
    processes_management_lock,
    timeout,
    env,
):
    """Start workers until ``processes`` (pid -> process) holds ``max_workers``
    (caller holds the management lock)."""
    while len(processes) < max_workers:
        worker_exit_lock = context.BoundedSemaphore(1)
        worker_exit_lock.acquire()
        args = (
            call_queue,
            result_queue,
            initializer,
            initargs,
            processes_management_lock,
            timeout,
            worker_exit_lock,
            _CURRENT_DEPTH + 1,
        )
        try:
            p = context.Process(target=_process_worker, args=args, env=env)
        except TypeError:
            # Stdlib contexts and LokyInitMainProcess take no env.
            p = context.Process(target=_process_worker, args=args)
        p._worker_exit_lock = worker_exit_lock
        p.start()
        processes[p.pid] = p
    mp_util.debug(f"Adjusted process count to {max_workers}: {list(processes)}")


def _python_exit():
    """At interpreter exit: let every executor finish its queued work."""
    global _global_shutdown
    _global_shutdown = True
    with _global_shutdown_lock:
        items = list(_threads_wakeups.items())
    if items:
        mp_util.debug(
            f"Interpreter shutting down. Waking up {len(items)} executor_manager_thread"
        )
    for _thread, (shutdown_lock, thread_wakeup) in items:
        with shutdown_lock:
            thread_wakeup.wakeup()
    current = threading.current_thread()
    for thread, _ in items:
        if thread is not current and thread.is_alive():
            thread.join()


def _called_from_pool_thread(manager):
    """True in ``manager`` itself or in its call queue's feeder thread.

    Done-callbacks run in both (the feeder's error hook fails the future of a
    task that did not pickle), and the manager's teardown joins the feeder:
    joining the manager from either would wait for ever.
    """
    current = threading.current_thread()
    if current is manager:
        return True
    feeder = getattr(getattr(manager, "call_queue", None), "_thread", None)
    return feeder is not None and current is feeder


def _chain_from_iterable_of_lists(iterable):
    """Flatten lazily, dropping each element once yielded."""
    for element in iterable:
        element.reverse()
        while element:
            yield element.pop()


def _get_chunks(chunksize, *iterables):
    it = zip(*iterables, strict=False)
    while True:
        chunk = tuple(itertools.islice(it, chunksize))
        if not chunk:
            return
        yield chunk


# ---------------------------------------------------------------------------
# The executor
# ---------------------------------------------------------------------------


class ProcessPoolExecutor(Executor):
    """A process pool that survives anything its tasks do.

    ``max_workers`` defaults to ``cpu_count()``; ``job_reducers`` /
    ``result_reducers`` customise how tasks / results are pickled; ``timeout``
    is the idle time after which a worker exits (None: never); ``context`` is
    a loky or multiprocessing context; ``initializer(*initargs)`` runs in each
    new worker; ``env`` adds environment variables for the workers (loky
    contexts only); ``pickle_check`` turns on the pickling check mode.
    """

    _at_exit = None
    # (manager thread, wakeup) of a shutdown(wait=False) still in progress.
    _stopping_manager = None

    def __init__(
        self,
        max_workers=None,
        job_reducers=None,
        result_reducers=None,
        timeout=None,
        context=None,
        initializer=None,
        initargs=(),
        env=None,
        pickle_check=None,
    ):
        _check_system_limits()

        if max_workers is None:
            self._max_workers = cpu_count()
        else:
            if max_workers <= 0:
                raise ValueError("max_workers must be greater than 0")
            self._max_workers = max_workers
        if sys.platform == "win32":
            from .backend.context import _MAX_WINDOWS_WORKERS

            if self._max_workers > _MAX_WINDOWS_WORKERS:
                warnings.warn(
                    f"On Windows, max_workers cannot exceed {_MAX_WINDOWS_WORKERS} "
                    "due to limitations of the operating system.",
                    UserWarning,
                    stacklevel=2,
                )
                self._max_workers = _MAX_WINDOWS_WORKERS

        if context is None:
            context = get_context()
        elif isinstance(context, str):
            # A start method's name (loky's get_reusable_executor takes one too);
            # an unknown one is get_context's clear ValueError.
            context = get_context(context)
        self._context = context
        self._env = env

        self._initializer, self._initargs = _prepare_initializer(initializer, initargs)
        _check_max_depth(self._context)

        if result_reducers is None:
            result_reducers = job_reducers
        self._job_reducers = job_reducers
        self._result_reducers = result_reducers

        # Validated before any resource is created.
        self._pickle_check = _resolve_pickle_check(pickle_check)
        if self._pickle_check != "off":
            _check_worker_setup(
                self._pickle_check,
                initializer=initializer,
                initargs=initargs,
                job_reducers=job_reducers,
                result_reducers=None
                if result_reducers is job_reducers
                else result_reducers,
            )

        self._timeout = timeout
        self._processes = {}
        self._pending_work_items = {}
        self._running_work_items = []
        self._work_ids = queue.Queue()
        self._queue_count = 0
        self._processes_management_lock = self._context.Lock()
        self._shutdown_lock = threading.Lock()
        # Held by whoever moves work to the call queue (manager or submit).
        self._call_item_lock = threading.RLock()
        self._executor_manager_thread = None
        self._executor_manager_thread_wakeup = _ThreadWakeup()
        self._flags = _ExecutorFlags(self._shutdown_lock)

        self._setup_queues(job_reducers, result_reducers)

        # None when off: the submit path then costs a single attribute test.
        self._pickle_checker = (
            None
            if self._pickle_check == "off"
            else _make_pickle_checker(self._pickle_check, self)
        )
        mp_util.debug("ProcessPoolExecutor is setup")

    def _setup_queues(self, job_reducers, result_reducers, queue_size=None):
        if queue_size is None:
            queue_size = 2 * self._max_workers + EXTRA_QUEUED_CALLS
        self._call_queue = _SafeQueue(
            max_size=queue_size,
            pending_work_items=self._pending_work_items,
            running_work_items=self._running_work_items,
            thread_wakeup=self._executor_manager_thread_wakeup,
            shutdown_lock=self._shutdown_lock,
            executor_flags=self._flags,
            reducers=job_reducers,
            ctx=self._context,
        )
        # EPIPE when a worker was killed is expected: its sentinel reports it.
        self._call_queue._ignore_epipe = True
        self._result_queue = SimpleQueue(reducers=result_reducers, ctx=self._context)

    def _start_executor_manager_thread(self):
        if self._executor_manager_thread is not None:
            return
        global process_pool_executor_at_exit
        with _global_shutdown_lock:
            if process_pool_executor_at_exit is None:
                # Before non-daemon threads are joined and queue finalizers run.
                try:
                    threading._register_atexit(_python_exit)
                except RuntimeError:  # interpreter already shutting down
                    pass
                process_pool_executor_at_exit = _python_exit
        thread = _ExecutorManagerThread(self)
        thread.start()
        self._executor_manager_thread = thread
        with _global_shutdown_lock:
            _threads_wakeups[thread] = (
                self._shutdown_lock,
                self._executor_manager_thread_wakeup,
            )

    def _adjust_process_count(self):
        """Spawn workers up to ``_max_workers`` (caller holds the management lock)."""
        call_queue = self._call_queue
        result_queue = self._result_queue
        management_lock = self._processes_management_lock
        if call_queue is None or result_queue is None or management_lock is None:
            # shutdown(wait=False) dropped these (maybe just now, from another
            # thread) while queued work still needs workers: the manager still
            # holds them.
            manager = self._executor_manager_thread
            if manager is None and self._stopping_manager is not None:
                manager = self._stopping_manager[0]
            if manager is None:
                return
            call_queue = manager.call_queue
            result_queue = manager.result_queue
            management_lock = manager.processes_management_lock
        _spawn_workers(
            self._processes,
            self._max_workers,
            context=self._context,
            call_queue=call_queue,
            result_queue=result_queue,
            initializer=self._initializer,
            initargs=self._initargs,
            processes_management_lock=management_lock,
            timeout=self._timeout,
            env=self._env,
        )

    def _ensure_executor_running(self):
        """Spawn missing workers and start the manager thread if needed."""
        with self._processes_management_lock:
            if len(self._processes) != self._max_workers:
                self._adjust_process_count()
            self._start_executor_manager_thread()

    def _raise_if_unusable(self):
        flags = self._flags
        if flags.broken is not None:
            raise flags.broken
        if flags.shutdown:
            raise ShutdownExecutorError("cannot schedule new futures after shutdown")
        if _global_shutdown:
            raise RuntimeError("cannot schedule new futures after interpreter shutdown")

    def submit(self, fn, /, *args, **kwargs):
        checker = self._pickle_checker
        if checker is None:
            payload = None
        else:
            # The pickling check hook. Outside the lock: it may be slow and
            # emit warnings (whose handlers could call back into us).
            with self._flags.shutdown_lock:
                self._raise_if_unusable()
            fn, args, kwargs, payload = checker.check_submit(fn, args, kwargs)
            if payload is not None:
                if not isinstance(payload, bytes):
                    payload = bytes(payload)
                # Already pickled: do not send (and pickle) the call twice.
                fn = args = kwargs = None

        with self._flags.shutdown_lock:
            self._raise_if_unusable()
            future = _base.Future()
            work_id = self._queue_count
            self._pending_work_items[work_id] = _WorkItem(
                future, fn, args, kwargs, payload
            )
            self._work_ids.put(work_id)
            self._queue_count = work_id + 1
            if (
                self._executor_manager_thread is None
                or len(self._processes) != self._max_workers
            ):
                self._ensure_executor_running()
            # Hand the work to a free worker now rather than through the
            # manager thread (one thread hop less on the way to the worker).
            with self._call_item_lock:
                _move_work_to_call_queue(
                    self._call_queue,
                    self._work_ids,
                    self._pending_work_items,
                    self._running_work_items,
                    None if self._pickle_check == "off" else self._pickle_check,
                )
            self._executor_manager_thread_wakeup.wakeup()
            return future

    submit.__doc__ = Executor.submit.__doc__

    def map(self, fn, *iterables, **kwargs):
        """Like ``Executor.map``; ``chunksize`` tasks' worth of items per task.

        Results come in input order, lazily; ``timeout`` bounds the whole
        iteration. Extra keyword arguments are ignored.
        """
        timeout = kwargs.get("timeout", None)
        chunksize = kwargs.get("chunksize", 1)
        if chunksize < 1:
            raise ValueError("chunksize must be >= 1.")
        chunks = _get_chunks(chunksize, *iterables)
        checker = self._pickle_checker
        if checker is not None:
            # Optional checker hook: under pickle_check="error" every chunk is
            # checked before any is queued (its payloads are kept for submit).
            check_map = getattr(checker, "check_map", None)
            if check_map is not None:
                chunks = check_map(fn, chunks)
        results = super().map(
            _process_chunk,
            itertools.repeat(fn),
            chunks,
            timeout=timeout,
        )
        return _chain_from_iterable_of_lists(results)

    def shutdown(self, wait=True, kill_workers=False, *, cancel_futures=False):
        """Stop accepting work; finish it (or, with ``kill_workers``, drop it
        and kill the workers); with ``wait``, return once all is cleaned up."""
        mp_util.debug(f"shutting down executor {self}")
        # A kill once asked for stays asked for: a later plain shutdown (e.g.
        # leaving a with block) must not turn it back into "finish the jobs".
        self._flags.flag_as_shutting_down(True if kill_workers else None)
        if cancel_futures:
            self._cancel_queued_futures()
        manager = self._executor_manager_thread
        wakeup = self._executor_manager_thread_wakeup
        if manager is None and self._stopping_manager is not None:
            # An earlier shutdown(wait=False) dropped the references. Like the
            # stdlib, a later call does not wait for the jobs it let finish;
            # but a kill asked for now is carried out (and waited for) at once.
            stopping, wakeup = self._stopping_manager
            if self._flags.kill_workers:
                manager = stopping
        if wakeup is not None:
            with self._shutdown_lock:
                wakeup.wakeup()
        if manager is None:
            if self._stopping_manager is None:
                # Never started: nobody else will close the queues.
                self._close_unused_queues()
        elif wait:
            if not _called_from_pool_thread(manager):
                manager.join()
            with _global_shutdown_lock:
                _threads_wakeups.pop(manager, None)
            self._stopping_manager = None
        else:
            self._stopping_manager = (manager, wakeup)
        # Drop the references so that their fds are released.
        self._executor_manager_thread = None
        self._executor_manager_thread_wakeup = None
        self._call_queue = None
        self._result_queue = None
        self._processes_management_lock = None

    def _cancel_queued_futures(self):
        while True:
            try:
                work_id = self._work_ids.get_nowait()
            except queue.Empty:
                break
            work_item = self._pending_work_items.pop(work_id, None)
            if work_item is not None:
                work_item.future.cancel()
                _notify_cancelled(work_item.future)

    def _close_unused_queues(self):
        call_queue = self._call_queue
        if call_queue is not None:
            call_queue.close()
            call_queue.join_thread()
        result_queue = self._result_queue
        if result_queue is not None:
            result_queue.close()
        wakeup = self._executor_manager_thread_wakeup
        if wakeup is not None:
            with self._shutdown_lock:
                wakeup.close()
