"""Cross-process synchronisation primitives over named POSIX semaphores.

Unlike the stdlib's, semaphores are named ``/loky-<pid>-<random>``, are not unlinked
at creation (children spawned later reopen them by name) and are registered with
loky's resource tracker, which removes them if their creator dies. A finalizer
unlinks them when the creating process collects them or exits normally.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from multiprocessing import process, util
from multiprocessing.context import assert_spawning

from . import resource_tracker

try:
    from _multiprocessing import SemLock as _SemLock
    from _multiprocessing import sem_unlink
except ImportError as e:  # pragma: no cover - platform without sem_open
    raise ImportError(
        "This platform lacks a functioning sem_open implementation, therefore, "
        "the required synchronization primitives needed will not function, "
        "see issue 3770."
    ) from e

__all__ = ["Lock", "RLock", "Semaphore", "BoundedSemaphore", "Condition", "Event"]

RECURSIVE_MUTEX, SEMAPHORE = range(2)
SEM_VALUE_MAX = _SemLock.SEM_VALUE_MAX


def _random_names():
    # Share the stdlib's generator: one random source for every semaphore name.
    from multiprocessing.synchronize import SemLock as _mpSemLock

    return _mpSemLock._rand


class SemLock:
    """Base of the primitives: wraps a named ``_multiprocessing.SemLock``."""

    def __init__(self, kind: int, value: int, maxvalue: int, name: str | None = None):
        self.name = name
        if name is not None:
            # An explicit name is used as is (FileExistsError if taken).
            self._semlock = _SemLock(kind, value, maxvalue, name, False)
        else:
            rand = _random_names()
            for _ in range(100):
                # Short names: macOS limits them to 31 characters.
                candidate = f"/loky-{os.getpid()}-{next(rand)}"
                try:
                    self._semlock = _SemLock(kind, value, maxvalue, candidate, False)
                except FileExistsError:
                    continue
                break
            else:
                raise FileExistsError("cannot find name for semaphore")
        real_name = self._semlock.name
        util.debug(f"created semlock with handle {self._semlock.handle} ({real_name})")
        self._make_methods()

        def _after_fork(obj):
            obj._semlock._after_fork()

        util.register_after_fork(self, _after_fork)

        # The tracker unlinks the name if this process dies without doing it.
        resource_tracker.register(real_name, "semlock")
        util.Finalize(self, SemLock._cleanup, (real_name,), exitpriority=0)

    @staticmethod
    def _cleanup(name: str) -> None:
        try:
            sem_unlink(name)
        except FileNotFoundError:
            pass
        finally:
            resource_tracker.unregister(name, "semlock")

    def _make_methods(self):
        self.acquire = self._semlock.acquire
        self.release = self._semlock.release

    def __enter__(self):
        return self._semlock.__enter__()

    def __exit__(self, *args):
        return self._semlock.__exit__(*args)

    def __getstate__(self):
        assert_spawning(self)
        sl = self._semlock
        h = sl.handle
        if sys.platform == "win32":  # pragma: no cover - loky uses stdlib ones there
            from multiprocessing.context import get_spawning_popen

            h = get_spawning_popen().duplicate_for_child(sl.handle)
        return (h, sl.kind, sl.maxvalue, sl.name)

    def __setstate__(self, state):
        # Reopen the semaphore by name (FileNotFoundError once it was unlinked).
        self._semlock = _SemLock._rebuild(*state)
        self.name = None
        util.debug(f"recreated blocker with handle {state[0]!r} and name {state[3]!r}")
        self._make_methods()


class Semaphore(SemLock):
    def __init__(self, value: int = 1):
        SemLock.__init__(self, SEMAPHORE, value, SEM_VALUE_MAX)

    def get_value(self) -> int:
        if sys.platform == "darwin":
            raise NotImplementedError("OSX does not implement sem_getvalue")
        return self._semlock._get_value()

    def __repr__(self):
        try:
            value = self._semlock._get_value()
        except Exception:
            value = "unknown"
        return f"<{type(self).__name__}(value={value})>"


class BoundedSemaphore(Semaphore):
    def __init__(self, value: int = 1):
        SemLock.__init__(self, SEMAPHORE, value, value)

    def __repr__(self):
        try:
            value = self._semlock._get_value()
        except Exception:
            value = "unknown"
        return (
            f"<{type(self).__name__}(value={value}, maxvalue={self._semlock.maxvalue})>"
        )


def _owner_name() -> str:
    name = process.current_process().name
    if threading.current_thread().name != "MainThread":
        name += "|" + threading.current_thread().name
    return name


class Lock(SemLock):
    def __init__(self):
        SemLock.__init__(self, SEMAPHORE, 1, 1)

    def __repr__(self):
        try:
            if self._semlock._is_mine():
                name = _owner_name()
            elif self._semlock._get_value() == 1:
                name = "None"
            elif self._semlock._count() > 0:
                name = "SomeOtherThread"
            else:
                name = "SomeOtherProcess"
        except Exception:
            name = "unknown"
        return f"<{type(self).__name__}(owner={name})>"


class RLock(SemLock):
    def __init__(self):
        SemLock.__init__(self, RECURSIVE_MUTEX, 1, 1)

    def __repr__(self):
        try:
            if self._semlock._is_mine():
                name, count = _owner_name(), self._semlock._count()
            elif self._semlock._get_value() == 1:
                name, count = "None", 0
            elif self._semlock._count() > 0:
                name, count = "SomeOtherThread", "nonzero"
            else:
                name, count = "SomeOtherProcess", "nonzero"
        except Exception:
            name, count = "unknown", "unknown"
        return f"<{type(self).__name__}({name}, {count})>"


class Condition:
    """Condition variable (the stdlib algorithm) usable across processes."""

    def __init__(self, lock=None):
        self._lock = lock or RLock()
        self._sleeping_count = Semaphore(0)
        self._woken_count = Semaphore(0)
        self._wait_semaphore = Semaphore(0)
        self._make_methods()

    def __getstate__(self):
        assert_spawning(self)
        return (
            self._lock,
            self._sleeping_count,
            self._woken_count,
            self._wait_semaphore,
        )

    def __setstate__(self, state):
        (
            self._lock,
            self._sleeping_count,
            self._woken_count,
            self._wait_semaphore,
        ) = state
        self._make_methods()

    def __enter__(self):
        return self._lock.__enter__()

    def __exit__(self, *args):
        return self._lock.__exit__(*args)

    def _make_methods(self):
        self.acquire = self._lock.acquire
        self.release = self._lock.release

    def __repr__(self):
        try:
            num_waiters = (
                self._sleeping_count._semlock._get_value()
                - self._woken_count._semlock._get_value()
            )
        except Exception:
            num_waiters = "unknown"
        return f"<{type(self).__name__}({self._lock}, {num_waiters})>"

    def wait(self, timeout: float | None = None) -> bool:
        assert self._lock._semlock._is_mine(), (
            "must acquire() condition before using wait()"
        )
        # Announce that this thread is going to sleep, then release the lock
        # completely (it may be recursive).
        self._sleeping_count.release()
        count = self._lock._semlock._count()
        for _ in range(count):
            self._lock.release()
        try:
            return self._wait_semaphore.acquire(True, timeout)
        finally:
            self._woken_count.release()
            for _ in range(count):
                self._lock.acquire()

    def notify(self, n: int = 1) -> None:
        assert self._lock._semlock._is_mine(), "lock is not owned"
        assert not self._wait_semaphore.acquire(False), (
            "notify: Should not have been able to acquire _wait_semaphore"
        )
        # Account for waiters that timed out since the last notify: subtract
        # woken_count from sleeping_count and zero woken_count.
        while self._woken_count.acquire(False):
            res = self._sleeping_count.acquire(False)
            assert res, (
                "notify: Bug in sleeping_count.acquire - res should not be False"
            )
        sleepers = 0
        while sleepers < n and self._sleeping_count.acquire(False):
            self._wait_semaphore.release()
            sleepers += 1
        if sleepers:
            for _ in range(sleepers):
                self._woken_count.acquire()
            # Zero wait_semaphore in case some waiters just timed out.
            while self._wait_semaphore.acquire(False):
                pass

    def notify_all(self) -> None:
        self.notify(n=sys.maxsize)

    def wait_for(self, predicate, timeout: float | None = None):
        result = predicate()
        if result:
            return result
        endtime = None if timeout is None else time.monotonic() + timeout
        waittime = None
        while not result:
            if endtime is not None:
                waittime = endtime - time.monotonic()
                if waittime <= 0:
                    break
            self.wait(waittime)
            result = predicate()
        return result


class Event:
    """Event usable across processes (a Condition plus a flag semaphore)."""

    def __init__(self):
        self._cond = Condition(Lock())
        self._flag = Semaphore(0)

    def is_set(self) -> bool:
        with self._cond:
            if self._flag.acquire(False):
                self._flag.release()
                return True
            return False

    def set(self) -> None:
        with self._cond:
            self._flag.acquire(False)
            self._flag.release()
            self._cond.notify_all()

    def clear(self) -> None:
        with self._cond:
            self._flag.acquire(False)

    def wait(self, timeout: float | None = None) -> bool:
        with self._cond:
            if self._flag.acquire(False):
                self._flag.release()
            else:
                self._cond.wait(timeout)
            if self._flag.acquire(False):
                self._flag.release()
                return True
            return False

    def __repr__(self) -> str:
        set_status = "set" if self.is_set() else "unset"
        return f"<{type(self).__qualname__} at {id(self):#x} {set_status}>"
