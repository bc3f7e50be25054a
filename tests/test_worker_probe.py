"""Load-side failures in a real loky worker (in_worker=True) and return values."""

from __future__ import annotations

import dataclasses
import sys
import threading
import types

import pytest
from _helpers import POSITIONS, Holder, finding_fields, shutdown_reusable_executor

from loky_check import check_call, check_object, check_return_value


@pytest.fixture(scope="module", autouse=True)
def shutdown_probe_executor():
    """The probes run on loky's reusable executor: stop its worker afterwards."""
    yield
    shutdown_reusable_executor()


def target(a, b=None, *, kw=None):
    pass


class BadSetstate:
    def __init__(self):
        self.value = 1

    def __setstate__(self, state):
        raise ValueError("setstate refuses")


# rebuilt in the worker from a table only the parent filled in
_PARENT_REGISTRY: dict[str, object] = {}


class Registered:
    def __init__(self, key):
        self.key = key

    def __reduce__(self):
        return (_from_registry, (self.key,))


def _from_registry(key):
    return _PARENT_REGISTRY[key]


@pytest.fixture
def parent_only_module(monkeypatch):
    """A module only the parent has (as when it was loaded from a path the
    workers do not see)."""
    module = types.ModuleType("lc_parent_only_mod")
    exec("def helper(x):\n    return x\n\nclass Shape:\n    pass\n", module.__dict__)
    monkeypatch.setitem(sys.modules, "lc_parent_only_mod", module)
    return module


def _registered():
    _PARENT_REGISTRY["k"] = 42
    return Registered("k")


LOAD_ROWS = {
    # row -> (factory, type, category, remedy)
    "setstate_raises": (
        lambda m: BadSetstate(),
        f"{__name__}.BadSetstate",
        "unpickle_error",
        "fix_reducer",
    ),
    "parent_only_registry": (
        lambda m: _registered(),
        f"{__name__}.Registered",
        "unpickle_error",
        "fix_reducer",
    ),
    "function_not_importable": (
        lambda m: m.helper,
        "builtins.function",
        "not_importable",
        "pickle_by_value",
    ),
    "class_not_importable": (
        lambda m: m.Shape(),
        "lc_parent_only_mod.Shape",
        "not_importable",
        "pickle_by_value",
    ),
}


@pytest.mark.parametrize("position", list(POSITIONS))
@pytest.mark.parametrize("row", list(LOAD_ROWS))
def test_load_failures_found_in_a_real_worker(row, position, parent_only_module):
    make, type_, category, remedy = LOAD_ROWS[row]
    build, argument, parameter, path = POSITIONS[position]
    args, kwargs = build(make(parent_only_module))

    assert check_call(target, args, kwargs).ok  # pickles fine in the parent
    report = check_call(target, args, kwargs, in_worker=True)

    assert len(report.findings) == 1, str(report)
    f = report.findings[0]
    got = finding_fields(f)
    assert got == (
        argument,
        parameter,
        path,
        type_,
        category,
        "error",
        remedy,
        "load",
    ), str(report)


def test_callable_not_importable_in_the_worker(parent_only_module):
    report = check_call(parent_only_module.helper, (1,), in_worker=True)
    [finding] = report.findings
    assert (finding.argument, finding.path, finding.category, finding.stage) == (
        "fn",
        "fn",
        "not_importable",
        "load",
    )
    assert "No module named 'lc_parent_only_mod'" in finding.message


def test_main_guard_definition_is_reported_once(monkeypatch):
    namespace = {"__name__": "__main__"}
    exec(
        "if __name__ == '__main__':\n    def guarded(x):\n        return x\n", namespace
    )
    monkeypatch.setattr(
        sys.modules["__main__"], "guarded", namespace["guarded"], raising=False
    )
    report = check_call(target, (namespace["guarded"],), in_worker=True)
    assert [(f.path, f.category, f.stage) for f in report.findings] == [
        ("a", "main_module", "load")
    ]


def test_in_worker_with_nothing_wrong_is_ok():
    report = check_call(target, ({"a": [1, 2]}, Holder(3)), in_worker=True)
    assert report.ok and report.findings == []


def test_in_worker_for_check_object_and_other_picklers(parent_only_module):
    report = check_object(
        [parent_only_module.helper], name="jobs", pickler="loky", in_worker=True
    )
    assert [(f.path, f.category) for f in report.findings] == [
        ("jobs[0]", "not_importable")
    ]


# ---------------------------------------------------------------------------
# return values


def returns_lock():
    return threading.Lock()


def returns_nested_lambda():
    return {"ok": 1, "f": lambda: 0}


class CarriesLock(Exception):
    def __init__(self, message):
        super().__init__(message)
        self.lock = threading.Lock()


def raises_with_lock():
    raise CarriesLock("boom")


class TwoArgError(Exception):
    def __init__(self, a, b):
        super().__init__(a)
        self.b = b


def raises_unloadable():
    raise TwoArgError(1, 2)


def returns_fine():
    return [1, 2, 3]


def test_return_value_that_cannot_get_back():
    [finding] = check_return_value(returns_lock).findings
    assert (finding.argument, finding.path, finding.category, finding.severity) == (
        "result",
        "result",
        "sync_primitive",
        "error",
    )


def test_return_value_path_inside_the_result():
    [finding] = check_return_value(returns_nested_lambda).findings
    assert (finding.path, finding.category, finding.severity) == (
        "result['f']",
        "lambda",
        "warning",
    )


def test_raised_exception_with_an_unpicklable_attribute():
    [finding] = check_return_value(raises_with_lock).findings
    assert (finding.argument, finding.path, finding.category) == (
        "exception",
        "exception.lock",
        "sync_primitive",
    )


def test_raised_exception_that_cannot_be_loaded():
    [finding] = check_return_value(raises_unloadable).findings
    assert (finding.argument, finding.category, finding.stage, finding.remedy) == (
        "exception",
        "unpickle_error",
        "load",
        "fix_reducer",
    )
    assert finding.type == f"{__name__}.TwoArgError"
    assert "missing 1 required positional argument" in finding.message


def test_return_value_that_gets_back_is_ok():
    report = check_return_value(returns_fine)
    assert report.ok and report.findings == []


def test_return_value_of_a_call_that_cannot_reach_the_worker():
    report = check_return_value(target, (threading.Lock(),))
    assert [(f.path, f.category) for f in report.findings] == [("a", "sync_primitive")]


# ---------------------------------------------------------------------------
# fidelity: the value that comes back is not the value that left


class Lossy:
    """A reducer that rounds: the copy is not the original."""

    def __init__(self, x):
        self.x = x

    def __reduce__(self):
        return (Lossy, (round(self.x, 1),))


class Faithful:
    def __init__(self, x):
        self.x = x

    def __reduce__(self):
        return (Faithful, (self.x,))


@pytest.mark.parametrize("position", list(POSITIONS))
def test_fidelity_found_in_a_real_worker(position):
    build, argument, parameter, path = POSITIONS[position]
    args, kwargs = build(Lossy(0.123))
    report = check_call(target, args, kwargs, in_worker=True)
    [f] = report.findings
    got = finding_fields(f)
    assert got == (
        argument,
        parameter,
        path,
        f"{__name__}.Lossy",
        "fidelity",
        "error",
        "fix_reducer",
        "load",
    )
    assert ".x: 0.123 != 0.1" in f.message


@dataclasses.dataclass(frozen=True)
class Measure:
    value: float


def test_faithful_reducers_and_by_value_functions_are_not_fidelity_findings():
    # a dataclass holding NaN is != to its copy, yet nothing was lost
    nan_measure = Measure(float("nan"))
    args = (
        {"f": Faithful(0.123), "n": float("nan"), "s": {1, 2}},
        [Holder(1), nan_measure],
    )
    assert check_call(target, args, in_worker=True).findings == []
    report = check_call(target, (lambda x: x,), pickler="cloudpickle", in_worker=True)
    assert report.findings == []


class KillsTheWorker:
    def __init__(self):
        self.state = 1

    def __setstate__(self, state):
        import os

        os._exit(3)


def test_a_load_that_kills_the_worker_is_blamed_on_its_argument():
    report = check_call(
        target, ({"k": [0, KillsTheWorker()]},), {"kw": Holder(1)}, in_worker=True
    )
    [f] = report.findings
    assert (f.argument, f.path, f.category, f.stage, f.remedy) == (
        "args[0]",
        "a['k'][1]",
        "unpickle_error",
        "load",
        "fix_reducer",
    )
    assert "the worker died while loading it" in f.message
    # the probe pool was replaced and works again
    assert check_call(target, (Holder(2),), in_worker=True).ok


def returns_unloadable_inside():
    return {"ok": [1, 2], "err": TwoArgError(1, 2)}


def test_a_result_that_does_not_load_back_is_narrowed():
    [finding] = check_return_value(returns_unloadable_inside).findings
    assert finding_fields(finding, "argument", "path", "type", "category", "stage") == (
        "result",
        "result['err']",
        f"{__name__}.TwoArgError",
        "unpickle_error",
        "load",
    )
