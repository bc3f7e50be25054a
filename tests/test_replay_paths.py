"""Paths follow exactly what the pickler follows (spec toolkit.md §2 path grammar)."""

from __future__ import annotations

import collections
import copyreg
import dataclasses
import functools
import threading

import pytest
from hypothesis import given
from hypothesis import strategies as st

from loky_check import check_call, check_object

LOCK = threading.Lock()


def paths(report):
    return [f.path for f in report.findings]


def only(report):
    assert len(report.findings) == 1, str(report)
    return report.findings[0]


Point = collections.namedtuple("Point", "x y")


@dataclasses.dataclass
class Config:
    name: str
    hook: object = None


@dataclasses.dataclass(slots=True)
class SlotConfig:
    name: str
    hook: object = None


class WithGetstate:
    def __init__(self, payload):
        self.payload = payload
        self.cache = "dropped"

    def __getstate__(self):
        return {"kept": self.payload}


class TupleState:
    def __init__(self, payload):
        self.payload = payload

    def __getstate__(self):
        return ("v1", self.payload)

    def __setstate__(self, state):
        self.payload = state[1]


class Reduced:
    def __init__(self, a, b):
        self.a, self.b = a, b

    def __reduce__(self):
        return (Reduced, (self.a, self.b))


class Registered:
    def __init__(self, inner):
        self.inner = inner


def reduce_registered(obj):
    return Registered, (obj.inner,)


class ListSub(list):
    pass


class DictSub(dict):
    pass


class Owner:
    def __init__(self, thing):
        self.thing = thing

    def method(self):
        return self.thing


class CustomError(Exception):
    pass


def test_namedtuple_fields():
    assert paths(check_object(Point(1, LOCK), name="p")) == ["p.y"]


def test_dataclass_fields():
    assert paths(check_object(Config("a", LOCK), name="cfg")) == ["cfg.hook"]


def test_slots_dataclass_fields():
    assert paths(check_object(SlotConfig("a", LOCK), name="cfg")) == ["cfg.hook"]


def test_partial_func_args_keywords():
    def local(x):
        return x

    p = functools.partial(local, 1, LOCK, cb=threading.Event())
    report = check_object(p, name="p")
    assert sorted(paths(report)) == ["p.args[1]", "p.func", "p.keywords['cb']"]


def test_dict_keys_and_values_and_sets():
    key = threading.RLock()
    data = {"ok": 1, key: "value", "lock": LOCK, "s": {1, frozenset([LOCK])}}
    report = check_object(data, name="d")
    # the dict key is its own culprit; the same LOCK object is reported once
    assert paths(report) == ["d.<key 1>", "d['lock']"]


def test_set_item():
    report = check_object({"s": frozenset([threading.Event()])}, name="d")
    assert paths(report) == ["d['s'].<item 0>"]


def test_getstate_dict_and_non_dict_state():
    assert paths(check_object(WithGetstate(LOCK), name="o")) == ["o.kept"]
    assert paths(check_object(TupleState(LOCK), name="o")) == ["o.<state>[1]"]


def test_reduce_constructor_arguments():
    assert paths(check_object(Reduced(1, LOCK), name="r")) == ["r.<reduce 1>"]


def test_copyreg_reducer_is_followed():
    copyreg.pickle(Registered, reduce_registered)
    try:
        assert paths(check_object(Registered(LOCK), name="r")) == ["r.<reduce 0>"]
    finally:
        del copyreg.dispatch_table[Registered]


def test_loky_registered_reducer_is_followed():
    from loky.backend import reduction

    class Hidden:
        def __init__(self, secret):
            self.secret = secret

    def reduce_hidden(obj):
        return Hidden, (obj.secret,)

    reduction.register(Hidden, reduce_hidden)
    try:
        report = check_object(Hidden(LOCK), name="h", pickler="loky")
        assert paths(report) == ["h.<reduce 0>"]
    finally:
        reduction._dispatch_table.pop(Hidden, None)


def test_list_and_dict_subclasses():
    assert paths(check_object(ListSub([0, LOCK]), name="l")) == ["l[1]"]
    assert paths(check_object(DictSub(a=LOCK), name="m")) == ["m['a']"]


def test_bound_method_self():
    report = check_call(Owner(LOCK).method)
    assert paths(report) == ["fn.__self__.thing"]


def test_exception_args():
    assert paths(check_object(CustomError("boom", LOCK), name="e")) == ["e.args[1]"]


def test_closure_and_global_of_by_value_function():
    event = threading.Event()

    def uses_closure():
        return event

    def uses_global():
        return LOCK

    assert paths(check_object(uses_closure, name="fn")) == ["fn.<closure event>"]
    assert paths(check_object(uses_global, name="fn")) == ["fn.<global LOCK>"]


def test_nested_by_value_functions():
    event = threading.Event()

    def inner():
        return event

    def outer():
        return inner()

    assert paths(check_object(outer, name="fn")) == [
        "fn.<closure inner>.<closure event>"
    ]


def test_function_defaults():
    def with_default(x=LOCK):
        return x

    assert paths(check_object(with_default, name="fn")) == ["fn.__defaults__[0]"]


def test_deeply_nested_containers():
    data = {"a": [{"b": (1, 2, {"c": [0, 0, LOCK]})}]}
    assert paths(check_object(data, name="x")) == ["x['a'][0]['b'][2]['c'][2]"]


def test_several_culprits_all_reported_once_each():
    shared = threading.Lock()
    data = [shared, {"again": shared}, threading.Event(), lambda: 0]
    report = check_object(data, name="x")
    assert sorted(paths(report)) == ["x[0]", "x[2]", "x[3]"]


def test_cycles_are_survived():
    a = {"name": "a"}
    b = {"a": a, "lock": LOCK}
    a["b"] = b
    assert paths(check_object(a, name="a")) == ["a['b']['lock']"]


def test_huge_container_with_one_culprit_at_the_end():
    data = [{"i": i} for i in range(100_000)]
    data[-1]["lock"] = LOCK
    assert paths(check_object(data, name="rows")) == ["rows[99999]['lock']"]


# ---------------------------------------------------------------------------
# Property: a culprit hidden anywhere in random picklable data is found at
# exactly its path, and nothing is reported without a culprit.


def _local_function():
    def local():
        return 0

    return local


def _local_instance():
    class Local:
        pass

    return Local()


class _Exploding:
    def __reduce__(self):
        raise RuntimeError("no")


_CULPRITS = {
    "sync_primitive": threading.Lock,
    "generator": lambda: (i for i in ()),
    "lambda": lambda: lambda: 0,
    "weakref": lambda: __import__("weakref").ref(Owner),
    "local_function": _local_function,
    "local_class": _local_instance,
    "module": lambda: collections,
    "c_extension": lambda: __import__("hashlib").sha256(),
    "reduce_error": _Exploding,
    "sync_primitive_event": threading.Event,
}

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False),
    st.text(max_size=5),
)


def _containers(children):
    return st.one_of(
        st.lists(children, min_size=1, max_size=4).map(lambda v: ("list", v)),
        st.lists(children, min_size=1, max_size=4).map(lambda v: ("tuple", v)),
        st.dictionaries(st.text(max_size=4), children, min_size=1, max_size=4).map(
            lambda v: ("dict", v)
        ),
        children.map(lambda v: ("attr", v)),
        children.map(lambda v: ("point", v)),
        # set items must be hashable: sets hold plain leaves only
        st.lists(st.integers(), min_size=1, max_size=4, unique=True).map(
            lambda v: ("set", [("leaf", i) for i in v])
        ),
    )


shapes = st.recursive(scalars.map(lambda v: ("leaf", v)), _containers, max_leaves=12)


def _build(shape, path, culprit_at, culprit, choice):
    """Turn a shape into data; place the culprit at leaf number ``culprit_at``."""
    kind, value = shape
    if kind == "leaf":
        index = choice[0]
        choice[0] += 1
        if index == culprit_at:
            return culprit, path
        return value, None
    found = None

    def sub(child, step):
        nonlocal found
        built, where = _build(child, path + step, culprit_at, culprit, choice)
        if where is not None:
            found = where
        return built

    if kind in ("list", "tuple"):
        items = [sub(child, f"[{i}]") for i, child in enumerate(value)]
        return (items if kind == "list" else tuple(items)), found
    if kind == "dict":
        return {k: sub(child, f"[{k!r}]") for k, child in value.items()}, found
    if kind == "attr":
        return Owner(sub(value, ".thing")), found
    if kind == "set":
        items = [sub(child, "") for child in value]
        built = frozenset(items)
        if found is not None:  # the culprit's step depends on the set's order
            n = next(i for i, item in enumerate(built) if not isinstance(item, int))
            found = f"{path}.<item {n}>"
        return built, found
    return Point(0, sub(value, ".y")), found


def _count_leaves(shape):
    kind, value = shape
    if kind == "leaf":
        return 1
    if kind in ("list", "tuple", "set"):
        return sum(_count_leaves(c) for c in value)
    if kind == "dict":
        return sum(_count_leaves(c) for c in value.values())
    return _count_leaves(value)


@given(shapes, st.sampled_from(sorted(_CULPRITS)), st.data())
def test_hidden_culprit_is_found_at_its_path(shape, category, data):
    leaves = _count_leaves(shape)
    culprit_at = data.draw(st.integers(0, leaves - 1))
    value, where = _build(shape, "x", culprit_at, _CULPRITS[category](), [0])
    report = check_object(value, name="x")
    expected = category.removesuffix("_event")
    assert [(f.path, f.category) for f in report.findings] == [(where, expected)]


@given(shapes)
def test_no_culprit_no_finding(shape):
    value, _ = _build(shape, "x", -1, None, [0])
    assert check_object(value, name="x").findings == []


@pytest.mark.parametrize("pickler", ["pickle", "cloudpickle", "loky"])
def test_paths_are_the_same_for_every_pickler(pickler):
    report = check_object({"k": [Point(1, LOCK)]}, name="x", pickler=pickler)
    assert paths(report) == ["x['k'][0].y"]
