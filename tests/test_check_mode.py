"""The executor's pickling check mode (``pickle_check=`` / ``LOKY_PICKLE_CHECK``).

Every mode is exercised for ``submit`` and ``map``, with culprits in the
arguments, the callable, the result and a raised exception, under loky's
default pickler (cloudpickle) and under ``pickle`` (switched in-process with
``set_loky_pickler``; ``test_check_mode_env.py`` runs real ``LOKY_PICKLER=pickle``
subprocesses). Warnings are recorded with ``simplefilter("always")`` so that the
"once per call site" property is the checker's own, not the warnings registry's.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import os
import pickle
import sys
import threading
import types
import warnings

import pytest

import loky
from loky.backend import reduction
from loky.process_executor import BrokenProcessPool
from loky_check import LokyPicklingWarning, PicklingCheckError
from loky_check.runtime import SubmitChecker

PICKLERS = ["cloudpickle", "pickle"]
THIS_FILE = __file__


# ---------------------------------------------------------------------------
# Task functions (module level: importable by the workers)


def identity(x):
    return x


class Holder:
    def __init__(self, value):
        self.value = value

    def get(self):
        return self.value


def call_it(fn, *args):
    return fn(*args)


def add(x, y=0):
    return x + y


def return_lock(_):
    return {"a": [threading.Lock()]}


class LockedError(Exception):
    def __init__(self, message):
        super().__init__(message)
        self.lock = threading.Lock()


def raise_locked(_):
    raise LockedError("boom")


def holder_type_name(holder):
    return type(holder).__name__


# ---------------------------------------------------------------------------
# Fixtures


@pytest.fixture(params=PICKLERS)
def pickler(request):
    """Run the test under each loky pickler (restored afterwards)."""
    reduction.set_loky_pickler(request.param)
    try:
        yield request.param
    finally:
        reduction.set_loky_pickler(None)


_executors: dict[str, loky.ProcessPoolExecutor] = {}


@pytest.fixture(scope="module", autouse=True)
def _shutdown_executors():
    yield
    for executor in _executors.values():
        executor.shutdown(wait=True)
    _executors.clear()


def executor_for(mode: str) -> loky.ProcessPoolExecutor:
    """One small executor per mode for the whole module (workers are slow to start)."""
    executor = _executors.get(mode)
    if executor is None:
        executor = _executors[mode] = loky.ProcessPoolExecutor(2, pickle_check=mode)
    return executor


def recorded(fn, *args, **kwargs):
    """Run ``fn`` recording every warning; return (value, LokyPicklingWarnings)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        value = fn(*args, **kwargs)
    return value, [w for w in caught if issubclass(w.category, LokyPicklingWarning)]


def line_of(marker: str) -> int:
    """The line number of the source line holding ``marker`` in this file."""
    lines, start = inspect.getsourcelines(sys.modules[__name__])
    for number, line in enumerate(lines, start=start or 1):
        if marker in line and "line_of(" not in line:
            return number
    raise AssertionError(marker)


def categories(report):
    return {f.category for f in report.findings}


# ---------------------------------------------------------------------------
# Mode values


@pytest.mark.parametrize("bad", ["loud", "", "WARN", 1])
def test_bad_mode_is_a_value_error_listing_the_modes(bad):
    for make in (
        lambda: loky.ProcessPoolExecutor(1, pickle_check=bad),
        lambda: loky.get_reusable_executor(1, pickle_check=bad),
        lambda: SubmitChecker(bad),
    ):
        with pytest.raises(ValueError) as info:
            make()
        for mode in ("'off'", "'warn'", "'error'", "'wrap'"):
            assert mode in str(info.value)


def test_bad_environment_value_is_a_value_error(monkeypatch):
    monkeypatch.setenv("LOKY_PICKLE_CHECK", "sometimes")
    with pytest.raises(
        ValueError, match="LOKY_PICKLE_CHECK.*'off', 'warn', 'error', 'wrap'"
    ):
        loky.ProcessPoolExecutor(1)


def test_environment_selects_the_mode(monkeypatch):
    monkeypatch.setenv("LOKY_PICKLE_CHECK", "error")
    with loky.ProcessPoolExecutor(1) as executor:
        with pytest.raises(PicklingCheckError):
            executor.submit(identity, threading.Lock())
        # an explicit argument wins over the environment
    with loky.ProcessPoolExecutor(1, pickle_check="off") as executor:
        assert executor._pickle_checker is None


# ---------------------------------------------------------------------------
# The submit hook itself (no workers)


def test_clean_call_is_pickled_once_into_the_payload(pickler):
    checker = SubmitChecker("warn")
    fn, args, kwargs, payload = checker.check_submit(add, (1,), {"y": 2})
    assert (fn, args, kwargs) == (add, (1,), {"y": 2})
    assert isinstance(payload, bytes)
    assert pickle.loads(payload) == (add, (1,), {"y": 2})


def test_off_mode_checker_is_a_pass_through():
    lock = threading.Lock()
    assert SubmitChecker("off").check_submit(identity, (lock,), {}) == (
        identity,
        (lock,),
        {},
        None,
    )


def test_error_and_warning_objects_pickle_without_their_culprits():
    checker = SubmitChecker("error")
    with pytest.raises(PicklingCheckError) as info:
        checker.check_submit(identity, (threading.Lock(),), {})
    error = info.value
    assert isinstance(error, pickle.PicklingError)
    assert error.report.findings[0].culprit is not None
    clone = pickle.loads(pickle.dumps(error))
    assert str(clone) == str(error)
    assert clone.report.findings[0].category == "sync_primitive"
    assert clone.report.findings[0].culprit is None
    warning = pickle.loads(pickle.dumps(LokyPicklingWarning("text", error.report)))
    assert str(warning) == "text" and warning.report.findings[0].path == "x"


# ---------------------------------------------------------------------------
# warn


def test_warn_argument_once_per_call_site(pickler):
    executor = executor_for("warn")

    def submit_three():
        futures = []
        for _ in range(3):
            futures.append(executor.submit(identity, threading.Lock()))  # SITE-warn-arg
        return futures

    futures, caught = recorded(submit_three)
    assert len(caught) == 1
    warning = caught[0]
    assert warning.filename == THIS_FILE
    assert warning.lineno == line_of("# SITE-warn-arg")
    report = warning.message.report
    finding = report.findings[0]
    assert (finding.severity, finding.argument, finding.path, finding.category) == (
        "error",
        "args[0]",
        "x",
        "sync_primitive",
    )
    assert "fix:" in str(warning.message) and "x  (args[0])" in str(warning.message)
    # the call then proceeds as without the check: it fails as it always did
    for future in futures:
        with pytest.raises(pickle.PicklingError):
            future.result(timeout=60)


def test_warn_callable_severity_follows_the_pickler(pickler):
    executor = executor_for("warn")

    def submit_lambdas():
        return [executor.submit(lambda v: v * 2, n) for n in range(3)]  # SITE-warn-fn

    futures, caught = recorded(submit_lambdas)
    assert len(caught) == 1
    assert caught[0].lineno == line_of("# SITE-warn-fn")
    finding = caught[0].message.report.findings[0]
    assert (finding.argument, finding.category) == ("fn", "lambda")
    if pickler == "cloudpickle":
        # loky's pickler carries it: a portability warning, the call works
        assert finding.severity == "warning"
        assert [f.result(timeout=60) for f in futures] == [0, 2, 4]
    else:
        assert finding.severity == "error"
        for future in futures:
            with pytest.raises(pickle.PicklingError):
                future.result(timeout=60)


def test_warn_map_checks_every_item_once_per_call_site(pickler):
    executor = executor_for("warn")
    items = [1, threading.Lock(), 2, threading.Lock()]

    def run_map():
        return executor.map(identity, items)  # SITE-warn-map

    results, caught = recorded(run_map)
    assert len(caught) == 1
    assert caught[0].filename == THIS_FILE
    assert caught[0].lineno == line_of("# SITE-warn-map")
    assert categories(caught[0].message.report) == {"sync_primitive"}
    with pytest.raises(pickle.PicklingError):
        list(results)


def test_warn_map_callable(pickler):
    executor = executor_for("warn")
    results, caught = recorded(
        lambda: executor.map(lambda v: v + 1, range(6), chunksize=2)
    )
    assert len(caught) == 1
    assert caught[0].message.report.findings[0].category == "lambda"
    if pickler == "cloudpickle":
        assert list(results) == [1, 2, 3, 4, 5, 6]


def test_warn_distinct_culprits_at_one_site_each_warn_once(pickler):
    checker = SubmitChecker("warn")

    def local_one(x):
        return x

    def local_two(x):
        return x

    def check_all():
        for fn in (local_one, local_two, local_one, local_two):
            checker.check_submit(fn, (1,), {})  # SITE-two-culprits

    _, caught = recorded(check_all)
    assert len(caught) == 2
    summaries = [w.message.report.findings[0].summary for w in caught]
    assert "local_one" in summaries[0] and "local_two" in summaries[1]


def test_clean_calls_do_not_warn(pickler):
    executor = executor_for("warn")
    results, caught = recorded(
        lambda: (
            executor.submit(add, 1, y=2).result(timeout=60),
            list(executor.map(add, [1, 2], [3, 4])),
        )
    )
    assert results == (3, [4, 6])
    assert caught == []


# ---------------------------------------------------------------------------
# error


def test_error_submit_raises_and_executor_keeps_working(pickler):
    executor = executor_for("error")
    with pytest.raises(PicklingCheckError) as info:
        executor.submit(identity, {"cfg": [threading.Lock()]})
    assert isinstance(info.value, pickle.PicklingError)
    finding = info.value.report.findings[0]
    assert (finding.path, finding.category) == ("x['cfg'][0]", "sync_primitive")
    assert str(info.value) == str(info.value.report)
    # raised every time, not once: the call cannot run
    with pytest.raises(PicklingCheckError):
        executor.submit(identity, {"cfg": [threading.Lock()]})
    assert executor.submit(add, 2, y=3).result(timeout=60) == 5


def test_error_map_raises(pickler):
    executor = executor_for("error")
    with pytest.raises(PicklingCheckError) as info:
        executor.map(identity, [1, 2, threading.Lock()])
    assert categories(info.value.report) == {"sync_primitive"}
    assert list(executor.map(add, [1, 2], [10, 20])) == [11, 22]


def test_error_callable_depends_on_the_pickler(pickler):
    executor = executor_for("error")
    if pickler == "pickle":
        with pytest.raises(PicklingCheckError) as info:
            executor.submit(lambda: 1)
        assert info.value.report.findings[0].category == "lambda"
        with pytest.raises(PicklingCheckError):
            executor.map(lambda v: v, [1, 2])
    else:
        # cloudpickle carries lambdas: only a portability warning
        future, caught = recorded(executor.submit, lambda: 1)
        assert future.result(timeout=60) == 1
        assert [w.message.report.findings[0].severity for w in caught] == ["warning"]
        results, caught = recorded(executor.map, lambda v: -v, [1, 2])
        assert list(results) == [-1, -2] and len(caught) == 1


# ---------------------------------------------------------------------------
# wrap


def test_wrap_callable_argument_and_partial(pickler):
    ex = executor_for("wrap")

    def submit_all():
        futures = []
        for n in range(3):
            negate = functools.partial(call_it, lambda v: -v)
            futures.append(ex.submit(call_it, lambda v: v + 1, n))  # SITE-wrap-arg
            futures.append(ex.submit(lambda v: v * 10, n))  # SITE-wrap-fn
            futures.append(ex.submit(negate, n))  # SITE-wrap-partial
        return futures

    futures, caught = recorded(submit_all)
    assert [f.result(timeout=60) for f in futures] == [1, 0, 0, 2, 10, -1, 3, 20, -2]
    by_line = {w.lineno: str(w.message) for w in caught}
    assert len(caught) == 3
    assert set(by_line) == {
        line_of("# SITE-wrap-arg"),
        line_of("# SITE-wrap-fn"),
        line_of("# SITE-wrap-partial"),
    }
    assert (
        "wrapped fn with loky.wrap_non_picklable_objects"
        in by_line[line_of("# SITE-wrap-fn")]
    )
    assert "wrapped fn.args[0] with" in by_line[line_of("# SITE-wrap-partial")]
    assert "wrapped fn (args[0]) with" in by_line[line_of("# SITE-wrap-arg")]


def test_wrap_map(pickler):
    executor = executor_for("wrap")
    results, caught = recorded(executor.map, lambda v: v * 3, range(5))
    assert list(results) == [0, 3, 6, 9, 12]
    assert len(caught) == 1 and "wrapped fn" in str(caught[0].message)
    # arguments of map items too
    results, caught = recorded(executor.map, call_it, [lambda: "a", lambda: "b"])
    assert list(results) == ["a", "b"]
    assert len(caught) == 1 and "wrapped" in str(caught[0].message)


def test_wrap_leaves_what_cloudpickle_cannot_carry_as_warn(pickler):
    executor = executor_for("wrap")
    future, caught = recorded(executor.submit, identity, threading.Lock())
    assert len(caught) == 1
    assert "wrapped" not in str(caught[0].message)
    assert categories(caught[0].message.report) == {"sync_primitive"}
    with pytest.raises(pickle.PicklingError):
        future.result(timeout=60)


# ---------------------------------------------------------------------------
# Results, exceptions and loading, diagnosed in the worker


@pytest.mark.parametrize("mode", ["warn", "error", "wrap"])
def test_unpicklable_result_carries_the_diagnosis(mode, pickler):
    executor = executor_for(mode)
    with pytest.raises(Exception) as info:
        executor.submit(return_lock, 1).result(timeout=60)
    notes = "\n".join(getattr(info.value, "__notes__", []))
    assert "result['a'][0]" in notes
    assert "[sync_primitive]" in notes and "fix:" in notes
    # map: every item's result
    with pytest.raises(Exception) as info:
        list(executor.map(return_lock, [1, 2]))
    assert "[sync_primitive]" in "\n".join(getattr(info.value, "__notes__", []))


@pytest.mark.parametrize("mode", ["warn", "error", "wrap"])
def test_unpicklable_exception_carries_the_diagnosis(mode, pickler):
    executor = executor_for(mode)
    with pytest.raises(Exception) as info:
        executor.submit(raise_locked, 1).result(timeout=60)
    notes = "\n".join(getattr(info.value, "__notes__", []))
    assert "the task's exception cannot be pickled back" in notes
    assert "exception.lock" in notes and "[sync_primitive]" in notes
    with pytest.raises(Exception) as info:
        list(executor.map(raise_locked, [1, 2]))
    assert "exception.lock" in "\n".join(getattr(info.value, "__notes__", []))


def test_off_mode_adds_no_notes():
    with loky.ProcessPoolExecutor(1, pickle_check="off") as executor:
        with pytest.raises(Exception) as info:
            executor.submit(return_lock, 1).result(timeout=60)
    assert not getattr(info.value, "__notes__", None)


@contextlib.contextmanager
def parent_only_module(name, source):
    """A module only this process can import (the workers cannot find it)."""
    module = types.ModuleType(name)
    module.__file__ = f"/nonexistent/{name}.py"
    exec(source, module.__dict__)
    sys.modules[name] = module
    try:
        yield module
    finally:
        del sys.modules[name]


def test_task_that_fails_to_load_carries_the_diagnosis(pickler):
    # A module the parent has but the workers cannot import.
    executor = executor_for("warn")
    with parent_only_module(
        "phantom_tasks_for_check_mode", "def work(x):\n    return x\n"
    ) as module:
        future, caught = recorded(executor.submit, module.work, 1)
        with pytest.raises(Exception) as info:
            future.result(timeout=60)
    notes = "\n".join(getattr(info.value, "__notes__", []))
    assert "cannot be loaded in the worker" in notes
    assert "phantom_tasks_for_check_mode.work" in notes and "fn" in notes
    # the pool survives a task that does not load
    assert executor.submit(add, 1, y=1).result(timeout=60) == 2


@pytest.mark.parametrize(
    "build, path",
    [
        (lambda thing: ({"jobs": [1, thing]},), "x['jobs'][1]"),
        (lambda thing: (functools.partial(identity, y=thing),), "x.keywords['y']"),
        (lambda thing: ([Holder(thing)],), "x[0].value"),
        (lambda thing: (Holder(thing).get,), "x.__self__.value"),
    ],
    ids=["dict-list", "partial", "attribute", "bound-method"],
)
def test_task_that_fails_to_load_names_the_nested_path(pickler, build, path):
    # An instance of a class the workers cannot import, deep in an argument.
    executor = executor_for("warn")
    with parent_only_module(
        "phantom_things_for_check_mode", "class Thing:\n    pass\n"
    ) as module:
        future, _ = recorded(executor.submit, identity, *build(module.Thing()))
        with pytest.raises(Exception) as info:
            future.result(timeout=60)
    notes = "\n".join(getattr(info.value, "__notes__", []))
    assert "cannot be loaded in the worker" in notes
    assert f"   {path}\n" in notes, notes
    assert "phantom_things_for_check_mode.Thing" in notes


# ---------------------------------------------------------------------------
# job reducers, nested executors, pickling exactly once


class Handle:
    """Holds a lock: standard pickle fails, the job reducer below carries it."""

    def __init__(self, name):
        self.name = name
        self.lock = threading.Lock()


def rebuild_handle(name):
    return Handle(name)


def reduce_handle(handle):
    return rebuild_handle, (handle.name,)


def test_job_reducers_carry_their_types(pickler):
    with loky.ProcessPoolExecutor(
        1, job_reducers={Handle: reduce_handle}, pickle_check="error"
    ) as executor:
        future, caught = recorded(executor.submit, holder_type_name, Handle("h"))
        assert future.result(timeout=60) == "Handle"
        assert caught == []
        # a real culprit next to a reduced one: only the culprit is reported
        with pytest.raises(PicklingCheckError) as info:
            executor.submit(call_it, holder_type_name, Handle("h"), threading.Lock())
        assert [f.category for f in info.value.report.findings] == ["sync_primitive"]


def nested_submit(mode):
    """Runs in a worker: an inner executor with a check mode."""
    with loky.ProcessPoolExecutor(1, pickle_check=mode) as inner:
        try:
            inner.submit(identity, threading.Lock())
        except PicklingCheckError as exc:
            return ("raised", sorted(categories(exc.report)))
        return ("ok", inner.submit(add, 20, y=22).result(timeout=60))


def raise_check_error():
    SubmitChecker("error").check_submit(identity, (threading.Lock(),), {})


def test_nested_executors(pickler):
    executor = executor_for("error")
    assert executor.submit(nested_submit, "error").result(timeout=120) == (
        "raised",
        ["sync_primitive"],
    )
    # the check error itself travels back from a worker, report included
    with pytest.raises(PicklingCheckError) as info:
        executor.submit(raise_check_error).result(timeout=60)
    assert categories(info.value.report) == {"sync_primitive"}


class CountedPayload:
    """Counts how many times it is pickled (in this process)."""

    reductions = 0

    def __init__(self, data=b""):
        self.data = data

    def __reduce__(self):
        type(self).reductions += 1
        return CountedPayload, (self.data,)


def payload_size(payload):
    return len(payload.data)


@pytest.mark.parametrize("mode", ["off", "warn", "error", "wrap"])
def test_a_large_argument_is_pickled_exactly_once(mode, pickler):
    executor = executor_for(mode) if mode != "off" else None
    owned = executor is None
    if owned:
        executor = loky.ProcessPoolExecutor(1)
    try:
        CountedPayload.reductions = 0
        future = executor.submit(payload_size, CountedPayload(b"x" * (4 << 20)))
        assert future.result(timeout=60) == 4 << 20
        assert CountedPayload.reductions == 1
    finally:
        if owned:
            executor.shutdown(wait=True)


def test_reusable_executor_takes_the_mode_as_part_of_its_key():
    executor = loky.get_reusable_executor(1, pickle_check="error")
    try:
        with pytest.raises(PicklingCheckError):
            executor.submit(identity, threading.Lock())
        assert executor.submit(add, 1, y=1).result(timeout=60) == 2
        again = loky.get_reusable_executor(1, pickle_check="error")
        assert again is executor
        other = loky.get_reusable_executor(1, pickle_check="off")
        assert other is not executor and other._pickle_checker is None
    finally:
        loky.get_reusable_executor(1).shutdown(wait=True)


class ReentrantArgument:
    """Submits (checks) another call while being pickled: the reused pickler
    must not be shared with the nested pickling."""

    def __init__(self, checker):
        self.checker = checker
        self.inner_payload = None

    def __reduce__(self):
        *_, self.inner_payload = self.checker.check_submit(add, (5,), {"y": 6})
        return add, (1, 2)


def test_reused_pickler_keeps_payloads_independent(pickler):
    checker = SubmitChecker("warn")
    shared = ["shared", "list"]
    first = checker.check_submit(identity, (shared,), {})[3]
    second = checker.check_submit(add, (shared, shared), {})[3]
    assert pickle.loads(first) == (identity, (shared,), {})
    assert pickle.loads(second) == (add, (shared, shared), {})
    fn, (a, b), _ = pickle.loads(second)
    assert a is b  # shared references within one call survive
    reentrant = ReentrantArgument(checker)
    outer = checker.check_submit(identity, (reentrant,), {})[3]
    assert pickle.loads(outer) == (identity, (3,), {})
    assert pickle.loads(reentrant.inner_payload) == (add, (5,), {"y": 6})


def test_a_failing_diagnosis_never_breaks_submit(monkeypatch):
    from loky_check import engine

    def broken(*args, **kwargs):
        raise RuntimeError("engine bug")

    monkeypatch.setattr(engine, "check_call", broken)
    warn = SubmitChecker("warn")
    lock = threading.Lock()
    _, caught = recorded(warn.check_submit, identity, (lock,), {})
    assert caught == []  # nothing to report, and the call proceeds as usual
    with pytest.raises(PicklingCheckError, match="cannot pickle '_thread.lock'"):
        SubmitChecker("error").check_submit(identity, (lock,), {})


def test_threads_submitting_at_one_site_warn_once(pickler):
    checker = SubmitChecker("warn")
    barrier = threading.Barrier(4)

    def submit_many():
        barrier.wait()
        for n in range(20):
            checker.check_submit(call_it, (lambda v: v, n), {})  # SITE-threads

    def run_threads():
        threads = [threading.Thread(target=submit_many) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    _, caught = recorded(run_threads)
    assert len(caught) == 1
    assert caught[0].lineno == line_of("# SITE-threads")


def three(a, b, c):
    return (a, b, c)


def test_map_items_of_three_arguments(pickler):
    checker = SubmitChecker("error")
    from loky.process_executor import _process_chunk

    chunk = ((1, 2, 3), (4, threading.Lock(), {"k": 1}))
    with pytest.raises(PicklingCheckError) as info:
        checker.check_submit(_process_chunk, (three, chunk), {})
    finding = info.value.report.findings[0]
    assert (finding.path, finding.category) == ("b", "sync_primitive")


def test_wrap_instance_of_a_local_class(pickler):
    class Point:
        def __init__(self, x):
            self.x = x

    executor = executor_for("wrap")
    future, caught = recorded(executor.submit, holder_type_name, Point(1))
    # the worker gets the bare instance back (cloudpickle carries its class)
    assert future.result(timeout=60) == "Point"
    assert len(caught) == 1 and "wrapped holder (args[0])" in str(caught[0].message)
    assert caught[0].message.report.findings[0].category == "local_class"


class RefusesToLoad:
    """Pickles fine; its __setstate__ raises when a worker loads it."""

    def __getstate__(self):
        return {"v": 1}

    def __setstate__(self, state):
        raise ValueError("corrupt state")


def test_task_whose_state_fails_to_load(pickler):
    executor = executor_for("warn")
    future, caught = recorded(executor.submit, identity, RefusesToLoad())
    assert caught == []  # it pickles: nothing to say at submit time
    with pytest.raises(ValueError, match="corrupt state") as info:
        future.result(timeout=60)
    notes = "\n".join(getattr(info.value, "__notes__", []))
    assert "cannot be loaded in the worker" in notes and "[unpickle_error]" in notes
    assert "RefusesToLoad.__setstate__" in notes and "fix:" in notes


def test_error_map_queues_nothing_when_a_later_item_fails(pickler):
    executor = executor_for("error")
    queued_before = executor._queue_count
    items = [CountedPayload(b"a"), CountedPayload(b"b"), threading.Lock()]
    with pytest.raises(PicklingCheckError):
        executor.map(payload_size, items)
    # no chunk was queued before the failing one was found
    assert executor._queue_count == queued_before
    assert not executor._pickle_checker._prechecked
    # a clean map: each chunk pickled exactly once, checked up front
    CountedPayload.reductions = 0
    sizes = executor.map(payload_size, [CountedPayload(b"abc"), CountedPayload(b"de")])
    assert list(sizes) == [3, 2]
    assert CountedPayload.reductions == 2
    assert not executor._pickle_checker._prechecked


def test_error_map_on_a_shut_down_executor_keeps_no_payloads():
    executor = loky.ProcessPoolExecutor(1, pickle_check="error")
    executor.shutdown(wait=True)
    with pytest.raises(RuntimeError):
        executor.map(add, [1, 2, 3], [4, 5, 6])
    assert executor._pickle_checker._prechecked == {}


class LoadsOnlyInWorkers:
    """Pickles in the worker; its reconstructor refuses to run in the parent."""

    def __init__(self, home_pid):
        self.home_pid = home_pid

    def __reduce__(self):
        return _rebuild_outside_parent, (self.home_pid,)


def _rebuild_outside_parent(home_pid):
    if os.getpid() == home_pid:
        raise ValueError("refuses to load in the parent")
    return LoadsOnlyInWorkers(home_pid)


def return_parent_refuser(home_pid):
    return {"rows": [LoadsOnlyInWorkers(home_pid)]}


def test_result_that_fails_to_load_in_the_parent_is_diagnosed():
    # A pool of its own: a result that does not load breaks the pool.
    with loky.ProcessPoolExecutor(1, pickle_check="warn") as executor:
        future = executor.submit(return_parent_refuser, os.getpid())
        with pytest.raises(BrokenProcessPool) as info:
            future.result(timeout=60)
    notes = "\n".join(getattr(info.value, "__notes__", []))
    assert "cannot be loaded back in the parent" in notes, notes
    assert "refuses to load in the parent" in notes
    assert "[unpickle_error]" in notes and "fix:" in notes


def test_result_load_failure_off_mode_is_bare():
    with loky.ProcessPoolExecutor(1, pickle_check="off") as executor:
        future = executor.submit(return_parent_refuser, os.getpid())
        with pytest.raises(BrokenProcessPool) as info:
            future.result(timeout=60)
    assert not getattr(info.value, "__notes__", None)


class Rereduced:
    pass


def _refuse_to_reduce(obj):
    raise ValueError("this reducer refuses")


def _reduce_as_none(obj):
    return type(None), ()


def test_a_replaced_reducer_is_seen_by_the_next_check():
    import copyreg

    executor = executor_for("error")
    copyreg.pickle(Rereduced, _refuse_to_reduce)
    try:
        with pytest.raises(PicklingCheckError):
            executor.submit(identity, Rereduced())
        copyreg.pickle(Rereduced, _reduce_as_none)  # same table size, new reducer
        assert executor.submit(identity, Rereduced()).result(timeout=60) is None
    finally:
        copyreg.dispatch_table.pop(Rereduced, None)
