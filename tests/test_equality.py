"""The comparison behind reducer round trips: equal or not, and WHAT differs."""

from __future__ import annotations

import collections
import dataclasses
import enum
import math

import numpy as np
import pytest

from loky_check.equality import (
    _EQUALITY_REGISTRY,
    difference,
    register_equality,
    shared_mutable_state,
)


@dataclasses.dataclass
class Point:
    x: float
    y: float


@dataclasses.dataclass
class Line:
    start: Point
    end: Point
    tags: list[str] = dataclasses.field(default_factory=list)


class Plain:
    def __init__(self, a, b):
        self.a = a
        self.b = b


class Slotted:
    __slots__ = ("u", "v")

    def __init__(self, u, v=None):
        self.u = u
        if v is not None:
            self.v = v


class Color(enum.Enum):
    RED = 1


Pair = collections.namedtuple("Pair", "left right")


def float32(value: float) -> float:
    return float(np.float32(value))


# -- equal values ------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        0,
        "text",
        b"bytes",
        None,
        1.5,
        math.nan,
        complex(math.nan, 1.0),
        [1, [2, (3, {"k": math.nan})]],
        {1, 2.5, math.nan},
        frozenset({"a"}),
        Point(math.nan, -0.0),
        Line(Point(0.0, 1.0), Point(2.0, math.inf), ["t"]),
        Pair(1, [2]),
        Color.RED,
        np.array([1.0, math.nan, -math.inf]),
        np.array([["a", "b"]]),
        np.float32(math.nan),
        collections.OrderedDict(a=1, b=2),
    ],
    ids=repr,
)
def test_equal_copies_have_no_difference(value):
    import pickle

    assert difference(value, pickle.loads(pickle.dumps(value))) is None


def test_plain_and_slotted_objects_compare_by_state():
    assert difference(Plain(1, [2]), Plain(1, [2])) is None
    assert difference(Slotted(1, 2), Slotted(1, 2)) is None
    assert difference(Slotted(1), Slotted(1)) is None


# -- what differs ----------------------------------------------------------------


def test_float32_truncation_names_the_field_and_both_values():
    found = difference(Point(0.1, 0.0), Point(float32(0.1), 0.0))
    assert found == ".x: 0.1 != 0.10000000149011612"


def test_nested_path_through_dataclass_list_and_dict():
    original = {"lines": [Line(Point(0, 0), Point(1, 1))]}
    copy = {"lines": [Line(Point(0, 0), Point(1, 2))]}
    assert difference(original, copy) == "['lines'][0].end.y: 1 != 2"
    assert difference(original, copy, path="obj") == "obj['lines'][0].end.y: 1 != 2"


def test_dropped_attribute_and_missing_key_are_named():
    assert (
        difference(Plain(1, 2), _without(Plain(1, 2), "b")) == ".b: missing in the copy"
    )
    assert difference({"a": 1, "b": 2}, {"a": 1}) == "['b']: missing in the copy"
    assert (
        difference({"a": 1}, {"a": 1, "z": 0})
        == "['z']: not in the original (added by the copy)"
    )
    assert difference(Slotted(1, 2), Slotted(1)) == ".v: missing in the copy"


def _without(obj, name):
    delattr(obj, name)
    return obj


def test_type_change_and_length_change():
    assert difference(Point(1, 2), (1, 2)).startswith(
        "value: type test_equality.Point != tuple"
    )
    assert difference([1, 2, 3], [1, 2]) == "value: length 3 != 2"
    assert difference(Pair(1, 2), Pair(1, 3)) == ".right: 2 != 3"
    assert difference([Pair(1, 2)], [Pair(1, 3)], path="p") == "p[0].right: 2 != 3"
    assert difference(1, True).startswith("value: type int != bool")


def test_numpy_arrays_dtype_shape_and_first_differing_element():
    values = np.array([0.5, math.nan, 0.1])
    assert (
        difference(values, values.astype(np.float32))
        == "value: dtype float64 != float32"
    )
    assert difference(values, values.reshape(3, 1)) == "value: shape (3,) != (3, 1)"
    other = values.copy()
    other[2] = 0.2
    assert difference(values, other) == "[2]: 0.1 != 0.2"
    assert difference(Plain(values, 0), Plain(other, 0)) == ".a[2]: 0.1 != 0.2"


def test_object_eq_disagreeing_only_on_nan_is_equal():
    class WithEq:
        def __init__(self, value):
            self.value = value

        def __eq__(self, other):
            return self.value == other.value

    assert WithEq(math.nan) != WithEq(math.nan)
    assert difference(WithEq(math.nan), WithEq(math.nan)) is None
    assert difference(WithEq(1.0), WithEq(2.0)) == ".value: 1.0 != 2.0"


def test_sets_name_the_missing_item():
    assert difference({1, 2}, {1}) == "value: item 2 missing in the copy"
    assert (
        difference({1}, {1, 3})
        == "value: item 3 not in the original (added by the copy)"
    )


def test_cycles_terminate():
    a = []
    a.append(a)
    b = []
    b.append(b)
    assert difference(a, b) is None
    c = [[]]
    assert difference(a, c) is not None


def test_aliasing_introduced_by_the_copy_is_a_difference():
    shared = [1]
    found = difference(Plain([1], [1]), Plain(shared, shared))
    assert (
        found
        == ".b: is the same object as .a in the copy but not in the original (aliasing)"
    )
    kept = [1]
    # sharing lost is not a difference (accidental in generated examples) ...
    assert difference(Plain(kept, kept), Plain([1], [1])) is None
    # ... but the unshared copies are still compared
    assert difference(Plain(kept, kept), Plain([1], [2])) == ".b[0]: 1 != 2"


def test_register_equality_overrides_default():
    class Approx:
        def __init__(self, value):
            self.value = value

        def __repr__(self):
            return f"Approx({self.value})"

    assert difference(Approx(0.1), Approx(float32(0.1))) is not None
    register_equality(Approx, lambda a, b: math.isclose(a.value, b.value, rel_tol=1e-6))
    try:
        assert difference(Approx(0.1), Approx(float32(0.1))) is None
        found = difference([Approx(0.1)], [Approx(0.2)])
        assert found == "[0]: Approx(0.1) != Approx(0.2) (registered equality)"
    finally:
        del _EQUALITY_REGISTRY[Approx]


def test_register_equality_rejects_bad_arguments():
    with pytest.raises(TypeError, match="expects a type"):
        register_equality("Point", lambda a, b: True)
    with pytest.raises(TypeError, match="callable"):
        register_equality(Point, 3)


def test_long_reprs_are_bounded():
    found = difference(["x" * 500], ["y" * 500])
    assert found is not None and len(found) < 200


# -- shared mutable state between two loads ------------------------------------


def test_two_independent_copies_share_nothing():
    assert shared_mutable_state(Plain([1], {"a": []}), Plain([1], {"a": []})) is None


def test_shared_list_between_copies_is_named():
    default = []
    found = shared_mutable_state(Plain(1, default), Plain(1, default))
    assert found is not None and found.startswith(".b: two loads share the same list")
    nested = {"k": [Plain(0, 0)]}
    found = shared_mutable_state({"x": nested}, {"x": nested})
    assert found is not None and found.startswith("['x']")


def test_shared_immutables_and_by_reference_objects_are_fine():
    text = "shared"
    assert shared_mutable_state(Plain(text, Color.RED), Plain(text, Color.RED)) is None
    assert shared_mutable_state(Plain(Point, len), Plain(Point, len)) is None
    frozen = np.zeros(3)
    frozen.flags.writeable = False
    assert shared_mutable_state([frozen], [frozen]) is None
    writable = np.zeros(3)
    assert shared_mutable_state([writable], [writable]) is not None
