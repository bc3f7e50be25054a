"""Say *what* differs between an object and its round-tripped copy.

``difference(expected, actual)`` returns ``None`` when the two are equal and
otherwise one line naming the first difference with a path in the engine's
notation (``.x: 0.1 != 0.10000000149011612``, ``[2]['k']: missing in the copy``).

Equality is ``==`` by default, made NaN-aware (a NaN equals a NaN: a reducer
that keeps a NaN keeps the value) and structural for containers, numpy arrays,
dataclasses and objects with ``__dict__``/``__slots__``, so that the answer
points at the field that changed rather than at the whole object.
``register_equality(type_, eq)`` overrides all of this for a type.

``shared_mutable_state(copy_a, copy_b)`` finds mutable state that two
independently unpickled copies share: a reducer that rebuilds from a mutable
module-level default aliases every object it ever rebuilds.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import sys
import types
from collections.abc import Callable
from typing import Any

__all__ = ["difference", "register_equality", "shared_mutable_state", "short_repr"]

_REPR_LIMIT = 80

# type -> eq(expected, actual) -> bool (True when equal)
_EQUALITY_REGISTRY: dict[type, Callable[[Any, Any], bool]] = {}


def register_equality(type_: type, eq: Callable[[Any, Any], bool]) -> None:
    """Compare instances of ``type_`` (and its subclasses) with ``eq(expected, actual)``.

    ``eq`` returns True when the round-tripped copy is acceptable. It replaces
    the default ``==``/structural comparison for that type.
    """
    if not isinstance(type_, type):
        raise TypeError(f"register_equality expects a type, got {type_!r}")
    if not callable(eq):
        raise TypeError(f"register_equality expects a callable eq(a, b), got {eq!r}")
    _EQUALITY_REGISTRY[type_] = eq


def _registered_equality(type_: type) -> Callable[[Any, Any], bool] | None:
    for klass in type_.__mro__:
        eq = _EQUALITY_REGISTRY.get(klass)
        if eq is not None:
            return eq
    return None


def short_repr(obj: Any, limit: int = _REPR_LIMIT) -> str:
    """``repr(obj)`` on one line, bounded to ``limit`` characters, never raising."""
    try:
        text = repr(obj)
    except Exception as exc:  # a broken __repr__ must not break the report
        text = f"<{type(obj).__qualname__} object (repr failed: {type(exc).__name__})>"
    text = " ".join(text.split())
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return text


def qualified_name(type_: type) -> str:
    module = getattr(type_, "__module__", None)
    name = getattr(type_, "__qualname__", None) or getattr(
        type_, "__name__", repr(type_)
    )
    return name if module in (None, "builtins") else f"{module}.{name}"


def _numpy():
    # numpy is optional: only look at it when it is already imported (an array
    # cannot exist otherwise), which also keeps this module cheap to import.
    return sys.modules.get("numpy")


_ATOMS = (int, str, bytes, bool, type(None), type(Ellipsis), type(NotImplemented))
# Objects legitimately shared between unpickled copies: they travel by reference.
_BY_REFERENCE = (
    type,
    types.FunctionType,
    types.BuiltinFunctionType,
    types.MethodType,
    types.ModuleType,
    enum.Enum,
)
_MUTABLE_CONTAINERS = (list, dict, set, bytearray)


def _floats_equal(a: float, b: float) -> bool:
    return a == b or (math.isnan(a) and math.isnan(b))


def _decimals_equal(a: Any, b: Any) -> bool:
    """``==``, except that a NaN equals the same NaN (sign, quiet or
    signalling, payload): ``Decimal('NaN') != Decimal('NaN')`` like a float."""
    if a.is_nan() or b.is_nan():
        return a.is_nan() and b.is_nan() and a.compare_total(b) == 0
    return a == b


def _has_own_eq(type_: type) -> bool:
    eq = getattr(type_, "__eq__", None)
    return eq is not None and eq is not object.__eq__


def _instance_state(obj: Any) -> dict[str, Any] | None:
    """The attributes pickling would carry by default (``__dict__`` and slots)."""
    state: dict[str, Any] = {}
    found = False
    obj_dict = getattr(obj, "__dict__", None)
    if isinstance(obj_dict, dict):
        state.update(obj_dict)
        found = True
    for klass in type(obj).__mro__:
        slots = klass.__dict__.get("__slots__", ())
        if isinstance(slots, str):
            slots = (slots,)
        for slot in slots:
            if slot in ("__dict__", "__weakref__"):
                continue
            found = True
            name = slot
            if slot.startswith("__") and not slot.endswith("__"):
                name = f"_{klass.__name__.lstrip('_')}{slot}"
            try:
                state[slot] = object.__getattribute__(obj, name)
            except AttributeError:
                state[slot] = _UNSET
    return state if found else None


class _Unset:
    def __repr__(self) -> str:
        return "<unset>"


_UNSET = _Unset()


class _Comparer:
    """Depth-first comparison that stops at the first difference.

    Mutable objects are tracked by identity: a pair (original, copy) already
    compared is not compared again (cycles terminate), and a copy object that
    stands for two distinct originals is aliasing the copy introduced (mutating
    one would change the other). Sharing the copy lost is not a difference:
    strategies like ``st.just([])`` share by accident.
    """

    def __init__(self) -> None:
        self.visited: set[tuple[int, int]] = set()
        self.reverse: dict[int, int] = {}
        self.paths: dict[int, str] = {}
        self.keep_alive: list[Any] = []

    def compare(self, a: Any, b: Any, path: str) -> str | None:
        where = path or "value"
        eq = _registered_equality(type(a))
        if eq is not None:
            try:
                same = bool(eq(a, b))
            except Exception as exc:
                return (
                    f"{where}: registered equality raised {type(exc).__name__}: {exc}"
                )
            if same:
                return None
            return f"{where}: {short_repr(a)} != {short_repr(b)} (registered equality)"

        if type(a) is not type(b):
            return (
                f"{where}: type {qualified_name(type(a))} != {qualified_name(type(b))}"
                f" ({short_repr(a, 40)} != {short_repr(b, 40)})"
            )

        if isinstance(a, _ATOMS):
            return None if a == b else f"{where}: {short_repr(a)} != {short_repr(b)}"
        if isinstance(a, float):
            return None if _floats_equal(a, b) else f"{where}: {a!r} != {b!r}"
        if isinstance(a, complex):
            same = _floats_equal(a.real, b.real) and _floats_equal(a.imag, b.imag)
            return None if same else f"{where}: {a!r} != {b!r}"
        decimal = sys.modules.get("decimal")
        if decimal is not None and isinstance(a, decimal.Decimal):
            return None if _decimals_equal(a, b) else f"{where}: {a!r} != {b!r}"

        if isinstance(a, _BY_REFERENCE):
            return (
                None
                if a is b or a == b
                else f"{where}: {short_repr(a)} != {short_repr(b)}"
            )
        if not _is_shareable(a):
            # mutable: check that sharing is the same on both sides (also breaks cycles)
            if (id(a), id(b)) in self.visited:
                return None
            if self.reverse.get(id(b), id(a)) != id(a):
                first = self.paths.get(self.reverse[id(b)], "another part")
                return (
                    f"{where}: is the same object as {first} in the copy"
                    " but not in the original (aliasing)"
                )
            self._remember(a, b, where)

        np = _numpy()
        if np is not None:
            if isinstance(a, np.ndarray):
                return self._compare_arrays(a, b, path)
            if isinstance(a, np.generic):
                return self._compare_numpy_scalar(a, b, where)

        if isinstance(a, tuple) and hasattr(type(a), "_fields"):
            return self._compare_fields(
                [
                    (f"{path}.{name}", getattr(a, name), getattr(b, name))
                    for name in a._fields
                ],
                path,
            ) or self._compare_lengths(a, b, where)
        if isinstance(a, (list, tuple)):
            return self._compare_sequences(a, b, path)
        if isinstance(a, dict):
            return self._compare_mappings(a, b, path)
        if isinstance(a, (set, frozenset)):
            return self._compare_sets(a, b, where)
        if isinstance(a, (bytearray, memoryview, range, slice)):
            return None if a == b else f"{where}: {short_repr(a)} != {short_repr(b)}"

        if dataclasses.is_dataclass(a):
            fields = [f.name for f in dataclasses.fields(a)]
            return self._compare_fields(
                [
                    (
                        f"{path}.{name}",
                        getattr(a, name, _UNSET),
                        getattr(b, name, _UNSET),
                    )
                    for name in fields
                ],
                path,
            ) or self._compare_state(a, b, path, skip=set(fields))

        if _has_own_eq(type(a)):
            try:
                if bool(a == b):
                    return None
            except Exception:
                pass  # an __eq__ that raises (arrays inside): compare the state instead
            state_difference = self._compare_state(a, b, path)
            if state_difference is not None:
                return state_difference
            if _instance_state(a) is None:
                return f"{where}: {short_repr(a)} != {short_repr(b)}"
            return None  # only == disagrees, the state is equal: NaN inside
        state_difference = self._compare_state(a, b, path)
        if state_difference is not None or _instance_state(a) is not None:
            return state_difference
        return self._compare_reduced(a, b, path)

    # -- helpers ---------------------------------------------------------------

    def _remember(self, a: Any, b: Any, where: str) -> None:
        self.visited.add((id(a), id(b)))
        self.reverse.setdefault(id(b), id(a))
        self.paths.setdefault(id(a), where)
        self.keep_alive.append((a, b))

    def _compare_fields(
        self, fields: list[tuple[str, Any, Any]], path: str
    ) -> str | None:
        for sub_path, left, right in fields:
            if left is _UNSET or right is _UNSET:
                if left is _UNSET and right is _UNSET:
                    continue
                missing = "original" if left is _UNSET else "copy"
                return f"{sub_path}: missing in the {missing}"
            found = self.compare(left, right, sub_path)
            if found is not None:
                return found
        return None

    def _compare_lengths(self, a: Any, b: Any, where: str) -> str | None:
        if len(a) != len(b):
            return f"{where}: length {len(a)} != {len(b)}"
        return None

    def _compare_sequences(self, a: Any, b: Any, path: str) -> str | None:
        for index, (left, right) in enumerate(zip(a, b, strict=False)):
            found = self.compare(left, right, f"{path}[{index}]")
            if found is not None:
                return found
        return self._compare_lengths(a, b, path or "value")

    def _compare_mappings(self, a: dict, b: dict, path: str) -> str | None:
        for key, left in a.items():
            key_path = f"{path}[{short_repr(key, 40)}]"
            if key not in b:
                return f"{key_path}: missing in the copy"
            found = self.compare(left, b[key], key_path)
            if found is not None:
                return found
        for key in b:
            if key not in a:
                return f"{path}[{short_repr(key, 40)}]: not in the original (added by the copy)"
        if type(a).__eq__ is not dict.__eq__ and list(a) != list(b):
            return f"{path or 'value'}: key order {short_repr(list(a))} != {short_repr(list(b))}"
        return None

    def _compare_sets(self, a: Any, b: Any, where: str) -> str | None:
        missing = [item for item in a if item not in b]
        added = [item for item in b if item not in a]
        # NaN items never compare equal to themselves: pair them up by count.
        missing_nan = [x for x in missing if isinstance(x, float) and math.isnan(x)]
        added_nan = [x for x in added if isinstance(x, float) and math.isnan(x)]
        if len(missing_nan) == len(added_nan):
            missing = [x for x in missing if x not in missing_nan]
            added = [x for x in added if x not in added_nan]
        if missing:
            return f"{where}: item {short_repr(missing[0])} missing in the copy"
        if added:
            return f"{where}: item {short_repr(added[0])} not in the original (added by the copy)"
        return None

    def _compare_state(
        self, a: Any, b: Any, path: str, skip: set[str] = frozenset()
    ) -> str | None:
        state_a = _instance_state(a)
        state_b = _instance_state(b)
        if state_a is None and state_b is None:
            return None
        state_a = {k: v for k, v in (state_a or {}).items() if k not in skip}
        state_b = {k: v for k, v in (state_b or {}).items() if k not in skip}
        names = list(state_a) + [k for k in state_b if k not in state_a]
        return self._compare_fields(
            [
                (f"{path}.{name}", state_a.get(name, _UNSET), state_b.get(name, _UNSET))
                for name in names
            ],
            path,
        )

    def _compare_reduced(self, a: Any, b: Any, path: str) -> str | None:
        """Last resort for objects without state or ``__eq__``: compare what
        ``__reduce_ex__`` says they are made of."""
        where = path or "value"
        try:
            reduced_a = a.__reduce_ex__(2)
            reduced_b = b.__reduce_ex__(2)
        except Exception:
            return None if a == b else f"{where}: {short_repr(a)} != {short_repr(b)}"
        if isinstance(reduced_a, str) or isinstance(reduced_b, str):
            return (
                None
                if reduced_a == reduced_b
                else f"{where}: {short_repr(a)} != {short_repr(b)}"
            )
        for index, (left, right) in enumerate(
            zip(reduced_a[1:3], reduced_b[1:3], strict=False)
        ):
            label = "reduce" if index == 0 else "state"
            found = self.compare(left, right, f"{path}.<{label}>")
            if found is not None:
                return found
        return None

    def _compare_arrays(self, a: Any, b: Any, path: str) -> str | None:
        np = _numpy()
        where = path or "value"
        if a.dtype != b.dtype:
            return f"{where}: dtype {a.dtype} != {b.dtype}"
        if a.shape != b.shape:
            return f"{where}: shape {a.shape} != {b.shape}"
        if a.dtype.kind == "O":
            for index in np.ndindex(a.shape):
                found = self.compare(
                    a[index], b[index], f"{path}[{_index_text(index)}]"
                )
                if found is not None:
                    return found
            return None
        try:
            nan_aware = a.dtype.kind in "fcmM"
            same = np.array_equal(a, b, equal_nan=nan_aware)
        except TypeError:
            same = np.array_equal(a, b)
        if same:
            return None
        if a.dtype.kind in "fc":
            unequal = ~((a == b) | (np.isnan(a) & np.isnan(b)))
        elif a.dtype.kind in "mM":
            unequal = ~((a == b) | (np.isnat(a) & np.isnat(b)))
        else:
            unequal = a != b
        positions = np.argwhere(np.asarray(unequal))
        if not len(positions):
            return f"{where}: arrays differ"
        index = tuple(int(i) for i in positions[0])
        return f"{path}[{_index_text(index)}]: {_item_repr(a[index])} != {_item_repr(b[index])}"

    def _compare_numpy_scalar(self, a: Any, b: Any, where: str) -> str | None:
        np = _numpy()
        try:
            same = (
                bool(a == b)
                or (a.dtype.kind in "fc" and bool(np.isnan(a)) and bool(np.isnan(b)))
                or (
                    a.dtype.kind in "mM"
                    and a.dtype == b.dtype
                    and bool(np.isnat(a))
                    and bool(np.isnat(b))
                )
            )
        except Exception:
            same = a.tobytes() == b.tobytes()
        return None if same else f"{where}: {a!r} != {b!r}"


def _item_repr(value: Any) -> str:
    """``0.1`` rather than ``np.float64(0.1)`` for array elements."""
    item = getattr(value, "item", None)
    try:
        return short_repr(item() if callable(item) else value)
    except Exception:
        return short_repr(value)


def _index_text(index: tuple[int, ...]) -> str:
    return ", ".join(str(i) for i in index) if index else "()"


def difference(expected: Any, actual: Any, *, path: str = "") -> str | None:
    """``None`` when ``actual`` equals ``expected``, else one line saying what differs.

    ``path`` prefixes every location (for example ``"obj"`` gives ``obj.x``);
    without it locations start at the object (``.x``, ``[0]``) and a difference
    of the whole object is reported as ``value: ...``.
    """
    try:
        return _Comparer().compare(expected, actual, path)
    except RecursionError:
        return f"{path or 'value'}: too deeply nested to compare"


def _children(obj: Any) -> list[tuple[str, Any]]:
    if isinstance(obj, dict):
        return [(f"[{short_repr(k, 40)}]", v) for k, v in obj.items()]
    if isinstance(obj, (list, tuple)):
        return [(f"[{i}]", v) for i, v in enumerate(obj)]
    if isinstance(obj, (set, frozenset)):
        return [(f".<item {i}>", v) for i, v in enumerate(obj)]
    np = _numpy()
    if np is not None and isinstance(obj, np.ndarray):
        if obj.dtype.kind == "O":
            return [(f"[{_index_text(i)}]", obj[i]) for i in np.ndindex(obj.shape)]
        return []
    state = _instance_state(obj)
    if state is None:
        return []
    return [(f".{name}", value) for name, value in state.items() if value is not _UNSET]


def _is_shareable(obj: Any) -> bool:
    """True for objects two copies may legitimately share (immutable or by reference)."""
    if isinstance(obj, _ATOMS + (float, complex, tuple, frozenset) + _BY_REFERENCE):
        return True
    np = _numpy()
    if np is not None and isinstance(obj, np.generic):
        return True
    if isinstance(obj, _MUTABLE_CONTAINERS):
        return False
    if np is not None and isinstance(obj, np.ndarray):
        return not obj.flags.writeable
    if _instance_state(obj) is None:
        return True  # no visible state to corrupt
    try:
        # a singleton pickled by name (``__reduce__`` returns a string) is shared by design
        return isinstance(obj.__reduce_ex__(2), str)
    except Exception:
        return False


def _walk(obj: Any, seen: dict[int, tuple[str, Any]], limit: int) -> None:
    """Record every mutable object reachable from ``obj`` (by id, with its path)."""
    stack: list[tuple[str, Any]] = [("", obj)]
    visited: set[int] = set()
    keep_alive = []
    while stack and len(visited) < limit:
        where, current = stack.pop()
        if id(current) in visited or isinstance(
            current, _ATOMS + (float, complex) + _BY_REFERENCE
        ):
            continue
        visited.add(id(current))
        keep_alive.append(current)
        if not _is_shareable(current):
            seen[id(current)] = (where, current)
        elif not isinstance(current, (tuple, frozenset)):
            continue  # immutable leaf or a by-name singleton: nothing inside to corrupt
        children = _children(current)
        stack.extend((where + step, child) for step, child in reversed(children))


def shared_mutable_state(
    copy_a: Any, copy_b: Any, *, limit: int = 10_000
) -> str | None:
    """Name mutable state reachable from both independently unpickled copies.

    Two loads of the same bytes must give independent objects; a reducer whose
    rebuild function reuses a module-level list or dict hands the same one to
    every copy. Returns ``None`` when nothing mutable is shared.
    """
    if copy_a is copy_b and not _is_shareable(copy_a):
        return "value: two loads return the very same mutable object"
    seen: dict[int, tuple[str, Any]] = {}
    _walk(copy_a, seen, limit)
    others: dict[int, tuple[str, Any]] = {}
    _walk(copy_b, others, limit)
    for identity, (where, obj) in seen.items():
        if identity in others:
            kind = qualified_name(type(obj))
            return (
                f"{where or 'value'}: two loads share the same {kind} (mutable state aliased"
                " between unpickled objects)"
            )
    return None
