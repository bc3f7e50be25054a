"""loky.backend.queues: loky-pickled Queue/SimpleQueue, feeder error hook, EPIPE."""

from __future__ import annotations

import gc
import multiprocessing
import pickle
import threading
import weakref
from multiprocessing.context import set_spawning_popen

import pytest

from loky.backend import queues, reduction, synchronize
from loky.backend.context import get_context


class Unpicklable:
    def __reduce__(self):
        raise pickle.PicklingError("nope")


class ExitsWhenPickled:
    def __reduce__(self):
        raise SystemExit("from __reduce__")


class Value:
    def __init__(self, x):
        self.x = x


def _reduce_value(v):
    return int, (v.x + 1000,)


class RecordingQueue(queues.Queue):
    """Records the feeder errors; a real hook, like the executor's."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.errors = []
        self.error_event = threading.Event()

    def _on_queue_feeder_error(self, e, obj):
        self.errors.append((e, obj))
        self.error_event.set()


class FakePopen:
    """Enough of a Popen for ``assert_spawning`` / ``duplicate_for_child``."""

    def duplicate_for_child(self, fd):
        return fd


@pytest.fixture
def queue_factory():
    made = []

    def make(cls=queues.Queue, *args, **kwargs):
        q = cls(*args, **kwargs)
        made.append(q)
        return q

    yield make
    for q in made:
        if isinstance(q, queues.Queue):
            q.close()
            q.join_thread()
        else:
            q.close()


def test_full_is_reexported():
    import queue

    assert queues.Full is queue.Full


def test_default_context_is_loky(queue_factory):
    q = queue_factory()
    assert isinstance(q._rlock, synchronize.Lock)
    assert isinstance(q._sem, synchronize.BoundedSemaphore)
    sq = queue_factory(queues.SimpleQueue)
    assert isinstance(sq._rlock, synchronize.Lock)
    assert isinstance(sq._wlock, synchronize.Lock)


def test_queue_is_stdlib_subclass(queue_factory):
    from multiprocessing.queues import Queue, SimpleQueue

    assert isinstance(queue_factory(), Queue)
    assert isinstance(queue_factory(queues.SimpleQueue), SimpleQueue)


def test_queue_round_trip_with_lambda_and_reducers(queue_factory):
    q = queue_factory(queues.Queue, reducers={Value: _reduce_value})
    q.put(lambda x: x + 1)
    q.put(Value(1))
    assert q.get(timeout=10)(1) == 2
    assert q.get(timeout=10) == 1001
    assert q._reducers == {Value: _reduce_value}


def test_queue_full_and_capacity(queue_factory):
    q = queue_factory(queues.Queue, 1)
    q.put(1)
    with pytest.raises(queues.Full):
        q.put_nowait(2)
    assert q.get(timeout=10) == 1
    q.put_nowait(3)
    assert q.get(timeout=10) == 3


@pytest.mark.parametrize("bad_cls", [Unpicklable, ExitsWhenPickled])
def test_feeder_error_hook_releases_the_slot(queue_factory, bad_cls):
    q = queue_factory(RecordingQueue, 2)
    bad = [bad_cls() for _ in range(5)]
    # Many consecutive failures never exhaust the capacity of 2.
    for obj in bad:
        q.put(obj, timeout=10)
    q.put("ok", timeout=10)
    assert q.get(timeout=10) == "ok"
    assert len(q.errors) == 5
    assert [obj for _, obj in q.errors] == bad
    expected = pickle.PicklingError if bad_cls is Unpicklable else SystemExit
    assert all(type(e) is expected for e, _ in q.errors)
    assert q._thread.is_alive()


def test_base_hook_prints_traceback(queue_factory, capfd):
    q = queue_factory(queues.Queue)
    q.put(Unpicklable())
    q.put("after")
    assert q.get(timeout=10) == "after"
    err = capfd.readouterr().err
    assert "Traceback" in err
    assert "PicklingError: nope" in err


def test_feeder_drops_references_early(queue_factory):
    q = queue_factory()
    first = Value(1)
    ref = weakref.ref(first)
    q.put(first)
    assert q.get(timeout=10).x == 1
    del first
    # Once a second item went through, the feeder no longer holds the first.
    q.put(Value(2))
    assert q.get(timeout=10).x == 2
    gc.collect()
    assert ref() is None


@pytest.mark.parametrize("ignore_epipe", [True, False])
def test_epipe_handling(queue_factory, ignore_epipe):
    q = queue_factory(RecordingQueue)
    q._ignore_epipe = ignore_epipe
    q._reader.close()
    q.put(b"x" * 100)
    if ignore_epipe:
        q._thread.join(timeout=10)
        assert not q._thread.is_alive()
        assert q.errors == []
    else:
        assert q.error_event.wait(timeout=10)
        (e, obj), *_ = q.errors
        assert isinstance(e, BrokenPipeError)
        assert obj == b"x" * 100


def test_queue_pickles_only_while_spawning(queue_factory):
    q = queue_factory(queues.Queue, 3, reducers={Value: _reduce_value})
    with pytest.raises(RuntimeError, match="Queue objects should only be shared"):
        pickle.dumps(q)
    set_spawning_popen(FakePopen())
    try:
        state = q.__getstate__()
    finally:
        set_spawning_popen(None)
    assert len(state) == 9
    ignore_epipe, maxsize, reader, writer, reducers, rlock, wlock, sem, opid = state
    assert (ignore_epipe, maxsize, reducers) == (False, 3, {Value: _reduce_value})
    assert (reader, writer, rlock, wlock, sem) == (
        q._reader,
        q._writer,
        q._rlock,
        q._wlock,
        q._sem,
    )
    clone = queues.Queue.__new__(queues.Queue)
    clone.__setstate__(state)
    assert clone._thread is None and clone._buffer is not q._buffer
    assert clone._reducers == {Value: _reduce_value}


def test_simple_queue_pickles_only_while_spawning(queue_factory):
    sq = queue_factory(queues.SimpleQueue, reducers={Value: _reduce_value})
    with pytest.raises(RuntimeError, match="should only be shared"):
        pickle.dumps(sq)
    set_spawning_popen(FakePopen())
    try:
        state = sq.__getstate__()
    finally:
        set_spawning_popen(None)
    assert state == (
        sq._reader,
        sq._writer,
        {Value: _reduce_value},
        sq._rlock,
        sq._wlock,
    )


def test_simple_queue_sends_exactly_dumps(queue_factory):
    sq = queue_factory(queues.SimpleQueue, reducers={Value: _reduce_value})
    sq.put(Value(5))
    assert sq._reader.recv_bytes() == bytes(
        reduction.dumps(Value(5), reducers={Value: _reduce_value})
    )
    sq.put(None)
    assert sq._reader.recv_bytes() == bytes(reduction.dumps(None))
    assert sq.empty()
    sq.put(lambda: "lambda ok")
    assert not sq.empty()
    assert sq.get()() == "lambda ok"


def test_simple_queue_uses_current_pickler(queue_factory):
    sq = queue_factory(queues.SimpleQueue)
    reduction.set_loky_pickler("pickle")
    try:
        with pytest.raises((pickle.PicklingError, AttributeError)):
            sq.put(lambda: 1)
    finally:
        reduction.set_loky_pickler(None)
    sq.put(lambda: 2)
    assert sq.get()() == 2


def test_simple_queue_close_is_idempotent():
    sq = queues.SimpleQueue()
    sq.close()
    sq.close()
    assert sq._reader.closed and sq._writer.closed


# --- across processes ------------------------------------------------------------


def _child_echo(in_queue, out_queue):
    while True:
        item = in_queue.get()
        if item is None:
            break
        out_queue.put(item(10))
    out_queue.put("done")


@pytest.fixture
def stop_forkserver():
    yield
    from multiprocessing import forkserver

    forkserver._forkserver._stop()


@pytest.mark.parametrize(
    "method", ["loky", "loky_init_main", "spawn", "fork", "forkserver"]
)
def test_queues_across_processes(method, stop_forkserver):
    if method in ("spawn", "fork", "forkserver"):
        ctx = multiprocessing.get_context(method)
    else:
        ctx = get_context(method)
    in_queue = queues.Queue(ctx=ctx)
    out_queue = queues.SimpleQueue(ctx=ctx)
    p = ctx.Process(target=_child_echo, args=(in_queue, out_queue))
    p.start()
    try:
        offset = 5
        # Closures and lambdas travel through both queues (cloudpickle).
        in_queue.put(lambda x: x + offset)
        in_queue.put(lambda x: lambda y: y * x)
        in_queue.put(None)
        assert out_queue.get() == 15
        assert out_queue.get()(2) == 20
        assert out_queue.get() == "done"
    finally:
        p.join(timeout=60)
        if p.exitcode is None:
            p.kill()
            p.join()
        in_queue.close()
        in_queue.join_thread()
        out_queue.close()
    assert p.exitcode == 0


def _child_put_many(q, n):
    for i in range(n):
        q.put(i)
    q.close()
    q.join_thread()


def test_queue_flushes_before_child_exits():
    ctx = get_context("loky")
    q = queues.Queue(ctx=ctx)
    p = ctx.Process(target=_child_put_many, args=(q, 50))
    p.start()
    try:
        received = [q.get(timeout=30) for _ in range(50)]
    finally:
        p.join(timeout=60)
        q.close()
        q.join_thread()
    assert received == list(range(50))
    assert p.exitcode == 0


def _child_send_connection_end(sq, result_queue):
    # The Connection end arrives through a SimpleQueue (resource_sharer).
    conn = sq.get()
    conn.send("hello through a passed connection")
    conn.close()
    result_queue.put("sent")


def test_connection_through_simple_queue_between_live_processes():
    ctx = get_context("loky")
    sq = queues.SimpleQueue(ctx=ctx)
    results = queues.SimpleQueue(ctx=ctx)
    p = ctx.Process(target=_child_send_connection_end, args=(sq, results))
    p.start()
    reader, writer = multiprocessing.Pipe(duplex=False)
    try:
        sq.put(writer)
        assert results.get() == "sent"
        assert reader.recv() == "hello through a passed connection"
    finally:
        p.join(timeout=60)
        reader.close()
        writer.close()
        sq.close()
        results.close()
    assert p.exitcode == 0


class CrashingHookQueue(queues.Queue):
    def _on_queue_feeder_error(self, e, obj):
        raise ValueError("hook crashed")


def test_failing_hook_does_not_kill_the_feeder(queue_factory, capfd):
    q = queue_factory(CrashingHookQueue, 1)
    q.put(Unpicklable(), timeout=10)
    q.put("still fed", timeout=10)
    assert q.get(timeout=10) == "still fed"
    assert q._thread.is_alive()
    assert "ValueError: hook crashed" in capfd.readouterr().err
