"""loky's customisable pickler: choice of serializer, reducer tables, ``dump(s)``.

Every object loky sends between processes (tasks, results, process objects at
spawn) is pickled by the class returned by :func:`get_loky_pickler`. It derives from
a base chosen with :func:`set_loky_pickler` or the ``LOKY_PICKLER`` environment
variable (``cloudpickle`` by default) and gives each instance its own copy of the
reducer table (base table + :func:`register`-ed reducers + per-call ``reducers``).
"""

from __future__ import annotations

import copyreg
import functools
import importlib
import io
import os
import pickle
import sys
import types
from collections import ChainMap
from collections.abc import Callable
from pickle import HIGHEST_PROTOCOL
from typing import Any, BinaryIO

if sys.platform == "win32":
    from . import _win_reduction as _platform_reduction
    from ._win_reduction import duplicate  # noqa: F401  (re-exported)
else:
    from . import _posix_reduction as _platform_reduction

_mk_inheritable = _platform_reduction._mk_inheritable

try:
    import cloudpickle  # noqa: F401

    _DEFAULT_PICKLER = "cloudpickle"
except ImportError:  # pragma: no cover - cloudpickle is a hard dependency
    _DEFAULT_PICKLER = "pickle"

ENV_LOKY_PICKLER = os.environ.get("LOKY_PICKLER", _DEFAULT_PICKLER)

_SUFFIX = (
    "\nThis error occurred while setting loky_pickler to '{}', as required by the "
    "env variable LOKY_PICKLER or the function set_loky_pickler."
)

###############################################################################
# Module-level reducer table


_dispatch_table: dict[type, Callable] = {}
# Bumped by register() so that the merged tables cached per pickler class are
# rebuilt (a plain length check would miss a replaced reducer).
_dispatch_table_version = 0


def register(type_: type, reduce_function: Callable) -> None:
    """Use ``reduce_function`` to pickle objects of exactly ``type_``.

    Applies to every loky pickler created afterwards (in this process).
    """
    global _dispatch_table_version
    _dispatch_table[type_] = reduce_function
    _dispatch_table_version += 1


def _reduce_method(m):
    # Bound methods and classmethods: rebuilt by attribute lookup on their owner,
    # so the owner travels (by value if needed) rather than the function alone.
    return getattr, (m.__self__, m.__func__.__name__)


def _reduce_method_descriptor(m):
    return getattr, (m.__objclass__, m.__name__)


def _reduce_partial(p: functools.partial):
    return _rebuild_partial, (p.func, p.args, p.keywords or {})


def _rebuild_partial(func, args, keywords):
    return functools.partial(func, *args, **keywords)


class _C:
    def f(self):
        pass

    @classmethod
    def h(cls):
        pass


register(type(_C().f), _reduce_method)
register(type(_C.h), _reduce_method)
register(type(list.append), _reduce_method_descriptor)
register(type(int.__add__), _reduce_method_descriptor)
register(functools.partial, _reduce_partial)
for _type, _reducer in _platform_reduction._platform_reducers().items():
    register(_type, _reducer)
del _type, _reducer


###############################################################################
# Pickler classes


def _class_level_table(base: type):
    """The base's class-level reducer table, or None (C member descriptors excluded)."""
    for klass in base.__mro__:
        table = klass.__dict__.get("dispatch_table")
        if table is None:
            continue
        if isinstance(table, (types.MemberDescriptorType, types.GetSetDescriptorType)):
            return None
        if hasattr(table, "items"):
            return table
    return None


def _find_member_descriptor(base: type):
    """The C-level ``dispatch_table`` slot of a ``_pickle.Pickler`` ancestor, if any."""
    for klass in base.__mro__:
        attr = klass.__dict__.get("dispatch_table")
        if isinstance(attr, types.MemberDescriptorType):
            return attr
    return None


def _is_importable_by_reference(obj) -> bool:
    """Whether ``obj`` (function or class) can be found again by module + qualname."""
    checker = getattr(
        getattr(cloudpickle, "cloudpickle", None), "_should_pickle_by_reference", None
    )
    if checker is not None:
        try:
            return checker(obj)
        except Exception:
            pass
    module_name = getattr(obj, "__module__", None)
    if module_name in (None, "__main__", "__mp_main__"):
        return False
    module = sys.modules.get(module_name)
    target = module
    for part in getattr(obj, "__qualname__", "<?>").split("."):
        target = getattr(target, part, None)
        if target is None:
            return False
    return target is obj


def _by_value_reducer_override(self, obj):
    """Send functions and classes the worker cannot import by value (cloudpickle)."""
    if isinstance(obj, (types.FunctionType, type)) and not _is_importable_by_reference(
        obj
    ):
        return pickle.loads, (cloudpickle.dumps(obj),)
    return NotImplemented


def _make_loky_pickler(base: type, by_value: bool) -> type:
    """Build the loky pickler class deriving from ``base`` (§9.3)."""
    base_table = _class_level_table(base)
    member = _find_member_descriptor(base)
    cache: dict[str, Any] = {"snapshots": None, "table": None, "generation": 0}

    source = copyreg.dispatch_table if base_table is None else base_table
    # The merged table is cached (copying a ChainMap is slow) and rebuilt when
    # any underlying dict changed since: additions, removals and replaced
    # reducers (copyreg.pickle() of an already registered type, a direct write
    # to _dispatch_table) alike. Comparing plain dicts is cheap (C-level, the
    # reducers compare by identity).
    source_maps = list(source.maps) if isinstance(source, ChainMap) else [source]
    watched = [*source_maps, _dispatch_table]

    def _merged_table() -> dict:
        # List equality compares the dicts pairwise in C (no generator).
        if watched != cache["snapshots"]:
            merged = dict(source)
            merged.update(_dispatch_table)
            cache["table"] = merged
            cache["snapshots"] = [dict(m) for m in watched]
            cache["generation"] += 1
        return cache["table"]

    def _tables_generation() -> int:
        """A number that changes whenever a new instance would get another table.

        Lets a long-lived instance (the worker's result pipe reuses one) know
        when to make a new one: register(), copyreg.pickle() and replaced
        reducers all count.
        """
        _merged_table()
        return cache["generation"]

    def __init__(self, writer, reducers=None, protocol=HIGHEST_PROTOCOL):
        base.__init__(self, writer, protocol=protocol)
        # Each instance owns a copy: register() on one never leaks into another.
        table = dict(_merged_table())
        if reducers:
            table.update(reducers)
        if base_table is not None:
            # The class-level table shadows the C slot for Python attribute
            # access: keep the instance attribute for Python readers...
            self.__dict__["dispatch_table"] = table
        else:
            self.dispatch_table = table
        if member is not None:
            # ...and store it in the C slot, which is what the C pickler reads.
            member.__set__(self, table)

    def register(self, type_: type, reduce_function: Callable) -> None:
        """Add a reducer to this pickler instance only."""
        self.dispatch_table[type_] = reduce_function

    namespace = {
        "__init__": __init__,
        "register": register,
        "_tables_generation": staticmethod(_tables_generation),
        "__module__": __name__,
        "__doc__": f"loky pickler based on {base.__module__}.{base.__qualname__}.",
    }
    if by_value:
        namespace["reducer_override"] = _by_value_reducer_override
    return type("LokyPickler", (base,), namespace)


_LokyPickler: type | None = None
_loky_pickler_name: str | None = None


def _class_pickler_name(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def _resolve_class_name(name: str):
    """``"module:Qual.Name"`` back to the class, or None when it cannot be found."""
    module_name, _, qualname = name.partition(":")
    try:
        target = importlib.import_module(module_name)
        for part in qualname.split("."):
            target = getattr(target, part)
    except Exception:
        return None
    return target if isinstance(target, type) else None


def _add_suffix(exc: BaseException, name: str) -> None:
    first = str(exc.args[0]) if exc.args else ""
    exc.args = (first + _SUFFIX.format(name), *exc.args[1:])
    try:
        exc.msg = exc.args[0]
    except AttributeError:  # pragma: no cover - read-only msg
        pass


class _InvalidPicklerError(TypeError, AttributeError):
    """``set_loky_pickler`` got neither a module name nor a pickler class.

    A TypeError, and also an AttributeError as upstream raises for such values
    (``import_module`` fails on them), with the same suffix.
    """


def set_loky_pickler(loky_pickler: str | type | None = None) -> None:
    """Choose the serializer loky uses for inter-process communication.

    ``loky_pickler`` is a module name whose ``Pickler`` is used (``"cloudpickle"``,
    ``"pickle"``, ...), a ``pickle.Pickler`` subclass, or None to go back to the
    default (``LOKY_PICKLER`` or cloudpickle).
    """
    global _LokyPickler, _loky_pickler_name

    if loky_pickler is None:
        loky_pickler = ENV_LOKY_PICKLER
    if loky_pickler is None or (isinstance(loky_pickler, str) and not loky_pickler):
        loky_pickler = "cloudpickle"

    if isinstance(loky_pickler, type):
        if not hasattr(loky_pickler, "dump"):
            raise _InvalidPicklerError(
                "set_loky_pickler expects a module name or a pickler class with a "
                f"dump() method, got the class {loky_pickler!r}"
                + _SUFFIX.format(loky_pickler)
            )
        name = _class_pickler_name(loky_pickler)
        if _LokyPickler is not None and _LokyPickler.__bases__[0] is loky_pickler:
            return
        base = loky_pickler
        by_value = not hasattr(base, "reducer_override")
    elif isinstance(loky_pickler, str):
        name = loky_pickler
        if name == _loky_pickler_name:
            return
        if ":" in name:
            # A class chosen in another process (the name travels with each task).
            # Workers that cannot import it (e.g. defined in __main__) keep the
            # default serializer: results must still get back.
            base = _resolve_class_name(name)
            if base is None:
                base = _base_from_module_name(_DEFAULT_PICKLER)
            by_value = not hasattr(base, "reducer_override")
        else:
            base = _base_from_module_name(name)
            by_value = False
    else:
        raise _InvalidPicklerError(
            "set_loky_pickler expects a module name (str), a pickler class or None, "
            f"got {loky_pickler!r}" + _SUFFIX.format(loky_pickler)
        )

    _LokyPickler = _make_loky_pickler(base, by_value and _DEFAULT_PICKLER != "pickle")
    _loky_pickler_name = name


def _base_from_module_name(name: str) -> type:
    try:
        if name == "cloudpickle":
            from cloudpickle import CloudPickler as base
        else:
            base = importlib.import_module(name).Pickler
    except (ImportError, AttributeError) as e:
        _add_suffix(e, name)
        raise
    return base


def get_loky_pickler_name() -> str:
    """Name of the current serializer (module name, or ``"module:Class"``)."""
    return _loky_pickler_name


def get_loky_pickler() -> type:
    """The pickler class loky currently uses (a subclass of the chosen base)."""
    return _LokyPickler


###############################################################################
# dump / dumps / loads


def dump(
    obj: Any,
    file: BinaryIO,
    reducers: dict | None = None,
    protocol: int | None = None,
) -> None:
    """Pickle ``obj`` into ``file`` with the loky pickler (+ extra ``reducers``)."""
    _LokyPickler(file, reducers=reducers, protocol=protocol).dump(obj)


class _ViewedBuffer(io.BytesIO):
    """The BytesIO behind the view ``dumps`` returns: only that view refers to it."""

    __slots__ = ()

    def __del__(self) -> None:
        # io's finalizer would close() the buffer. When the view dies in a
        # reference cycle, the collector of Python 3.12+ (which sees the view's
        # link to its buffer) may finalize the buffer while the view still
        # exports it; close() then raises BufferError, printed as "Exception
        # ignored in: <_io.BytesIO ...>". Closing a BytesIO only frees memory,
        # which deallocation does anyway, so there is nothing to do here.
        pass


def dumps(
    obj: Any, reducers: dict | None = None, protocol: int | None = None
) -> memoryview:
    """Pickle ``obj`` with the loky pickler; a memoryview over the one buffer written."""
    buf = _ViewedBuffer()
    _LokyPickler(buf, reducers=reducers, protocol=protocol).dump(obj)
    return buf.getbuffer()


loads = pickle.loads

set_loky_pickler()

__all__ = ["dump", "dumps", "loads", "register", "set_loky_pickler"]
if sys.platform == "win32":
    __all__ += ["duplicate"]
