"""Find where a round-tripped copy differs from the original (``fidelity``).

``locate_differences(original, copy, path)`` walks both objects side by side
through their real state (container items, instance ``__dict__`` and slots,
namedtuple fields) and returns the objects whose copy differs, each with the
first difference (``.x: 0.1 != 0.10000000149``). A changed plain value is
charged to the object holding it: that object's reducer lost it.

Only state is read (``__dict__``, slot descriptors): no property is evaluated.
A user ``__eq__`` is consulted (guarded) where a type defines one; functions
and classes compare by name (taken by value they are new objects, not wrong
ones). The per-value comparison is ``loky_check.equality.difference``.
"""

from __future__ import annotations

import dataclasses
import types
from typing import Any

from . import replay

_MAX_DEPTH = 200
_MISMATCH = object()


@dataclasses.dataclass
class Difference:
    path: str
    obj: Any
    detail: str


def _difference(a: Any, b: Any) -> str | None:
    from .equality import difference

    try:
        text = difference(a, b)
    except Exception:  # noqa: BLE001 - a comparison must not break the check
        return None
    if text is not None and text.startswith("value: "):
        text = text[len("value: ") :]
    return text


def _own_eq(cls: type) -> Any:
    for klass in cls.__mro__:
        if klass is object:
            return None
        eq = klass.__dict__.get("__eq__")
        if isinstance(eq, types.FunctionType):
            return eq
        if eq is not None:
            return None  # a C type's own equality: compare as a leaf
    return None


def _field_wise_eq(cls: type) -> bool:
    """A dataclass-generated ``__eq__`` only compares the fields, which the
    state walk has already compared NaN-aware: its False (a NaN field) is no
    fidelity loss. (Generated methods are compiled from a string.)"""
    eq = vars(cls).get("__eq__")
    code = getattr(eq, "__code__", None)
    return (
        getattr(cls, "__dataclass_params__", None) is not None
        and code is not None
        and code.co_filename == "<string>"
    )


def _instance_state(obj: Any) -> dict[str, Any] | None:
    state: dict[str, Any] = {}
    try:
        own = object.__getattribute__(obj, "__dict__")
    except Exception:
        own = None
    if isinstance(own, dict):
        state.update(own)
    for klass in type(obj).__mro__:
        slots = klass.__dict__.get("__slots__", ())
        if isinstance(slots, str):
            slots = (slots,)
        for name in slots:
            descriptor = klass.__dict__.get(name)
            if isinstance(descriptor, types.MemberDescriptorType):
                try:
                    state[name] = descriptor.__get__(obj, klass)
                except AttributeError:
                    continue
    return state if (own is not None or state) else None


def _pairs(a: Any, b: Any) -> Any:
    """(step, a_child, b_child) to compare, None for a leaf, or _MISMATCH."""
    cls = type(a)
    if type(b) is not cls:
        return _MISMATCH
    if cls in replay._ATOMIC or cls in (set, frozenset):
        return None
    if cls in (list, tuple):
        if len(a) != len(b):
            return _MISMATCH
        return [(f"[{i}]", x, y) for i, (x, y) in enumerate(zip(a, b, strict=True))]
    if cls is dict:
        if len(a) != len(b):
            return _MISMATCH
        pairs = []
        for (ka, va), (kb, vb) in zip(a.items(), b.items(), strict=True):
            if _difference(ka, kb) is not None:
                return _MISMATCH
            pairs.append((f"[{replay.safe_repr(ka)}]", va, vb))
        return pairs
    if taxonomy_is_c(cls):
        return None  # numpy arrays and other C values: compared whole
    if issubclass(cls, tuple):
        fields = replay._mro_lookup(cls, "_fields")
        if isinstance(fields, tuple) and len(fields) == len(a) == len(b):
            return [(f".{f}", x, y) for f, x, y in zip(fields, a, b, strict=True)]
    state_a, state_b = _instance_state(a), _instance_state(b)
    if state_a is None or state_b is None:
        return None
    if set(state_a) != set(state_b):
        return _MISMATCH
    return [(replay._attr_step(k), v, state_b[k]) for k, v in state_a.items()]


def taxonomy_is_c(cls: type) -> bool:
    from .taxonomy import is_c_type

    return is_c_type(cls) and cls not in (list, tuple, dict)


def _same_definition(a: Any, b: Any) -> bool:
    return getattr(a, "__qualname__", None) == getattr(
        b, "__qualname__", None
    ) and getattr(a, "__module__", None) == getattr(b, "__module__", None)


def locate_differences(original: Any, copy: Any, path: str) -> list[Difference]:
    """The objects whose round-tripped copy differs, root-first paths."""
    try:
        return _locate(original, copy, path, 0, set())
    except RecursionError:
        detail = _difference(original, copy)
        return [Difference(path, original, detail)] if detail else []


def _locate(a: Any, b: Any, path: str, depth: int, seen: set[int]) -> list[Difference]:
    if a is b or depth > _MAX_DEPTH or id(a) in seen:
        return []
    if isinstance(a, (types.FunctionType, type)) or isinstance(
        b, (types.FunctionType, type)
    ):
        return (
            []
            if _same_definition(a, b)
            else [
                Difference(
                    path, a, f"{replay.safe_repr(a, 80)} != {replay.safe_repr(b, 80)}"
                )
            ]
        )
    seen.add(id(a))
    eq = _own_eq(type(a))
    if eq is not None and type(b) is type(a):
        try:
            if eq(a, b) is True:
                return []
        except Exception:  # noqa: BLE001 - an __eq__ that raises: compare state
            pass
    pairs = _pairs(a, b)
    if pairs is None or pairs is _MISMATCH:
        detail = _difference(a, b)
        if detail is None and pairs is _MISMATCH:
            detail = f"{replay.type_name(a)} != {replay.type_name(b)}"
        return [] if detail is None else [Difference(path, a, detail)]
    found: list[Difference] = []
    own: list[str] = []
    for step, x, y in pairs:
        for diff in _locate(x, y, path + step, depth + 1, seen):
            if diff.obj is x and type(x) in replay._ATOMIC:
                own.append(f"{step}: {diff.detail}")  # a plain value this object lost
            else:
                found.append(diff)
    if own:
        found.insert(0, Difference(path, a, "; ".join(own)))
    elif not found and eq is not None and not _field_wise_eq(type(a)):
        found.append(Difference(path, a, "== returns False for the copy"))
    return found
