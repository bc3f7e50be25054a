"""Conformance (black-box): message texts of loky_api.md §2.4 not reached by
ordinary runs (system limits, Windows clamp, oversized tasks), the feeder
error hook, contexts (§8.1) and the wrappers (§12)."""

from __future__ import annotations

import gc
import os
import pickle
import struct
import sys
import warnings

import pytest

import loky
from loky import ProcessPoolExecutor
from loky import process_executor as pe
from loky.backend import context as ctx_mod
from loky.backend import get_context


def square(x):
    return x * x


@pytest.fixture(autouse=True)
def _collect_cycles():
    yield
    gc.collect()


@pytest.fixture
def reset_system_limits(monkeypatch):
    # The verdict is cached in the module (like the stdlib's executor).
    monkeypatch.setattr(pe, "_system_limits_checked", False, raising=False)
    monkeypatch.setattr(pe, "_system_limited", None, raising=False)
    yield
    monkeypatch.undo()


def test_too_few_semaphores_message(monkeypatch, reset_system_limits):
    monkeypatch.setattr(os, "sysconf", lambda name: 100)
    with pytest.raises(NotImplementedError) as info:
        ProcessPoolExecutor(max_workers=1)
    assert str(info.value) == (
        "system provides too few semaphores (100 available, 256 necessary)"
    )
    # cached: still refused once sysconf looks fine
    monkeypatch.setattr(os, "sysconf", lambda name: 100000)
    with pytest.raises(NotImplementedError):
        ProcessPoolExecutor(max_workers=1)


@pytest.mark.parametrize("value", [-1, 256, 100000])
def test_enough_or_indeterminate_semaphores_are_accepted(
    monkeypatch, reset_system_limits, value
):
    monkeypatch.setattr(os, "sysconf", lambda name: value)
    executor = ProcessPoolExecutor(max_workers=1)
    executor.shutdown()


def test_system_limits_checked_before_max_workers(monkeypatch, reset_system_limits):
    monkeypatch.setattr(os, "sysconf", lambda name: 3)
    with pytest.raises(NotImplementedError):
        ProcessPoolExecutor(max_workers=0)


def test_windows_clamps_max_workers_with_a_warning(monkeypatch):
    monkeypatch.setattr(sys, "platform", "win32")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            executor = ProcessPoolExecutor(max_workers=100, context=get_context("loky"))
        finally:
            monkeypatch.undo()
    try:
        assert executor._max_workers == ctx_mod._MAX_WINDOWS_WORKERS == 61
    finally:
        executor.shutdown()
    messages = [str(w.message) for w in caught if w.category is UserWarning]
    assert messages == [
        "On Windows, max_workers cannot exceed 61 due to limitations of the "
        "operating system."
    ]


def test_no_clamp_on_posix():
    if sys.platform == "win32":
        pytest.skip("POSIX only")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        executor = ProcessPoolExecutor(max_workers=100)
    try:
        assert executor._max_workers == 100
    finally:
        executor.shutdown()


def _pending_call_item(executor, fn=square, args=(1,)):
    """Register a work item the way submit does, without waking the manager."""
    future = loky.Future()
    work_id = executor._queue_count
    executor._pending_work_items[work_id] = pe._WorkItem(future, fn, args, {})
    executor._queue_count += 1
    executor._running_work_items.append(work_id)
    return future, pe._CallItem(work_id, fn, args, {})


@pytest.mark.parametrize(
    "error, exc_type, message",
    [
        (
            struct.error("'i' format requires -2147483648 <= number <= 2147483647"),
            RuntimeError,
            "The task could not be sent to the workers as it is too large for "
            "`send_bytes`.",
        ),
        (
            pickle.PicklingError("nope"),
            pickle.PicklingError,
            "Could not pickle the task to send it to the workers.",
        ),
        (
            SystemExit(),
            pickle.PicklingError,
            "Could not pickle the task to send it to the workers.",
        ),
    ],
)
def test_feeder_error_hook_fails_only_that_future(error, exc_type, message):
    executor = ProcessPoolExecutor(max_workers=1)
    try:
        future, call_item = _pending_call_item(executor)
        try:
            raise error
        except BaseException as e:
            executor._call_queue._on_queue_feeder_error(e, call_item)
        exc = future.exception(timeout=0)
        assert type(exc) is exc_type
        assert str(exc) == message
        assert isinstance(exc.__cause__, pe._RemoteTraceback)
        assert type(error).__name__ in exc.__cause__.tb
        assert call_item.work_id not in executor._pending_work_items
        assert call_item.work_id not in executor._running_work_items
        assert executor._flags.broken is None
        # the pool stays usable
        assert executor.submit(square, 3).result(timeout=60) == 9
    finally:
        executor.shutdown(wait=True)


def test_feeder_error_hook_crash_breaks_the_executor():
    executor = ProcessPoolExecutor(max_workers=1)
    try:
        future, call_item = _pending_call_item(executor)
        executor._call_queue.running_work_items = None  # .remove() will fail
        executor._call_queue._on_queue_feeder_error(ValueError("x"), call_item)
        exc = future.exception(timeout=0)
        assert type(exc) is pe.BrokenProcessPool
        assert str(exc) == (
            "The call queue feeder thread crashed: the executor is broken and the "
            "pending tasks have been cancelled."
        )
        assert executor._flags.broken is exc
        with pytest.raises(pe.BrokenProcessPool) as info:
            executor.submit(square, 1)
        assert info.value is exc
    finally:
        executor.shutdown(wait=True)


def test_feeder_error_hook_with_a_non_call_item_keeps_base_behaviour(capsys):
    executor = ProcessPoolExecutor(max_workers=1)
    try:
        try:
            raise ValueError("not a call item")
        except ValueError as e:
            executor._call_queue._on_queue_feeder_error(e, "something else")
        assert executor._flags.broken is None
        assert "not a call item" in capsys.readouterr().err
    finally:
        executor.shutdown(wait=True)


# -------------------------------------------------------------- contexts
FORK_WARNING = (
    "`fork` start method should not be used with `loky` as it does not respect "
    "POSIX. Try using `spawn` or `loky` instead."
)


def test_get_context_texts():
    with pytest.raises(ValueError) as info:
        get_context("threads")
    assert str(info.value) == (
        f"Unknown context 'threads'. Value should be in {ctx_mod.START_METHODS}."
    )
    if sys.platform != "win32":
        with pytest.warns(UserWarning) as record:
            get_context("fork")
        assert [str(w.message) for w in record] == [FORK_WARNING]
    assert get_context() is get_context("loky")
    assert isinstance(get_context("loky_init_main"), ctx_mod.LokyInitMainContext)
    assert get_context("loky").Process is loky.backend.process.LokyProcess


def test_set_start_method_error_text():
    previous = ctx_mod.get_start_method()
    try:
        ctx_mod.set_start_method("spawn", force=True)
        with pytest.raises(RuntimeError) as info:
            ctx_mod.set_start_method("loky")
        assert str(info.value) == "context has already been set"
        assert ctx_mod.get_start_method() == "spawn"
        ctx_mod.set_start_method(None, force=True)
        assert ctx_mod.get_start_method() is None
        assert get_context().get_start_method() == "loky"
    finally:
        ctx_mod.set_start_method(previous, force=True)


def test_default_start_method_is_used_by_executors():
    previous = ctx_mod.get_start_method()
    try:
        ctx_mod.set_start_method("loky_init_main", force=True)
        executor = ProcessPoolExecutor(max_workers=1)
        try:
            assert executor._context.get_start_method() == "loky_init_main"
            assert executor.submit(square, 4).result(timeout=60) == 16
        finally:
            executor.shutdown(wait=True)
    finally:
        ctx_mod.set_start_method(previous, force=True)


# -------------------------------------------------------------- wrappers
@loky.wrap_non_picklable_objects
class Point:
    def __init__(self, x, y):
        self.x, self.y = x, y

    def norm2(self):
        return self.x * self.x + self.y * self.y


def test_wrapped_class_semantics():
    point = Point(3, 4)
    assert Point.__name__ == "Point"
    assert isinstance(point, loky.cloudpickle_wrapper.CloudpickledObjectWrapper)
    assert point.x == 3 and point.norm2() == 25
    with pytest.raises(TypeError, match="'Point' object is not callable"):
        point()
    clone = pickle.loads(pickle.dumps(point))
    assert isinstance(clone, loky.cloudpickle_wrapper.CloudpickledObjectWrapper)
    assert clone.norm2() == 25


def test_wrapped_function_keep_wrapper_default_and_false():
    from loky.cloudpickle_wrapper import CallableObjectWrapper

    def local(x):
        return x + 1

    wrapped = loky.wrap_non_picklable_objects(local)
    assert isinstance(wrapped, CallableObjectWrapper) and wrapped(1) == 2
    clone = pickle.loads(pickle.dumps(wrapped))
    assert isinstance(clone, CallableObjectWrapper) and clone(2) == 3
    bare = pickle.loads(
        pickle.dumps(loky.wrap_non_picklable_objects(local, keep_wrapper=False))
    )
    assert not isinstance(bare, CallableObjectWrapper) and bare(3) == 4
    assert wrapped.__name__ == "local"  # attribute delegation
