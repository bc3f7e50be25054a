"""The engine is safe on anything it inspects (spec toolkit.md §2 "Safe traversal")."""

from __future__ import annotations

import copyreg
import pickle
import subprocess
import sys
import threading

import pytest
from _helpers import too_deep_to_pickle

from loky_check import check_call, check_object, replay

LOCK = threading.Lock()


class Watched:
    """Counts every evaluation of its property."""

    evaluations = 0

    def __init__(self):
        self.lock = LOCK

    @property
    def expensive(self):
        type(self).evaluations += 1
        raise RuntimeError("a property must never be evaluated")


class RaisingReduce:
    def __reduce__(self):
        raise RuntimeError("reduce exploded")


class RaisingGetstate:
    def __getstate__(self):
        raise KeyError("getstate exploded")


class Hostile:
    """Every dunder a careless walker might call raises."""

    def __init__(self):
        self.lock = LOCK

    def __repr__(self):
        raise RuntimeError("repr exploded")

    def __eq__(self, other):
        raise RuntimeError("eq exploded")

    def __hash__(self):
        return 1

    def __len__(self):
        raise RuntimeError("len exploded")

    def __iter__(self):
        raise RuntimeError("iter exploded")

    def __bool__(self):
        raise RuntimeError("bool exploded")


class LongRepr:
    def __repr__(self):
        return "x" * 10_000

    def __hash__(self):
        return 2


class Node:
    def __init__(self, nxt):
        self.next = nxt


def target(a, b=None):
    pass


def test_properties_are_never_evaluated():
    Watched.evaluations = 0
    [finding] = check_object({"w": Watched()}, name="d").findings
    assert finding.path == "d['w'].lock"
    assert Watched.evaluations == 0


def test_raising_reduce_and_getstate_are_reduce_errors():
    report = check_object([RaisingReduce(), RaisingGetstate()], name="x")
    got = [(f.path, f.category, f.remedy) for f in report.findings]
    assert got == [
        ("x[0]", "reduce_error", "fix_reducer"),
        ("x[1]", "reduce_error", "fix_reducer"),
    ]
    assert (
        "__reduce__ raised RuntimeError: reduce exploded" in report.findings[0].message
    )
    assert "__getstate__ raised KeyError" in report.findings[1].message


def test_raising_repr_eq_len_iter_bool_are_survived():
    hostile = Hostile()
    report = check_object({hostile: hostile}, name="d")
    assert [f.path for f in report.findings] == ["d.<key 0>.lock"]
    assert str(report)  # rendering never calls the culprit's repr either


def test_raising_repr_of_a_key_is_bounded_and_survived():
    class BadKey:
        def __repr__(self):
            raise RuntimeError("no")

        def __hash__(self):
            return 3

    report = check_object({BadKey(): LOCK, LongRepr(): threading.Event()}, name="d")
    paths = [f.path for f in report.findings]
    # the key's repr raised: its type stands for it (bounded like every repr)
    assert paths[0].startswith(f"d[<{__name__}.test_raising_repr")
    assert len(paths[0]) <= len("d[]") + 80
    assert paths[1].startswith("d[xxxx") and len(paths[1]) <= len("d[]") + 80


def test_registered_reducer_that_raises(monkeypatch):
    class Thing:
        pass

    def broken(obj):
        raise OSError("reducer exploded")

    monkeypatch.setitem(copyreg.dispatch_table, Thing, broken)
    [finding] = check_object({"t": Thing()}, name="d").findings
    assert (finding.path, finding.category) == ("d['t']", "reduce_error")
    assert "registered reducer" in finding.message


def test_reducer_returning_garbage():
    class Garbage:
        def __reduce__(self):
            return 42

    [finding] = check_object(Garbage()).findings
    assert finding.category == "reduce_error"


def test_cycles_through_objects_and_containers():
    a = Node(None)
    b = Node(a)
    a.next = b
    a.lock = LOCK
    cyclic = [a]
    cyclic.append(cyclic)
    report = check_object(cyclic, name="c")
    assert [f.path for f in report.findings] == ["c[0].lock"]


def test_recursion_deeper_than_the_limit_never_escapes():
    chain = None
    for _ in range(too_deep_to_pickle(4)):
        chain = Node(chain)
    report = check_call(target, ({"ok": 1, "chain": chain},))
    [finding] = report.findings
    assert (finding.path, finding.category, finding.remedy) == (
        "a['chain']",
        "recursion",
        "restructure",
    )

    deep = []
    for _ in range(too_deep_to_pickle(4)):
        deep = [deep]
    [finding] = check_object(deep, name="deep").findings
    assert (finding.path, finding.category) == ("deep", "recursion")
    # Raising sys.setrecursionlimit lets the pickler go deeper only before 3.12
    # (see too_deep_to_pickle): the advice must say what works on this Python.
    if sys.version_info < (3, 12):
        assert finding.message == (
            f"Nested deeper than the recursion limit ({sys.getrecursionlimit()});"
            " the pickler gives up."
        )
        assert finding.fix == (
            "flatten the structure (or raise sys.setrecursionlimit in both processes)."
        )
    else:
        assert finding.message == (
            "Nested deeper than the interpreter's C recursion limit;"
            " the pickler gives up."
        )
        assert finding.fix == (
            "flatten the structure"
            " (sys.setrecursionlimit does not raise the pickler's limit)."
        )


def test_a_huge_container_that_pickles_is_not_walked(monkeypatch):
    calls = []
    original = replay.expand

    def counting(obj, tester):
        calls.append(1)
        return original(obj, tester)

    monkeypatch.setattr(replay, "expand", counting)
    big = list(range(1_000_000))
    assert check_call(target, (big,)).ok
    assert calls == []


def test_a_huge_container_with_one_culprit_is_bisected(monkeypatch):
    tested = []
    original = replay.Tester.test

    def counting(self, obj, masked=None):
        tested.append(1)
        return original(self, obj, masked)

    monkeypatch.setattr(replay.Tester, "test", counting)
    big = list(range(1_000_000))
    big[777_777] = LOCK
    [finding] = check_object(big, name="big").findings
    assert finding.path == "big[777777]"
    assert len(tested) < 200  # bisection, not one pickle per item


def _pickle_globals() -> tuple:
    """What a check could alter in pickle and copyreg, as comparable copies."""
    return (
        dict(copyreg.dispatch_table),
        dict(copyreg._extension_registry),
        pickle.Pickler,
        pickle.dumps,
        pickle.loads,
        dict(pickle._Pickler.dispatch),
        getattr(pickle.Pickler, "persistent_id", None),
    )


def test_pickle_and_copyreg_are_left_unchanged():
    before = _pickle_globals()
    from loky.backend import reduction

    loky_before = dict(reduction._dispatch_table)
    for pickler in ("pickle", "cloudpickle", "loky"):
        check_call(
            target,
            (lambda: 0, {"x": [LOCK, RaisingReduce(), Hostile()]}),
            pickler=pickler,
        )
    after = _pickle_globals()
    assert after == before
    assert dict(reduction._dispatch_table) == loky_before


def test_dill_is_never_imported():
    code = (
        "import sys, threading\n"
        "sys.modules['dill'] = None  # any import of dill would now raise\n"
        "from loky_check import check_call, check_object, check_return_value\n"
        "from loky_check import engine, replay, taxonomy, worker_probe, report\n"
        "r = check_object({'l': threading.Lock(), 'f': lambda: 0})\n"
        "assert len(r.findings) == 2, r\n"
        "print('ok')\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_safe_repr_is_bounded_and_never_raises():
    assert 70 <= len(replay.safe_repr(LongRepr())) <= 80
    assert replay.safe_repr(Hostile()).startswith("<")
    assert len(replay.safe_repr("a" * 1000)) <= 80
    assert "..." in replay.safe_repr("a" * 1000)


@pytest.mark.parametrize("pickler", ["pickle", "cloudpickle", "loky"])
def test_no_exception_escapes_on_hostile_objects(pickler):
    weird = [Hostile(), RaisingReduce(), LongRepr(), Watched()]
    report = check_call(
        target, (weird,), {"b": {LongRepr(): RaisingGetstate()}}, pickler=pickler
    )
    assert not report.ok
    assert report.to_dict()["findings"]


class Disguised:
    """Lies about its class through a property, as some proxies do."""

    def __init__(self):
        self.value = 1

    @property
    def __class__(self):
        return threading.Event


def test_classification_uses_the_real_type_not_a_class_property():
    [finding] = check_object([Disguised()], name="x").findings
    # the pickler itself reads __class__ (and rejects the lie); the engine
    # judges by the real type, so this is not taken for an event
    assert finding.path == "x[0]"
    assert finding.type == f"{__name__}.Disguised"
    assert finding.category != "sync_primitive"


class BadItems(list):
    """Its reducer hands the pickler an iterator that raises."""

    def __reduce_ex__(self, protocol):
        def items():
            yield 1
            raise RuntimeError("items exploded")

        return (BadItems, (), None, items())


def test_a_reducer_whose_items_raise():
    [finding] = check_object({"b": BadItems()}, name="d").findings
    assert (finding.path, finding.category) == ("d['b']", "reduce_error")
