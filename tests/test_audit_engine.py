"""Audit regressions for the analysis engine (spec toolkit.md §2, §4, §5, §10)."""

from __future__ import annotations

import collections
import dataclasses
import functools
import threading

import pytest
from _helpers import finding_fields, too_deep_to_pickle

from loky_check import check_call, check_object


def target(a, b=None, *rest, kw=None, **opts):
    """The callable every call is checked against."""


def _deep_tuple():
    value = ()
    for _ in range(too_deep_to_pickle(3)):
        value = (value,)
    return value


@pytest.mark.parametrize("pickler", ["pickle", "cloudpickle", "loky"])
@pytest.mark.parametrize(
    "build, path",
    [
        (lambda d: {d}, "a.<item 0>"),
        (lambda d: [0, d], "a[1]"),
        (lambda d: {"k": d}, "a['k']"),
        (lambda d: lambda: d, "a.<closure d>"),
    ],
    ids=["set", "list", "dict", "closure"],
)
def test_recursion_is_reported_at_the_deep_value_for_every_pickler(
    build, path, pickler
):
    # cloudpickle re-raises the overflow as a PicklingError: it is still a
    # recursion finding (not a walk down the whole chain ending in c_extension),
    # and a one-item container holding the chain is not its top.
    deep = _deep_tuple()
    report = check_call(target, (build(deep),), pickler=pickler)
    [finding] = report.findings
    assert (finding.path, finding.type, finding.category, finding.severity) == (
        path,
        "builtins.tuple",
        "recursion",
        "error",
    ), str(report)
    assert finding.remedy == "restructure"
    assert finding.carried_by == {"pickle": False, "cloudpickle": False, "loky": False}


def test_a_deep_chain_at_the_top_is_reported_at_the_top():
    report = check_object(_deep_tuple(), name="a", pickler="cloudpickle")
    [finding] = report.findings
    assert (finding.path, finding.category) == ("a", "recursion")


@pytest.mark.parametrize("kwargs", [None, {}, {"kw": 3}])
def test_a_clean_call_costs_one_pickle_and_no_replay(monkeypatch, kwargs):
    from loky_check import engine, replay

    tester = replay.make_tester("pickle")
    calls = []
    real = tester._dumps

    def counting(obj):
        calls.append(obj)
        return real(obj)

    def no_replay(*args, **kw):
        raise AssertionError("a clean call must not be replayed")

    monkeypatch.setattr(tester, "_dumps", counting)
    monkeypatch.setattr(replay, "Walker", no_replay)
    monkeypatch.setattr(engine, "bind_arguments", no_replay)
    report = check_call(target, (1, [2.0, "x"]), kwargs)
    assert report.ok and report.findings == []
    assert len(calls) == 1
    assert str(report).startswith("loky-check  ")


def test_the_main_scan_finds_both_main_names():
    from loky_check.replay import references_main

    assert references_main(b"c__main__\nf\n")
    assert references_main(b"\x8c\x0b__mp_main__\x94")
    assert not references_main(b"main")
    assert not references_main(b"__maine__ domain__")


@pytest.fixture
def parent_only_module(monkeypatch, stop_reusable_executor):
    """A module only the parent has (workers cannot import it)."""
    import sys
    import types

    module = types.ModuleType("lc_audit_parent_only")
    exec("def helper(x):\n    return x\n", module.__dict__)
    monkeypatch.setitem(sys.modules, "lc_audit_parent_only", module)
    return module


def test_by_value_function_whose_closure_cannot_load_in_the_worker(
    parent_only_module,
):
    helper = parent_only_module.helper

    def job(x):
        return helper(x)

    # dump side: plain pickle fails, loky's pickler carries it (a warning)...
    [dumped] = check_call(target, (job,)).findings
    assert (dumped.path, dumped.severity) == ("a", "warning")
    # ...but the worker cannot import what the closure refers to: one finding,
    # at the cell, not a second one on the function.
    report = check_call(target, (job,), in_worker=True)
    [finding] = report.findings
    got = finding_fields(finding)
    assert got == (
        "args[0]",
        "a",
        "a.<closure helper>",
        "builtins.function",
        "not_importable",
        "error",
        "pickle_by_value",
        "load",
    ), str(report)
    assert not report.ok


def test_a_by_value_function_that_loads_keeps_its_warning(stop_reusable_executor):
    report = check_call(target, (lambda x: x,), in_worker=True)
    [finding] = report.findings
    assert (finding.path, finding.category, finding.severity, finding.stage) == (
        "a",
        "lambda",
        "warning",
        "dump",
    )


def test_a_lambda_cloudpickle_cannot_carry_does_not_claim_it_can():
    import socket

    sock = socket.socket()
    try:
        report = check_object(lambda: sock, name="a")
    finally:
        sock.close()
    [finding] = report.findings
    # loky's pickler (its socket reducer) carries it, cloudpickle alone does not
    assert finding.carried_by == {"pickle": False, "cloudpickle": False, "loky": True}
    assert (finding.category, finding.severity) == ("lambda", "warning")
    assert "cloudpickle carries it" not in finding.message
    assert finding.remedy == "move_to_module" and not finding.wrap_fixes
    assert "replace the lambda with a def" in finding.fix
    # the finding says that wrapping was tried and does not help (spec §2)
    assert "was checked and does not help" in finding.fix


def test_c_extension_heap_types_are_c_extension_not_other():
    import os
    import zlib

    compressor = zlib.compressobj()
    with os.scandir(".") as entries:
        for obj, type_ in [
            (compressor, "zlib.Compress"),
            (entries, "posix.ScandirIterator" if os.name == "posix" else None),
        ]:
            [finding] = check_call(target, (obj,)).findings
            if type_ is not None:
                assert finding.type == type_
            assert (finding.category, finding.remedy, finding.severity) == (
                "c_extension",
                "implement_reduce",
                "error",
            ), str(finding)


def test_multiprocessing_shared_values_are_sync_primitives():
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    for shared in (ctx.Value("i", 0), ctx.Array("i", 3)):
        [finding] = check_call(target, ([0, shared],)).findings
        assert (finding.path, finding.category, finding.remedy) == (
            "a[1]",
            "sync_primitive",
            "create_in_worker",
        ), str(finding)
        assert finding.type.startswith("multiprocessing.sharedctypes.Synchronized")


_SHARED_LOCK = threading.Lock()


def test_a_culprit_the_instance_holds_is_named_at_the_instance_path():
    class Guarded:
        def __init__(self):
            self.lock = _SHARED_LOCK

        def locked(self):
            with _SHARED_LOCK:  # the class, taken by value, refers to it too
                return True

    report = check_call(target, (Guarded(),))
    paths = {(f.path, f.category) for f in report.findings}
    assert ("a.lock", "sync_primitive") in paths, str(report)
    assert not any("__class__" in f.path for f in report.findings), str(report)
    [instance] = [f for f in report.findings if f.category == "local_class"]
    assert (instance.path, instance.type) == (
        "a",
        f"{__name__}.test_a_culprit_the_instance_holds_is_named_at_the_instance_path"
        ".<locals>.Guarded",
    )


class _Link:
    def __init__(self, value, nxt):
        self.value = value
        self.next = nxt


def _chain(make, depth=None):
    value = None
    for _ in range(depth or too_deep_to_pickle(3)):
        value = make(value)
    return value


@pytest.mark.parametrize(
    "make, type_",
    [
        (lambda v: {"n": v}, "builtins.dict"),
        (lambda v: [v], "builtins.list"),
        (lambda v: (v,), "builtins.tuple"),
        (lambda v: _Link(0, v), f"{__name__}._Link"),
        (lambda v: [{"n": v}], "builtins.list"),  # a chain of period 2
    ],
    ids=["dict", "list", "tuple", "object", "period2"],
)
def test_a_deep_chain_is_reported_at_its_own_top(make, type_):
    # {'cfg': chain}: the culprit is the chain at a['cfg'], not the dict
    # holding it, even when that dict has the chain's own type.
    report = check_call(target, ({"cfg": _chain(make)},))
    [finding] = report.findings
    assert (finding.path, finding.type, finding.category) == (
        "a['cfg']",
        type_,
        "recursion",
    ), str(report)


def test_a_chain_holding_a_shared_lock_gets_both_findings_right():

    lock = threading.Lock()
    report = check_call(target, ({"cfg": _chain(lambda v: _Link(lock, v))},))
    got = [(f.path, f.category) for f in report.findings]
    assert got == [("a['cfg'].value", "sync_primitive"), ("a['cfg']", "recursion")]


class _RefusesSetstate:
    def __init__(self):
        self.value = 1

    def __setstate__(self, state):
        raise ValueError("setstate refuses")


def _returns_a_closure_over_a_bad_value():
    bad = _RefusesSetstate()
    return lambda: bad


def test_a_returned_closure_whose_cell_cannot_load_back_has_one_finding(
    stop_reusable_executor,
):
    from loky_check import check_return_value

    report = check_return_value(_returns_a_closure_over_a_bad_value)
    [finding] = report.findings
    assert finding_fields(finding, "argument", "path", "type", "category", "stage") == (
        "result",
        "result.<closure bad>",
        f"{__name__}._RefusesSetstate",
        "unpickle_error",
        "load",
    ), str(report)


def test_a_main_reference_in_a_large_call_is_still_found(monkeypatch):
    import sys

    namespace = {"__name__": "__main__"}
    exec("def main_job(x):\n    return x\n", namespace)
    monkeypatch.setattr(
        sys.modules["__main__"], "main_job", namespace["main_job"], raising=False
    )
    payload = b"x" * (1 << 20)  # large enough for the __main__ precheck
    report = check_call(target, (payload,), {"kw": namespace["main_job"]})
    [finding] = report.findings
    assert (finding.path, finding.category, finding.stage) == (
        "kw",
        "main_module",
        "load",
    )


def test_a_large_clean_call_is_ok():
    assert check_call(target, (b"x" * (1 << 20), "y" * (1 << 20))).ok


class _Callable:
    def __call__(self, x):
        return x


def test_report_headers_name_partials_and_callable_instances_without_addresses():

    assert (
        check_call(functools.partial(target, 1), (2,)).target
        == f"functools.partial({__name__}:target)"
    )
    assert check_call(_Callable(), (2,)).target == f"{__name__}:_Callable.__call__"


def test_a_deep_chain_with_distinct_keys_is_reported_at_the_top_of_its_run():
    value = None
    for i in range(too_deep_to_pickle(3)):
        value = {f"k{i}": value}
    [finding] = check_object(value, name="a", pickler="cloudpickle").findings
    assert (finding.path, finding.category) == ("a", "recursion")


# ---------------------------------------------------------------------------
# The path grammar of spec §2 in every nesting position, for culprits of
# different kinds (the taxonomy-table tests cover five positions per row).

_NT = collections.namedtuple("_NT", "a x")


@dataclasses.dataclass
class _DC:
    x: object


@dataclasses.dataclass(slots=True)
class _SlotDC:
    x: object


_GLOBAL_CULPRIT = None


def _reads_global():
    return _GLOBAL_CULPRIT


def _local_instance():
    class Local:
        pass

    return Local()


def _generator():
    yield 1


def _by_value_reader(monkeypatch, culprit):
    # a by-value function (a lambda) reading a module global
    monkeypatch.setitem(globals(), "_GLOBAL_CULPRIT", culprit)
    return eval("lambda: _GLOBAL_CULPRIT", globals())


_POSITIONS = {
    # id -> (build (args, kwargs) from the culprit, argument, parameter, path)
    "tuple": (lambda c, m: (((0, c),), {}), "args[0]", "a", "a[1]"),
    "dict_key": (lambda c, m: (({"k": 0, c: 1},), {}), "args[0]", "a", "a.<key 1>"),
    "set": (lambda c, m: (({c},), {}), "args[0]", "a", "a.<item 0>"),
    "namedtuple": (lambda c, m: ((_NT(0, c),), {}), "args[0]", "a", "a.x"),
    "dataclass": (lambda c, m: ((_DC(c),), {}), "args[0]", "a", "a.x"),
    "slots_dataclass": (lambda c, m: ((_SlotDC(c),), {}), "args[0]", "a", "a.x"),
    "partial_args": (
        lambda c, m: ((functools.partial(target, 0, c),), {}),
        "args[0]",
        "a",
        "a.args[1]",
    ),
    "partial_keywords": (
        lambda c, m: ((functools.partial(target, kw=c),), {}),
        "args[0]",
        "a",
        "a.keywords['kw']",
    ),
    "star_args": (lambda c, m: ((0, 1, 2, c), {}), "args[3]", "rest", "rest[1]"),
    "star_kwargs": (
        lambda c, m: ((0,), {"zz": c}),
        "kwargs['zz']",
        "opts",
        "opts['zz']",
    ),
    "keyword_only": (lambda c, m: ((0,), {"kw": c}), "kwargs['kw']", "kw", "kw"),
}
_BY_VALUE_POSITIONS = {
    "closure": (lambda c, m: (((lambda: c),), {}), "args[0]", "a", "a.<closure c>"),
    "global": (
        lambda c, m: ((_by_value_reader(m, c),), {}),
        "args[0]",
        "a",
        "a.<global _GLOBAL_CULPRIT>",
    ),
}
_CULPRITS = {
    # id -> (factory, type, category, severity, remedy)
    "lock": (
        lambda: threading.Lock(),
        "_thread.lock",
        "sync_primitive",
        "error",
        "create_in_worker",
    ),
    "generator": (
        _generator,
        "builtins.generator",
        "generator",
        "error",
        "materialize",
    ),
    "lambda": (lambda: lambda x: x, "builtins.function", "lambda", "warning", "wrap"),
    "local_instance": (
        _local_instance,
        f"{__name__}._local_instance.<locals>.Local",
        "local_class",
        "warning",
        "wrap",
    ),
}


@pytest.mark.parametrize("position", [*_POSITIONS, *_BY_VALUE_POSITIONS])
@pytest.mark.parametrize("culprit_id", list(_CULPRITS))
def test_path_grammar_in_every_position(culprit_id, position, monkeypatch):
    make, type_, category, severity, remedy = _CULPRITS[culprit_id]
    if position in _BY_VALUE_POSITIONS and severity == "warning":
        pytest.skip("loky's pickler carries the whole function: the finding is on it")
    build, argument, parameter, path = {**_POSITIONS, **_BY_VALUE_POSITIONS}[position]
    args, kwargs = build(make(), monkeypatch)
    report = check_call(target, args, kwargs)
    [finding] = report.findings
    got = finding_fields(finding)
    assert got == (
        argument,
        parameter,
        path,
        type_,
        category,
        severity,
        remedy,
        "dump",
    ), str(report)
    data = report.to_dict()["findings"][0]
    assert (data["argument"], data["parameter"], data["path"]) == (
        argument,
        parameter,
        path,
    )


def test_fidelity_details_bound_each_repr():
    from loky_check.fidelity import locate_differences

    class LongRepr(type):
        def __repr__(cls):
            return "X" * 500

    [difference] = locate_differences(
        [LongRepr("A", (), {})], [LongRepr("B", (), {})], "a"
    )
    assert difference.path == "a[0]"
    left, right = difference.detail.split(" != ")
    assert len(left) <= 80 and len(right) <= 80


def test_generator_row_texts_fit_the_culprit():
    import sys

    async def agen():
        yield 1

    def traceback_of():
        try:
            raise ValueError
        except ValueError as exc:
            return exc.__traceback__

    cases = [
        ((x for x in []), "A generator holds", "list(a)"),
        (agen(), "An async generator holds", "[x async for x in a]"),
        (sys._getframe(), "A frame belongs", "traceback.format_tb"),
        (traceback_of(), "A traceback belongs", "traceback.format_tb"),
    ]
    for culprit, message, fix in cases:
        [finding] = check_object(culprit, name="a").findings
        assert (finding.category, finding.remedy) == ("generator", "materialize")
        assert finding.message.startswith(message), finding.message
        assert fix in finding.fix, finding.fix


def test_weakref_fix_does_not_ask_to_give_the_weakref_type_a_reducer():
    import weakref

    class Referent:
        pass

    referent = Referent()
    [finding] = check_call(target, ({"ref": weakref.ref(referent)},)).findings
    assert (finding.path, finding.category, finding.remedy) == (
        "a['ref']",
        "weakref",
        "implement_reduce",
    )
    assert "ReferenceType a __reduce__" not in finding.fix
    assert "__getstate__" in finding.fix


class _Float32Point:
    def __init__(self, x):
        self.x = x

    def __reduce__(self):
        import struct

        return (_Float32Point, (struct.unpack("f", struct.pack("f", self.x))[0],))


def test_a_fidelity_fix_names_the_hook_the_class_defines(stop_reusable_executor):
    report = check_call(target, ({"p": _Float32Point(0.1)},), in_worker=True)
    [finding] = report.findings
    assert (finding.path, finding.category, finding.remedy, finding.stage) == (
        "a['p']",
        "fidelity",
        "fix_reducer",
        "load",
    )
    assert "_Float32Point's __reduce__ so that" in finding.fix
    assert ".x: 0.1 != 0.10000000149" in finding.message


def _local_error_and_cached_function():
    class LocalError(Exception):
        pass

    @functools.lru_cache
    def cached(x):
        return x

    return LocalError("boom"), cached


def test_a_local_exception_is_moved_to_a_module_not_wrapped():
    # A wrapped exception round-trips but can no longer be raised or caught.
    error, _cached = _local_error_and_cached_function()
    [finding] = check_object(error, name="error").findings
    assert (finding.category, finding.remedy) == ("local_class", "move_to_module")
    assert finding.wrap_fixes is True
    assert finding.fix.startswith(
        "define _local_error_and_cached_function.LocalError at module level"
    )
    assert "can no longer be raised or caught" in finding.fix


def test_a_local_lru_cache_function_is_a_local_function_to_move():
    _error, cached = _local_error_and_cached_function()
    report = check_call(len, args=(cached,))
    [finding] = report.findings
    assert (finding.path, finding.type) == ("obj", "functools._lru_cache_wrapper")
    assert (finding.category, finding.remedy) == ("local_function", "move_to_module")
    assert finding.severity == "error"  # no pickler carries the wrapper by value
    assert finding.wrap_fixes is False
    assert "wraps a function defined inside another function" in finding.message
    assert "define _local_error_and_cached_function.cached at module level" in (
        finding.fix
    )


def test_the_json_report_always_has_its_reducers_key():
    assert check_object(1).to_dict()["reducers"] == []


class CountsReductions:
    count = 0

    def __reduce__(self):
        type(self).count += 1
        return CountsReductions, ()


def test_a_failing_call_pickles_the_whole_call_once():
    # Once for the whole call (the fast path, whose failure is not tried
    # again), once when its own argument is diagnosed.
    CountsReductions.count = 0
    report = check_call(target, (CountsReductions(), threading.Lock()))
    assert [f.path for f in report.findings] == ["b"]
    assert CountsReductions.count == 2
