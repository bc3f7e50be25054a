"""Worker initializers: validation, chaining, viztracer, and running in workers."""

from __future__ import annotations

import multiprocessing
import os
import sys
import types
import warnings

import pytest

from loky import ProcessPoolExecutor
from loky import initializers as init_mod
from loky.initializers import (
    _chain_initializers,
    _ChainedInitializer,
    _make_viztracer_initializer_and_initargs,
    _prepare_initializer,
)

_STATE = {}


def set_state(key, value):
    _STATE[key] = value


def get_state(key):
    return _STATE.get(key), os.getpid()


def test_non_callable_initializer():
    with pytest.raises(TypeError) as info:
        _prepare_initializer("not callable", ())
    assert str(info.value) == "initializer must be a callable, got: 'not callable'"


def test_chaining_rules():
    assert _chain_initializers([(None, ()), (None, ())]) == (None, ())
    assert _chain_initializers([(set_state, ("a", 1)), (None, ())]) == (
        set_state,
        ("a", 1),
    )
    chained, args = _chain_initializers([(set_state, ("a", 1)), (set_state, ("b", 2))])
    assert isinstance(chained, _ChainedInitializer)
    assert args == [("a", 1), ("b", 2)]
    _STATE.clear()
    chained(*args)
    assert _STATE == {"a": 1, "b": 2}


def test_no_viztracer_means_no_extra_initializer(monkeypatch):
    monkeypatch.setitem(sys.modules, "viztracer", None)  # import fails
    assert _make_viztracer_initializer_and_initargs() == (None, ())
    assert _prepare_initializer(set_state, ("k", 1)) == (set_state, ("k", 1))


def test_enabled_viztracer_is_chained_after_the_user_initializer(monkeypatch):
    tracer = types.SimpleNamespace(enable=True, init_kwargs={"output_file": "x.json"})
    fake = types.ModuleType("viztracer")
    fake.get_tracer = lambda: tracer
    monkeypatch.setitem(sys.modules, "viztracer", fake)
    assert _make_viztracer_initializer_and_initargs() == (
        init_mod._viztracer_init,
        ({"output_file": "x.json"},),
    )
    chained, args = _prepare_initializer(set_state, ("k", 1))
    assert isinstance(chained, _ChainedInitializer)
    assert args == [("k", 1), ({"output_file": "x.json"},)]
    # Sampled at construction: a stopped tracer affects only later executors.
    tracer.enable = False
    assert _make_viztracer_initializer_and_initargs() == (None, ())


def test_broken_viztracer_introspection_warns(monkeypatch):
    fake = types.ModuleType("viztracer")

    def get_tracer():
        raise RuntimeError("no state")

    fake.get_tracer = get_tracer
    monkeypatch.setitem(sys.modules, "viztracer", fake)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert _make_viztracer_initializer_and_initargs() == (None, ())
    assert [str(w.message) for w in caught] == [
        "Unable to introspect viztracer state: no state"
    ]


def test_initializer_runs_in_every_worker():
    with ProcessPoolExecutor(
        max_workers=2, initializer=set_state, initargs=("ready", "yes")
    ) as executor:
        results = [
            executor.submit(get_state, "ready").result(timeout=60) for _ in range(6)
        ]
    assert {value for value, _pid in results} == {"yes"}


def test_lambda_initializer_under_the_loky_context():
    # The lambda travels by value (cloudpickle); set_state by reference.
    with ProcessPoolExecutor(
        max_workers=1, initializer=lambda: set_state("lam", "from lambda")
    ) as executor:
        assert executor.submit(get_state, "lam").result(timeout=60)[0] == "from lambda"


def test_initializer_under_a_stdlib_context():
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(
        max_workers=1, context=ctx, initializer=set_state, initargs=("ctx", "spawn")
    ) as executor:
        assert executor.submit(get_state, "ctx").result(timeout=60)[0] == "spawn"
