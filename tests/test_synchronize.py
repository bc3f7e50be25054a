"""loky.backend.synchronize: primitives over tracked, named POSIX semaphores."""

from __future__ import annotations

import gc
import os
import pickle
import re
import signal
import sys
import threading
from multiprocessing.context import set_spawning_popen

import pytest

from loky.backend import resource_tracker, synchronize
from loky.backend.context import get_context

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX semaphores")

NAME_RE = re.compile(rf"^/loky-{os.getpid()}-[a-z0-9_]+$")


def _shm_path(name: str) -> str:
    return "/dev/shm/sem." + name.lstrip("/")


class FakePopen:
    def duplicate_for_child(self, fd):
        return fd


@pytest.fixture
def tracker_calls(monkeypatch):
    calls = []
    tracker = resource_tracker._resource_tracker
    original_register = tracker.register
    original_unregister = tracker.unregister

    def register(name, rtype):
        calls.append(("register", name, rtype))
        original_register(name, rtype)

    def unregister(name, rtype):
        calls.append(("unregister", name, rtype))
        original_unregister(name, rtype)

    monkeypatch.setattr(tracker, "register", register)
    monkeypatch.setattr(tracker, "unregister", unregister)
    return calls


def test_all_names():
    assert synchronize.__all__ == [
        "Lock",
        "RLock",
        "Semaphore",
        "BoundedSemaphore",
        "Condition",
        "Event",
    ]
    assert synchronize._SemLock._rebuild
    assert callable(synchronize.sem_unlink)


@pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="needs /dev/shm")
def test_named_tracked_and_unlinked_by_finalizer(tracker_calls):
    lock = synchronize.Lock()
    real_name = lock._semlock.name
    assert lock.name is None
    assert NAME_RE.match(real_name), real_name
    assert os.path.exists(_shm_path(real_name))  # not unlinked at creation
    assert ("register", real_name, "semlock") in tracker_calls
    del lock
    gc.collect()
    assert not os.path.exists(_shm_path(real_name))
    assert tracker_calls[-1] == ("unregister", real_name, "semlock")


def test_explicit_name_used_as_is():
    name = f"/loky-{os.getpid()}-explicit"
    sem = synchronize.SemLock(synchronize.SEMAPHORE, 1, 1, name=name)
    try:
        assert sem.name == name
        assert sem._semlock.name == name
        with pytest.raises(FileExistsError):
            synchronize.SemLock(synchronize.SEMAPHORE, 1, 1, name=name)
    finally:
        del sem
        gc.collect()


def test_cannot_find_name(monkeypatch):
    taken = synchronize.Lock()
    suffix = taken._semlock.name.rsplit("-", 1)[1]

    def same_names():
        while True:
            yield suffix

    generator = same_names()
    monkeypatch.setattr(synchronize, "_random_names", lambda: generator)
    with pytest.raises(FileExistsError, match="^cannot find name for semaphore$"):
        synchronize.Lock()


def test_lock_semantics_and_messages():
    lock = synchronize.Lock()
    assert repr(lock) == "<Lock(owner=None)>"
    assert lock.acquire()
    assert repr(lock) == "<Lock(owner=MainProcess)>"
    assert not lock.acquire(timeout=0.01)
    lock.release()
    with pytest.raises(ValueError, match="released too many times"):
        lock.release()
    with lock:
        assert not lock.acquire(False)


def test_rlock_semantics_and_messages():
    rlock = synchronize.RLock()
    rlock.acquire()
    rlock.acquire()
    assert repr(rlock) == "<RLock(MainProcess, 2)>"
    errors = []

    def release_from_other_thread():
        try:
            rlock.release()
        except AssertionError as e:
            errors.append(str(e))

    t = threading.Thread(target=release_from_other_thread)
    t.start()
    t.join()
    assert errors and "not owned by thread" in errors[0]
    rlock.release()
    rlock.release()
    assert repr(rlock) == "<RLock(None, 0)>"


def test_semaphores():
    sem = synchronize.Semaphore(2)
    assert sem.get_value() == 2
    assert repr(sem) == "<Semaphore(value=2)>"
    sem.acquire()
    sem.release()
    sem.release()  # unbounded
    assert sem.get_value() == 3
    bounded = synchronize.BoundedSemaphore(2)
    assert repr(bounded) == "<BoundedSemaphore(value=2, maxvalue=2)>"
    bounded.acquire()
    bounded.release()
    with pytest.raises(ValueError):
        bounded.release()
    assert bounded.get_value() == 2


def test_get_value_on_macos_message(monkeypatch):
    sem = synchronize.Semaphore(1)
    monkeypatch.setattr(sys, "platform", "darwin")
    with pytest.raises(
        NotImplementedError, match="^OSX does not implement sem_getvalue$"
    ):
        sem.get_value()


def test_pickled_only_while_spawning():
    lock = synchronize.Lock()
    with pytest.raises(RuntimeError, match="should only be shared between processes"):
        pickle.dumps(lock)
    set_spawning_popen(FakePopen())
    try:
        state = lock.__getstate__()
    finally:
        set_spawning_popen(None)
    sl = lock._semlock
    assert state == (sl.handle, sl.kind, sl.maxvalue, sl.name)
    clone = synchronize.Lock.__new__(synchronize.Lock)
    clone.__setstate__(state)
    # Reopened by name: same underlying semaphore.
    assert clone.acquire(False)
    assert not lock.acquire(False)
    clone.release()
    # Once unlinked, the name cannot be reopened.
    name = sl.name
    del lock, clone, sl
    gc.collect()
    with pytest.raises(FileNotFoundError):
        synchronize._SemLock._rebuild(0, synchronize.SEMAPHORE, 1, name)


def test_condition_in_threads():
    cond = synchronize.Condition()
    with cond:
        assert cond.wait(0.01) is False
    state = []
    woken = []

    def waiter():
        with cond:
            woken.append(cond.wait_for(lambda: state, timeout=30))

    threads = [threading.Thread(target=waiter) for _ in range(3)]
    for t in threads:
        t.start()
    with cond:
        state.append(1)
        cond.notify_all()
    for t in threads:
        t.join(timeout=30)
    assert not any(t.is_alive() for t in threads)
    assert woken == [[1]] * 3
    assert cond.wait_for(lambda: True) is True
    assert "Condition(<RLock(None, 0)>" in repr(cond)


def test_condition_wait_for_timeout():
    cond = synchronize.Condition(synchronize.Lock())
    with cond:
        assert cond.wait_for(lambda: False, timeout=0.02) is False


def test_condition_requires_the_lock():
    cond = synchronize.Condition()
    with pytest.raises(AssertionError, match="must acquire"):
        cond.wait(0)
    with pytest.raises(AssertionError, match="lock is not owned"):
        cond.notify()


def test_sigint_interrupts_condition_wait():
    cond = synchronize.Condition()
    interrupted = threading.Event()

    def interrupt_main():
        # Repeat until the main thread reports it: the signal may land just
        # before it blocks.
        for _ in range(100):
            if cond._sleeping_count.get_value() >= 1:
                signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)
            if interrupted.wait(0.1):
                return

    t = threading.Thread(target=interrupt_main)
    t.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            with cond:
                cond.wait()
    finally:
        interrupted.set()
        t.join()


def test_event_in_threads():
    event = synchronize.Event()
    assert not event.is_set()
    assert event.wait(0.01) is False
    assert repr(event).endswith(" unset>")
    t = threading.Thread(target=event.set)
    t.start()
    assert event.wait(30) is True
    t.join()
    assert event.is_set()
    assert repr(event).endswith(" set>")
    event.clear()
    assert not event.is_set()


# --- across processes ------------------------------------------------------------


def _child_contend(lock, counter_queue, n):
    for _ in range(n):
        with lock:
            counter_queue.put(os.getpid())


def _child_notify(cond, event, sem):
    sem.release()  # tell the parent we run
    event.set()
    with cond:
        cond.notify_all()


def _child_make_semaphore(result_queue):
    sem = synchronize.Semaphore(0)
    result_queue.put(sem._semlock.name)


def _start(ctx, target, args):
    p = ctx.Process(target=target, args=args)
    p.start()
    return p


def _join(p):
    p.join(timeout=60)
    if p.exitcode is None:
        p.kill()
        p.join()
    assert p.exitcode == 0


@pytest.fixture
def stop_forkserver():
    yield
    from multiprocessing import forkserver

    forkserver._forkserver._stop()


@pytest.mark.parametrize(
    "method", ["loky", "loky_init_main", "spawn", "fork", "forkserver"]
)
def test_event_and_condition_across_processes(method, stop_forkserver):
    import multiprocessing

    if method in ("loky", "loky_init_main"):
        ctx = get_context(method)
        cond, event, sem = ctx.Condition(), ctx.Event(), ctx.Semaphore(0)
    else:
        # loky primitives handed to processes of the stdlib start methods.
        ctx = multiprocessing.get_context(method)
        cond = synchronize.Condition()
        event = synchronize.Event()
        sem = synchronize.Semaphore(0)
    assert isinstance(cond, synchronize.Condition)
    assert isinstance(event, synchronize.Event)
    p = _start(ctx, _child_notify, (cond, event, sem))
    try:
        assert sem.acquire(timeout=60)
        assert event.wait(60)
    finally:
        _join(p)


def test_lock_shared_with_child():
    from loky.backend.queues import SimpleQueue

    ctx = get_context("loky")
    lock = ctx.Lock()
    out = SimpleQueue(ctx=ctx)
    lock.acquire()
    p = _start(ctx, _child_contend, (lock, out, 3))
    try:
        # The child is blocked until the parent releases the shared lock.
        assert out.empty()
        lock.release()
        assert [out.get() for _ in range(3)] == [p.pid] * 3
    finally:
        _join(p)
        out.close()


@pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="needs /dev/shm")
def test_semaphore_made_in_child_is_unlinked_at_exit():
    from loky.backend.queues import SimpleQueue

    ctx = get_context("loky")
    out = SimpleQueue(ctx=ctx)
    p = _start(ctx, _child_make_semaphore, (out,))
    try:
        name = out.get()
    finally:
        _join(p)
        out.close()
    assert name.startswith(f"/loky-{p.pid}-")
    assert not os.path.exists(_shm_path(name))
