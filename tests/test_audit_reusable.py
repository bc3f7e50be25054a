"""Audit regressions: reusable executor, cloudpickle wrappers, initializers, namespace."""

from __future__ import annotations

import pickle
import threading
import time
import warnings

import pytest

from loky import get_reusable_executor
from loky.cloudpickle_wrapper import (
    CallableObjectWrapper,
    CloudpickledObjectWrapper,
    _wrap_objects_when_needed,
)


@pytest.mark.parametrize("cls", [CloudpickledObjectWrapper, CallableObjectWrapper])
def test_wrapper_without_its_slots_raises_attribute_error(cls):
    blank = cls.__new__(cls)
    with pytest.raises(AttributeError):
        _ = blank._obj
    with pytest.raises(AttributeError):
        _ = blank._keep_wrapper
    assert not hasattr(blank, "_obj")


def test_wrapper_attributes_and_delegation():
    wrapper = CloudpickledObjectWrapper([3, 1, 3])
    assert wrapper._obj == [3, 1, 3]
    assert wrapper._keep_wrapper is False
    assert wrapper.count(3) == 2
    with pytest.raises(AttributeError):
        _ = wrapper.no_such_attribute
    assert pickle.loads(pickle.dumps(wrapper)) == [3, 1, 3]


def test_wrap_objects_when_needed_accepts_objects_whose_module_is_none():
    items = []
    method = items.append
    assert method.__module__ is None
    assert _wrap_objects_when_needed(method) is method
    assert _wrap_objects_when_needed("abc".upper)() == "ABC"


@pytest.mark.parametrize("kill_workers", [False, True])
def test_shutdown_by_a_done_callback_during_a_resize(fresh_storage, kill_workers):
    executor = get_reusable_executor(max_workers=2)
    made = [executor]
    callback_done = threading.Event()

    def shut_down_then_clean_up(_):
        # What joblib's terminate() does, here from the manager thread.
        try:
            executor.shutdown(wait=False, kill_workers=kill_workers)
            with executor._submit_resize_lock:
                pass
        finally:
            callback_done.set()

    try:
        assert executor.submit(abs, -1).result(timeout=60) == 1
        executor.submit(time.sleep, 0.3).add_done_callback(shut_down_then_clean_up)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            resized = get_reusable_executor(max_workers=1)
        made.append(resized)
        assert callback_done.wait(60)
        current = get_reusable_executor(max_workers=1)
        made.append(current)
        assert current is not executor
        assert not current._flags.shutdown
        assert current.submit(abs, -2).result(timeout=60) == 2
    finally:
        for each in made:
            each.shutdown(wait=True, kill_workers=True)


def square(x):
    return x * x


@pytest.mark.parametrize("change", ["resize", "replace"])
def test_done_callback_asking_for_its_own_executor_while_the_owner_waits(
    fresh_storage, change
):
    # The callback runs in the manager thread, which gets its own executor;
    # meanwhile the owner thread resizes (or replaces) the executor and waits
    # on that same manager thread: neither may wait for the other.
    executor = get_reusable_executor(max_workers=2)
    made = [executor]
    box = {}
    callback_done = threading.Event()

    def use_own_executor(_):
        try:
            own = get_reusable_executor(max_workers=1)
            made.append(own)
            box["future"] = own.submit(square, 5)
        finally:
            callback_done.set()

    try:
        assert executor.submit(abs, -1).result(timeout=60) == 1
        executor.submit(time.sleep, 0.3).add_done_callback(use_own_executor)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            if change == "resize":
                current = get_reusable_executor(max_workers=1)
                assert current is executor
            else:
                current = get_reusable_executor(max_workers=2, timeout=3)
                assert current is not executor
        made.append(current)
        assert callback_done.wait(60)
        assert box["future"].result(timeout=60) == 25
        assert current.submit(square, 3).result(timeout=60) == 9
    finally:
        for each in made:
            each.shutdown(wait=True, kill_workers=True)
