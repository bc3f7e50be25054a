"""Audit regressions: reusable executor, cloudpickle wrappers, initializers, namespace."""

from __future__ import annotations

import pickle

import pytest

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
