"""Reducer round trips through real loky workers: broken reducers are caught
with hypothesis' minimal counterexample, correct ones pass.

The seeded reducers travel to the worker as the executor's job/result
reducers (so nothing is registered globally for other tests), except the one
that is deliberately registered in the parent only.
"""

from __future__ import annotations

import abc
import copyreg
import dataclasses
import json
import math
import multiprocessing
import os
import re
import threading
import warnings

import numpy as np
import pytest
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import loky_check
from loky.backend import reduction
from loky_check.reducers import (
    ReducerResult,
    check_reducers,
    discover_reducers,
    register_strategy,
    worker_round_trip,
)
from loky_check.strategies import _STRATEGY_REGISTRY

# -- seeded types and reducers ---------------------------------------------------


@dataclasses.dataclass
class Point:
    x: float
    y: float


def reduce_point_float32(point):
    """Broken: squeezes both coordinates through float32."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # overflow to inf is part of the bug
        return Point, (float(np.float32(point.x)), float(np.float32(point.y)))


@dataclasses.dataclass
class Account:
    owner: str
    balance: int


def reduce_account_dropping_balance(account):
    """Broken: forgets the balance."""
    return Account, (account.owner, 0)


@dataclasses.dataclass
class Interval:
    lo: int
    hi: int


def _rebuild_interval(lo, hi):
    # Broken, and only where it hurts: the validation runs in worker processes.
    if multiprocessing.parent_process() is not None and lo > hi:
        raise ValueError(f"empty interval [{lo}, {hi}]")
    return Interval(lo, hi)


def reduce_interval(interval):
    return _rebuild_interval, (interval.lo, interval.hi)


class Basket:
    def __init__(self, items: list[int]):
        self.items = items

    def __eq__(self, other):
        return type(other) is Basket and self.items == other.items

    def __repr__(self):
        return f"Basket(items={self.items!r})"


def _rebuild_basket(items, into=[]):  # noqa: B006 - the seeded bug: a shared mutable default
    into[:] = items
    basket = Basket.__new__(Basket)
    basket.items = into
    return basket


def reduce_basket_aliasing(basket):
    return _rebuild_basket, (list(basket.items),)


@dataclasses.dataclass
class Meter:
    value: float

    def __reduce__(self):
        raise TypeError("Meter objects must be pickled with their registered reducer")


def _rebuild_meter(value):
    return Meter(value)


def reduce_meter(meter):
    return _rebuild_meter, (meter.value,)


class Handle:
    def __init__(self, fd):  # no type hint: no strategy can be inferred
        self.fd = fd


def reduce_handle(handle):
    return Handle, (handle.fd,)


# -- correct reducers -------------------------------------------------------------


@dataclasses.dataclass
class GoodPoint:
    x: float
    y: float


def reduce_good_point(point):
    return GoodPoint, (point.x, point.y)


@dataclasses.dataclass
class Signal:
    """numpy-backed: the reducer ships the raw buffer."""

    samples: np.ndarray
    rate: float


def _rebuild_signal(buffer, dtype, shape, rate):
    samples = np.frombuffer(buffer, dtype=dtype).reshape(shape).copy()
    return Signal(samples, rate)


def reduce_signal(signal):
    samples = np.ascontiguousarray(signal.samples)
    return _rebuild_signal, (
        samples.tobytes(),
        samples.dtype.str,
        samples.shape,
        signal.rate,
    )


@dataclasses.dataclass
class Tree:
    """Recursive: the reducer's arguments contain more trees."""

    value: int
    children: list[Tree]


def _rebuild_tree(value, children):
    return Tree(value, list(children))


def reduce_tree(tree):
    return _rebuild_tree, (tree.value, tuple(tree.children))


SEEDED_REDUCERS = {
    Point: reduce_point_float32,
    Account: reduce_account_dropping_balance,
    Interval: reduce_interval,
    Basket: reduce_basket_aliasing,
    Handle: reduce_handle,
    GoodPoint: reduce_good_point,
    Signal: reduce_signal,
    Tree: reduce_tree,
}

SIGNALS = st.builds(
    Signal,
    samples=hnp.arrays(
        dtype=st.sampled_from([np.float64, np.float32, np.int16]),
        shape=hnp.array_shapes(min_dims=1, max_dims=2, max_side=4),
    ),
    rate=st.floats(allow_nan=True),
)


# hypothesis' own st.from_type(Tree) works but grows huge trees: bound them
TREES = st.recursive(
    st.builds(Tree, value=st.integers(), children=st.just([])),
    lambda subtrees: st.builds(
        Tree, value=st.integers(), children=st.lists(subtrees, max_size=3)
    ),
    max_leaves=12,
)


@pytest.fixture(scope="module")
def executor():
    """One worker that knows the seeded reducers (job and result reducers)."""
    from loky import ProcessPoolExecutor

    register_strategy(Signal, SIGNALS)
    register_strategy(Tree, TREES)
    pool = ProcessPoolExecutor(max_workers=1, job_reducers=dict(SEEDED_REDUCERS))
    try:
        yield pool
    finally:
        pool.shutdown(wait=True)
        _STRATEGY_REGISTRY.pop(Signal, None)
        _STRATEGY_REGISTRY.pop(Tree, None)


@pytest.fixture
def meter_reducer_in_parent_only():
    reduction.register(Meter, reduce_meter)
    try:
        yield
    finally:
        reduction._dispatch_table.pop(Meter, None)
        reduction._dispatch_table_version += 1


def check_one(type_, executor, max_examples=100) -> ReducerResult:
    (result,) = check_reducers([type_], max_examples=max_examples, executor=executor)
    return result


# -- broken reducers are caught with a minimal counterexample ---------------------


def test_float32_truncation(executor):
    result = check_one(Point, executor)
    assert not result.ok and result.stage == "compare" and result.shrunk
    point = result.example
    # minimal: one coordinate is 0.0, the other is the simplest float float32 cannot hold
    coordinates = sorted([point.x, point.y], key=lambda v: v != 0.0)
    assert coordinates[0] == 0.0
    bad = coordinates[1]
    assert float(np.float32(bad)) != bad
    field = "x" if point.x == bad else "y"
    assert result.difference == f".{field}: {bad!r} != {float(np.float32(bad))!r}"
    assert result.counterexample == repr(point)
    assert result.reducer == "test_reducers.reduce_point_float32"
    assert result.type == "test_reducers.Point"


def test_dropped_field(executor):
    result = check_one(Account, executor)
    assert not result.ok and result.stage == "compare"
    assert result.counterexample == "Account(owner='', balance=1)"
    assert result.difference == ".balance: 1 != 0"


def test_reducer_raising_in_the_worker_for_some_values(executor):
    result = check_one(Interval, executor)
    assert not result.ok and result.stage == "load"
    assert result.counterexample in ("Interval(lo=0, hi=-1)", "Interval(lo=1, hi=0)")
    assert result.difference.startswith("ValueError: empty interval")
    assert "(in the worker)" in result.difference
    # the same reducer round-trips fine inside the parent: only a real worker shows it
    assert pickle_round_trip_in_parent(Interval(1, 0)) == Interval(1, 0)


def pickle_round_trip_in_parent(obj):
    import pickle

    return pickle.loads(reduction.dumps(obj, reducers=SEEDED_REDUCERS))


def test_reducer_aliasing_a_mutable_default(executor):
    result = check_one(Basket, executor)
    assert not result.ok and result.stage == "alias"
    assert result.counterexample == "Basket(items=[])"
    assert result.difference.startswith(".items: two loads share the same list")


def test_reducer_missing_in_the_worker(meter_reducer_in_parent_only):
    # the reusable executor's workers never registered Meter's reducer
    result = check_one(Meter, None)
    assert not result.ok and result.stage == "dump_back"
    assert result.counterexample == "Meter(value=0.0)"
    assert "TypeError: Meter objects must be pickled with their registered reducer" in (
        result.difference
    )
    assert "in the worker" in result.difference
    assert result.reducer == "test_reducers.reduce_meter"
    assert result.source == "loky.backend.reduction.register"


# -- correct reducers pass --------------------------------------------------------


@pytest.mark.parametrize("type_", [GoodPoint, Signal, Tree], ids=lambda t: t.__name__)
def test_correct_reducers_pass(executor, type_):
    result = check_one(type_, executor, max_examples=60)
    assert result.ok, str(result)
    assert result.examples > 10
    assert result.counterexample is None and result.difference is None
    assert str(result).startswith(f"ok       reducer[test_reducers.{type_.__name__}]")


def test_nan_values_round_trip_as_equal(executor):
    register_strategy(GoodPoint, st.just(GoodPoint(math.nan, -math.nan)))
    try:
        result = check_one(GoodPoint, executor, max_examples=5)
    finally:
        _STRATEGY_REGISTRY.pop(GoodPoint)
    assert result.ok, str(result)


# -- no strategy ---------------------------------------------------------------------


def test_type_without_a_buildable_strategy_gets_a_clear_message(executor):
    result = check_one(Handle, executor)
    assert not result.ok and result.examples == 0
    assert result.error == result.difference
    assert "\n" not in result.error
    assert result.error.startswith(
        "cannot build examples of test_reducers.Handle: parameter 'fd' of Handle()"
        " is required and has no type hint"
    )
    assert "loky_check.register_strategy(Handle," in result.error
    assert result.to_dict()["error"] == result.error


def test_registered_strategy_makes_the_type_buildable(executor):
    register_strategy(Handle, st.builds(Handle, fd=st.integers(0, 1000)))
    try:
        result = check_one(Handle, executor, max_examples=10)
    finally:
        _STRATEGY_REGISTRY.pop(Handle)
    # Handle has no __eq__: compared by state, so a faithful reducer passes
    assert result.ok, str(result)


def test_register_strategy_rejects_non_strategies():
    with pytest.raises(TypeError, match="expects a hypothesis strategy"):
        register_strategy(Handle, 3)
    with pytest.raises(TypeError, match="expects a type"):
        register_strategy("Handle", st.none())


# -- discovery ---------------------------------------------------------------------


def test_discovery_finds_executor_reducers_and_skips_library_entries(executor):
    entries = {entry.cls: entry for entry in discover_reducers(executor)}
    for type_, reducer in SEEDED_REDUCERS.items():
        assert entries[type_].reducer is reducer
        assert entries[type_].source == "executor job_reducers"
    # the standard library's, numpy's and loky's own reducers are not "user" reducers
    assert complex not in entries
    assert np.ufunc not in entries
    import functools
    import socket

    assert functools.partial not in entries and socket.socket not in entries


def test_discovery_finds_user_copyreg_and_register_entries(
    meter_reducer_in_parent_only,
):
    copyreg.pickle(GoodPoint, reduce_good_point)
    try:
        entries = {entry.cls: entry for entry in discover_reducers()}
        assert entries[GoodPoint].source == "copyreg.dispatch_table"
        assert entries[Meter].source == "loky.backend.reduction.register"
        assert Point not in entries  # only the executor fixture knows that one
    finally:
        del copyreg.dispatch_table[GoodPoint]


def test_check_reducers_without_types_checks_everything_registered(executor):
    results = {r.cls: r for r in check_reducers(max_examples=20, executor=executor)}
    assert set(SEEDED_REDUCERS) <= set(results)
    failing = {cls for cls, r in results.items() if not r.ok}
    assert failing >= {Point, Account, Interval, Basket, Handle}
    assert not failing & {GoodPoint, Signal, Tree}


# -- reporting --------------------------------------------------------------------


def test_human_block_and_json_of_a_failure(executor):
    result = check_one(Account, executor)
    text = str(result)
    lines = text.splitlines()
    assert lines[0] == (
        "error    reducer[test_reducers.Account]   test_reducers.reduce_account_dropping_balance"
    )
    assert lines[1] == (
        "         counterexample: Account(owner='', balance=1)   (shrunk by hypothesis, 100 examples)"
    )
    assert lines[2] == "         .balance: 1 != 0  [fidelity]"
    assert any(line.startswith("         fix: ") for line in lines)
    data = json.loads(json.dumps(result.to_dict()))
    assert data == {
        "type": "test_reducers.Account",
        "reducer": "test_reducers.reduce_account_dropping_balance",
        "examples": 100,
        "ok": False,
        "counterexample": "Account(owner='', balance=1)",
        "difference": ".balance: 1 != 0",
    }


def test_results_fit_in_a_report(executor):
    report = loky_check.Report(
        target="reducers", pickler="loky", reducers=[check_one(Account, executor)]
    )
    assert not report.ok
    assert "0/1 reducers hold" in str(report)
    assert (
        report.to_dict()["reducers"][0]["counterexample"]
        == "Account(owner='', balance=1)"
    )


def test_bad_arguments_get_clear_errors():
    with pytest.raises(TypeError, match=r"expects types, got 3"):
        check_reducers([3])
    with pytest.raises(ValueError, match="max_examples must be a positive integer"):
        check_reducers([GoodPoint], max_examples=0)


# -- the trip itself ----------------------------------------------------------------


def test_worker_side_reports_stage_per_payload():
    good = bytes(reduction.dumps(GoodPoint(1.0, 2.0)))
    answers = worker_round_trip([good, b"not a pickle"], None)
    assert answers[0][0] == "ok"
    assert answers[1][0] == "load" and answers[1][1].startswith("UnpicklingError")


def test_examples_really_cross_to_another_process(executor):
    pids = executor.submit(os.getpid).result()
    assert pids != os.getpid()
    assert re.search(r"in the worker", check_one(Interval, executor).difference)


# -- exceptions come with the engine's path --------------------------------------


@dataclasses.dataclass
class Job:
    name: str
    locked: bool


def _rebuild_job(name, extras):
    return Job(name, bool(extras))


def reduce_job_with_lock(job):
    """Broken for some values: a locked job drags a real lock into the pickle."""
    extras = {"guards": [threading.Lock()]} if job.locked else {}
    return _rebuild_job, (job.name, extras)


@pytest.fixture
def job_reducer_in_parent():
    reduction.register(Job, reduce_job_with_lock)
    try:
        yield
    finally:
        reduction._dispatch_table.pop(Job, None)
        reduction._dispatch_table_version += 1


def test_parent_side_exception_names_the_path(job_reducer_in_parent, executor):
    result = check_one(Job, executor, max_examples=30)
    assert not result.ok and result.stage == "dump"
    assert result.counterexample == "Job(name='', locked=True)"
    assert result.difference.startswith(
        "TypeError: cannot pickle '_thread.lock' object at obj"
    )
    assert (
        "['guards'][0]" in result.difference and "sync_primitive" in result.difference
    )
    assert "[reduce_error]" in str(result)


def test_worker_side_exception_names_the_path(meter_reducer_in_parent_only):
    result = check_one(Meter, None, max_examples=10)
    assert result.stage == "dump_back"
    assert " at obj" in result.difference


class Backend(abc.ABC):
    @abc.abstractmethod
    def send(self, data: bytes) -> None: ...


class Client:
    def __init__(self, backend: Backend):  # hinted, but nothing can build a Backend
        self.backend = backend


def test_unresolvable_hint_gets_a_clear_message(executor):
    result = check_one(Client, executor)
    assert not result.ok and result.stage == "strategy"
    assert result.error.startswith("cannot build examples of test_reducers.Client: ")
    assert "Backend" in result.error and "\n" not in result.error
    assert "loky_check.register_strategy(Client," in result.error


def test_passing_result_json_has_exactly_the_schema_keys(executor):
    data = check_one(GoodPoint, executor, max_examples=5).to_dict()
    assert list(data) == [
        "type",
        "reducer",
        "examples",
        "ok",
        "counterexample",
        "difference",
    ]
    assert data["ok"] is True and data["examples"] == 5


class Cached:
    """Default pickling leaves the cached value out; the reducer carries it."""

    def __init__(self, key: str, value: int):
        self.key = key
        self.value = value

    def __getstate__(self):
        return {"key": self.key}

    def __repr__(self):
        return f"Cached(key={self.key!r}, value={self.value!r})"


def _rebuild_cached(key, value):
    return Cached(key, value)


def reduce_cached(cached):
    return _rebuild_cached, (cached.key, cached.value)


def test_reducer_in_parent_only_where_the_worker_pickles_back_differently(executor):
    reduction.register(Cached, reduce_cached)
    try:
        result = check_one(Cached, executor)
    finally:
        reduction._dispatch_table.pop(Cached, None)
        reduction._dispatch_table_version += 1
    # the parent's own round trip is fine; the worker sends it back without the value
    assert not result.ok and result.stage == "compare"
    assert result.counterexample == "Cached(key='', value=0)"
    assert result.difference == ".value: missing in the copy"
