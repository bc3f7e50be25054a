"""Queues whose traffic is pickled with loky's pickler (and optional reducers).

``Queue`` is the stdlib's feeder-thread queue; its feeder pickles each object with
:func:`reduction.dumps` outside the write lock, survives any pickling error
(``BaseException`` included) by releasing the item's capacity slot and calling the
``_on_queue_feeder_error(e, obj)`` hook, and can ignore EPIPE (readers gone).
``SimpleQueue`` pickles synchronously in ``put``.
"""

from __future__ import annotations

import collections
import errno
import os
import sys
import threading
import weakref
from multiprocessing import connection
from multiprocessing.context import assert_spawning
from multiprocessing.queues import Queue as _mpQueue
from multiprocessing.queues import SimpleQueue as _mpSimpleQueue
from multiprocessing.queues import _sentinel
from multiprocessing.util import Finalize, debug, info, is_exiting, register_after_fork
from queue import Full

from .reduction import dumps

__all__ = ["Queue", "SimpleQueue", "Full"]


def _default_context():
    # Imported lazily: the context module imports this one.
    try:
        from .context import get_context
    except ImportError:  # pragma: no cover - only while the backend is incomplete
        import multiprocessing

        return multiprocessing.get_context()
    return get_context()


class Queue(_mpQueue):
    """A multi-producer multi-consumer queue fed by a background thread."""

    def __init__(self, maxsize: int = 0, reducers: dict | None = None, ctx=None):
        if ctx is None:
            ctx = _default_context()
        if maxsize <= 0:
            from multiprocessing.synchronize import SEM_VALUE_MAX as maxsize
        self._maxsize = maxsize
        self._reader, self._writer = connection.Pipe(duplex=False)
        self._rlock = ctx.Lock()
        self._opid = os.getpid()
        # Writes to a message-oriented win32 pipe are atomic: no lock needed there.
        self._wlock = None if sys.platform == "win32" else ctx.Lock()
        self._sem = ctx.BoundedSemaphore(maxsize)
        # Set by the executor's call queue: a dead reader is detected elsewhere.
        self._ignore_epipe = False
        self._reducers = reducers
        self._reset()
        if sys.platform != "win32":
            register_after_fork(self, Queue._after_fork)

    def __getstate__(self):
        assert_spawning(self)
        return (
            self._ignore_epipe,
            self._maxsize,
            self._reader,
            self._writer,
            self._reducers,
            self._rlock,
            self._wlock,
            self._sem,
            self._opid,
        )

    def __setstate__(self, state):
        (
            self._ignore_epipe,
            self._maxsize,
            self._reader,
            self._writer,
            self._reducers,
            self._rlock,
            self._wlock,
            self._sem,
            self._opid,
        ) = state
        self._reset()

    def _after_fork(self):
        debug("Queue._after_fork()")
        self._reset(after_fork=True)

    def _reset(self, after_fork: bool = False):
        if after_fork:
            self._notempty._at_fork_reinit()
        else:
            self._notempty = threading.Condition(threading.Lock())
        self._buffer = collections.deque()
        self._thread = None
        self._jointhread = None
        self._joincancelled = False
        self._closed = False
        self._close = None
        self._send_bytes = self._writer.send_bytes
        self._recv_bytes = self._reader.recv_bytes
        self._poll = self._reader.poll

    def _start_thread(self):
        debug("Queue._start_thread()")
        self._buffer.clear()
        self._thread = threading.Thread(
            target=Queue._feed,
            args=(
                self._buffer,
                self._notempty,
                self._send_bytes,
                self._wlock,
                self._writer.close,
                self._reducers,
                self._ignore_epipe,
                self._on_queue_feeder_error,
                self._sem,
            ),
            name="QueueFeederThread",
            daemon=True,
        )
        debug("doing self._thread.start()")
        self._thread.start()
        debug("... done self._thread.start()")

        # The parent joins the feeder at exit so that buffered items are flushed;
        # a child that merely inherited the queue must not wait on it.
        if not self._joincancelled:
            self._jointhread = Finalize(
                self._thread,
                Queue._finalize_join,
                [weakref.ref(self._thread)],
                exitpriority=-5,
            )
        # Send the sentinel to the feeder when the queue is collected or closed.
        self._close = Finalize(
            self,
            Queue._finalize_close,
            [self._buffer, self._notempty],
            exitpriority=10,
        )

    @staticmethod
    def _feed(
        buffer,
        notempty,
        send_bytes,
        writelock,
        writer_close,
        reducers,
        ignore_epipe,
        onerror,
        queue_sem,
    ):
        debug("starting thread to feed data to pipe")
        nacquire = notempty.acquire
        nrelease = notempty.release
        nwait = notempty.wait
        bpopleft = buffer.popleft
        sentinel = _sentinel
        if writelock is not None:
            wacquire = writelock.acquire
            wrelease = writelock.release
        else:
            wacquire = None

        while True:
            obj = None
            try:
                nacquire()
                try:
                    if not buffer:
                        nwait()
                finally:
                    nrelease()
                try:
                    while True:
                        obj = bpopleft()
                        if obj is sentinel:
                            debug("feeder thread got sentinel -- exiting")
                            writer_close()
                            return
                        # Pickle before taking the lock: a slow __reduce__ must
                        # not block other writers.
                        payload = dumps(obj, reducers=reducers)
                        if wacquire is None:
                            send_bytes(payload)
                        else:
                            wacquire()
                            try:
                                send_bytes(payload)
                            finally:
                                wrelease()
                        # Drop references early: the queue must not keep the
                        # last sent object (and its arguments) alive.
                        del payload
                        obj = None
                except IndexError:
                    pass
            except BaseException as e:
                if ignore_epipe and getattr(e, "errno", 0) == errno.EPIPE:
                    return
                # Resources used by this daemon thread may become unusable while
                # the process cleans up: errors then are expected.
                if is_exiting():
                    info(f"error in queue thread: {e}")
                    return
                # The item never reached the pipe: give its slot back so that
                # repeated failures never exhaust the queue's capacity.
                queue_sem.release()
                try:
                    onerror(e, obj)
                except BaseException:
                    # A failing hook must not kill the feeder: later items
                    # would silently never be sent.
                    import traceback

                    traceback.print_exc()
                obj = None

    def _on_queue_feeder_error(self, e: BaseException, obj) -> None:
        """Hook called by the feeder thread when sending ``obj`` failed with ``e``.

        Meant to be overridden (the executor's call queue fails the matching
        future); the base implementation prints the traceback.
        """
        import traceback

        traceback.print_exception(type(e), e, e.__traceback__)


class SimpleQueue(_mpSimpleQueue):
    """A locked pipe; ``put`` pickles synchronously with the loky pickler."""

    def __init__(self, reducers: dict | None = None, ctx=None):
        if ctx is None:
            ctx = _default_context()
        self._reader, self._writer = connection.Pipe(duplex=False)
        self._rlock = ctx.Lock()
        self._poll = self._reader.poll
        self._wlock = None if sys.platform == "win32" else ctx.Lock()
        self._reducers = reducers

    def close(self) -> None:
        """Close both ends of the pipe (idempotent)."""
        self._reader.close()
        self._writer.close()

    def __getstate__(self):
        assert_spawning(self)
        return (self._reader, self._writer, self._reducers, self._rlock, self._wlock)

    def __setstate__(self, state):
        (self._reader, self._writer, self._reducers, self._rlock, self._wlock) = state
        self._poll = self._reader.poll

    def empty(self) -> bool:
        return not self._reader.poll()

    def put(self, obj) -> None:
        # Pickle before taking the lock: other writers are not blocked meanwhile.
        payload = dumps(obj, reducers=self._reducers)
        if self._wlock is None:
            self._writer.send_bytes(payload)
        else:
            with self._wlock:
                self._writer.send_bytes(payload)
