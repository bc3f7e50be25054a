"""Replay what a pickler does, to find the culprits and the exact path to each.

The C pickler only says *that* something failed. Here we walk the object the
way the pickler walks it -- reducer override, dispatch table, ``__reduce_ex__``
(hence ``__getstate__``, slots, ``copyreg`` and loky reducers), dict keys and
values, set items, the closure cells and globals of functions taken by value --
and at every step ask the real C pickler which children fail. Subtrees that
pickle are never walked, so a huge container costs about one extra pickle.

Nothing here evaluates a property or calls a user method other than the ones
the pickler itself calls (``__reduce_ex__``, ``__reduce__``, ``__getstate__``,
registered reducers); reprs are bounded; cycles, raising reducers and
recursion overflows are survived.
"""

from __future__ import annotations

import copyreg
import dataclasses
import functools
import io
import itertools
import pickle
import reprlib
import sys
import types
from collections.abc import Callable, Sequence
from typing import Any

from . import taxonomy

PROTOCOL = pickle.HIGHEST_PROTOCOL
_MAIN_MARKERS = (b"__main__", b"__mp_main__")
# Children tested one by one below this count; above it, by halves.
_BISECT_THRESHOLD = 8
# Give up descending into a structure that overflows the recursion limit after
# this many steps of different types (a deep chain is reported at its top).
_MAX_RECURSION_DESCENT = 16


# ----------------------------------------------------------------------------
# Picklers under test


@dataclasses.dataclass
class Status:
    """Outcome of pickling one object with the pickler under test."""

    ok: bool
    exc: BaseException | None = None
    # Dumped fine but references __main__ by name: no loky worker can load it.
    main_ref: bool = False

    @property
    def bad(self) -> bool:
        return not self.ok or self.main_ref


_OK = Status(True)


class Tester:
    """Pickles objects with one pickler and says whether they cross.

    ``by_value``: functions and classes that cannot be found by name travel by
    value (cloudpickle); otherwise they are stored by name (standard pickle)
    and a ``__main__`` reference is a failure to load.
    """

    def __init__(
        self,
        name: str,
        dumps: Callable[[Any], Any],
        *,
        by_value: bool,
        dispatch_table: Any,
        reducer_override: Callable | None = None,
        masked_dumps: Callable[[Any, set], Any] | None = None,
    ):
        self.name = name
        self._dumps = dumps
        self.by_value = by_value
        self.dispatch_table = dispatch_table
        self.reducer_override = reducer_override
        self._masked_dumps = masked_dumps

    def dumps(self, obj: Any, masked: set[int] | None = None) -> bytes:
        """Pickle ``obj``; objects whose id is in ``masked`` stand for themselves."""
        if masked and self._masked_dumps is not None:
            return self._masked_dumps(obj, masked)
        return self._dumps(obj)

    def test(self, obj: Any, masked: set[int] | None = None) -> Status:
        try:
            if masked and self._masked_dumps is not None:
                data = self._masked_dumps(obj, masked)
            else:
                data = self._dumps(obj)
        except BaseException as exc:  # noqa: BLE001 - anything a reducer raises
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
            if not isinstance(exc, RecursionError) and isinstance(
                exc.__cause__, RecursionError
            ):
                # cloudpickle (hence loky's pickler) re-raises a depth overflow
                # as a PicklingError: it is still a recursion overflow.
                exc = exc.__cause__
            return Status(False, exc)
        if not self.by_value and references_main(data):
            return Status(True, None, main_ref=True)
        return _OK


# Above this many bytes, first ask whether __main__ defines anything pickle
# could name before scanning (a scan costs about one in-band copy of the data).
_SCAN_PRECHECK_BYTES = 1 << 15


def references_main(data: Any) -> bool:
    """Whether pickled bytes name a global of ``__main__`` (a cheap byte scan)."""
    if len(data) > _SCAN_PRECHECK_BYTES and not main_defines_globals():
        return False
    # one pass for the common suffix of both names; the exact test only on a hit
    return b"main__" in data and (b"__main__" in data or b"__mp_main__" in data)


def main_defines_globals() -> bool:
    """Whether ``__main__`` (or ``__mp_main__``) holds a function or class it
    defines: pickle can only name a ``__main__`` global reachable from there
    (under pytest or a console script it holds none, so no scan is needed)."""
    for module_name in ("__main__", "__mp_main__"):
        module = sys.modules.get(module_name)
        if module is None:
            continue
        try:
            values = list(vars(module).values())
        except Exception:  # noqa: BLE001 - an odd module: scan to be safe
            return True
        for value in values:
            kind = type(value)
            if kind is types.FunctionType:
                owner = value.__module__
            elif issubclass(kind, type):
                owner = type.__dict__["__module__"].__get__(value)
            else:
                continue
            if owner in ("__main__", "__mp_main__"):
                return True
    return False


def _std_dumps(obj: Any) -> bytes:
    # Out-of-band buffers: large arrays are not copied (the verdict is the same).
    return pickle.dumps(obj, protocol=PROTOCOL, buffer_callback=_discard)


def _discard(buffer: Any) -> None:
    return None


@functools.lru_cache(maxsize=16)
def _masking_class(base: type) -> type:
    class _Masking(base):  # type: ignore[misc, valid-type]
        masked: set[int] = set()

        def persistent_id(self, obj: Any) -> Any:
            # Culprits already reported stand for themselves: the rest of the
            # walk looks only for new ones.
            return id(obj) if id(obj) in self.masked else None

    return _Masking


def _masked_dumper(base: type, **pickler_kwargs: Any) -> Callable[[Any, set], bytes]:
    """``dumps(obj, masked)`` with a ``base`` pickler (built with
    ``pickler_kwargs``) in which the objects whose id is in ``masked`` stand
    for themselves."""
    masked_cls = _masking_class(base)

    def masked_dumps(obj: Any, masked: set[int]) -> bytes:
        buf = io.BytesIO()
        pickler = masked_cls(buf, protocol=PROTOCOL, **pickler_kwargs)
        pickler.masked = masked
        pickler.dump(obj)
        return buf.getvalue()

    return masked_dumps


_masked_std_dumps = _masked_dumper(pickle.Pickler)


def standard_tester() -> Tester:
    return Tester(
        "pickle",
        _std_dumps,
        by_value=False,
        dispatch_table=copyreg.dispatch_table,
        masked_dumps=_masked_std_dumps,
    )


def cloudpickle_tester() -> Tester:
    import cloudpickle

    def dumps(obj: Any) -> bytes:
        return cloudpickle.dumps(obj, protocol=PROTOCOL, buffer_callback=_discard)

    masked_dumps = _masked_dumper(cloudpickle.Pickler)
    probe = cloudpickle.Pickler(io.BytesIO(), protocol=PROTOCOL)
    return Tester(
        "cloudpickle",
        dumps,
        by_value=True,
        dispatch_table=probe.dispatch_table,
        reducer_override=None,
        masked_dumps=masked_dumps,
    )


def _fd_placeholder_reducer(obj: Any) -> tuple:
    # loky's socket/Connection reducers duplicate the descriptor and may start
    # the resource sharer: a check must not. Their verdict is "carried".
    return (int, ())


def loky_tester() -> Tester:
    """loky's current pickler with its registered reducers."""
    try:
        from loky.backend import reduction
    except Exception:  # loky's reduction not importable: cloudpickle is its default
        tester = cloudpickle_tester()
        tester.name = "loky"
        return tester
    cls = reduction.get_loky_pickler()
    stubs = {}
    platform = getattr(reduction, "_platform_reduction", None)
    try:
        for type_ in platform._platform_reducers():  # type: ignore[union-attr]
            stubs[type_] = _fd_placeholder_reducer
    except Exception:
        pass

    def dumps(obj: Any) -> bytes:
        buf = io.BytesIO()
        cls(buf, reducers=stubs, protocol=PROTOCOL).dump(obj)
        return buf.getvalue()

    masked_dumps = _masked_dumper(cls, reducers=stubs)
    probe = cls(io.BytesIO(), reducers=stubs, protocol=PROTOCOL)
    table = probe.__dict__.get("dispatch_table", None)
    if table is None:
        table = getattr(probe, "dispatch_table", copyreg.dispatch_table)
    override = getattr(probe, "reducer_override", None)
    return Tester(
        "loky",
        dumps,
        by_value=override is not None,
        dispatch_table=table,
        reducer_override=override,
        masked_dumps=masked_dumps,
    )


_TESTERS: dict[Any, Tester] = {}


def _loky_key() -> Any:
    try:
        from loky.backend import reduction
    except Exception:
        return None
    pickler_class = reduction.get_loky_pickler()
    # Changes with register(), copyreg.pickle() and replaced reducers alike.
    return (pickler_class, pickler_class._tables_generation())


def make_tester(name: str) -> Tester:
    """The tester of one pickler (cached; rebuilt when loky's pickler changes)."""
    if name == "pickle":
        key: Any = "pickle"
    elif name == "cloudpickle":
        key = "cloudpickle"
    elif name == "loky":
        key = ("loky", _loky_key())
    else:
        raise ValueError(
            f"pickler must be one of 'pickle', 'cloudpickle', 'loky', got {name!r}"
        )
    tester = _TESTERS.get(key)
    if tester is None:
        if name == "pickle":
            tester = standard_tester()
        elif name == "cloudpickle":
            tester = cloudpickle_tester()
        else:
            tester = loky_tester()
        _TESTERS[key] = tester
    return tester


# ----------------------------------------------------------------------------
# Safe helpers


class _SafeRepr(reprlib.Repr):
    def repr_instance(self, obj: Any, level: int) -> str:
        # reprlib's own fallback shows an address: keep reports reproducible
        try:
            text = repr(obj)
        except BaseException:  # noqa: BLE001 - a __repr__ may raise anything
            return f"<{type_name(obj)} object>"
        if len(text) > self.maxother:
            keep = max(0, (self.maxother - 3) // 2)
            text = text[:keep] + "..." + text[len(text) - keep :]
        return text


_repr = _SafeRepr()
_repr.maxstring = 78
_repr.maxother = 80
_repr.maxlevel = 2
_repr.maxlist = _repr.maxtuple = _repr.maxdict = _repr.maxset = 4


def safe_repr(obj: Any, limit: int = 80) -> str:
    """``repr`` bounded to ``limit`` characters; never raises."""
    try:
        text = _repr.repr(obj)
    except BaseException:  # noqa: BLE001 - a __repr__ may raise anything
        text = f"<{type_name(obj)} object>"
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return text


def type_name(obj: Any) -> str:
    """``module.qualname`` of the object's type."""
    return qualified_name(type(obj))


def qualified_name(cls: type) -> str:
    try:
        module = type.__dict__["__module__"].__get__(cls)
        qualname = type.__dict__["__qualname__"].__get__(cls)
    except Exception:
        return "<unknown>"
    return f"{module}.{qualname}"


def _key_step(key: Any) -> str:
    return f"[{safe_repr(key)}]"


def _attr_step(name: Any) -> str:
    if isinstance(name, str) and name.isidentifier():
        return f".{name}"
    return _key_step(name)


def _mro_lookup(cls: type, name: str) -> Any:
    for klass in cls.__mro__:
        if name in klass.__dict__:
            return klass.__dict__[name]
    return None


# ----------------------------------------------------------------------------
# Expansion: the children the pickler saves for one object


@dataclasses.dataclass
class Child:
    step: str
    obj: Any
    # "class_of": the object's own class (a failure is reported at the object)
    kind: str = "value"


class ReduceFailed(Exception):
    """The reducer the pickler would call raised."""

    def __init__(self, exc: BaseException, reducer_name: str, user_defined: bool):
        super().__init__(exc)
        self.exc = exc
        self.reducer_name = reducer_name
        self.user_defined = user_defined


_REDUCE_HOOKS = (
    "__reduce_ex__",
    "__reduce__",
    "__getstate__",
    "__getnewargs_ex__",
    "__getnewargs__",
)


def _user_reducer_name(cls: type) -> str | None:
    """The first pickling hook ``cls`` defines in Python, or None."""
    for name in _REDUCE_HOOKS:
        for klass in cls.__mro__:
            if klass is object:
                break
            attr = klass.__dict__.get(name)
            if attr is None:
                continue
            if isinstance(attr, (types.FunctionType, classmethod, staticmethod)):
                return name
            break
    return None


def by_reference(defn: Any) -> bool:
    """Whether cloudpickle stores this function or class by name."""
    try:
        import cloudpickle

        return bool(cloudpickle.cloudpickle._should_pickle_by_reference(defn))
    except Exception:
        return False


_CLASS_DICT_SKIP = frozenset(
    {
        "__dict__",
        "__weakref__",
        "__module__",
        "__doc__",
        "__qualname__",
        "__slotnames__",
    }
)


def _function_children(fn: types.FunctionType) -> list[Child]:
    """What cloudpickle saves of a function taken by value."""
    children: list[Child] = []
    code = fn.__code__
    closure = fn.__closure__ or ()
    for name, cell in zip(code.co_freevars, closure, strict=False):
        try:
            value = cell.cell_contents
        except ValueError:  # empty cell
            continue
        children.append(Child(f".<closure {name}>", value))
    try:
        import cloudpickle

        names = cloudpickle.cloudpickle._extract_code_globals(code)
    except Exception:
        names = code.co_names
    fn_globals = fn.__globals__
    for name in names:
        if name in fn_globals:
            children.append(Child(f".<global {name}>", fn_globals[name]))
    for i, value in enumerate(fn.__defaults__ or ()):
        children.append(Child(f".__defaults__[{i}]", value))
    for key, value in (fn.__kwdefaults__ or {}).items():
        children.append(Child(f".__kwdefaults__[{key!r}]", value))
    for key, value in fn.__dict__.items():
        children.append(Child(_attr_step(key), value))
    return children


def _class_children(cls: type) -> list[Child]:
    """What cloudpickle saves of a class taken by value."""
    children = []
    for key, value in list(type.__dict__["__dict__"].__get__(cls).items()):
        if key in _CLASS_DICT_SKIP or isinstance(
            value, (types.GetSetDescriptorType, types.MemberDescriptorType)
        ):
            continue
        children.append(Child(_attr_step(key), value))
    for i, base in enumerate(cls.__bases__):
        if base is not object:
            children.append(Child(f".__bases__[{i}]", base))
    return children


def _partial_children(p: functools.partial) -> list[Child]:
    children = [Child(".func", functools.partial.func.__get__(p))]
    for j, value in enumerate(functools.partial.args.__get__(p)):
        children.append(Child(f".args[{j}]", value))
    for key, value in (functools.partial.keywords.__get__(p) or {}).items():
        children.append(Child(f".keywords[{key!r}]", value))
    state = getattr(p, "__dict__", None)
    if isinstance(state, dict):
        for key, value in state.items():
            children.append(Child(_attr_step(key), value))
    return children


def _state_children(obj: Any, state: Any) -> list[Child]:
    if state is None:
        return []
    cls = type(obj)
    if isinstance(state, dict):
        return [Child(_attr_step(k), v) for k, v in state.items()]
    if (
        isinstance(state, tuple)
        and len(state) == 2
        and (state[0] is None or isinstance(state[0], dict))
        and (state[1] is None or isinstance(state[1], dict))
    ):
        # (instance dict, slots dict) from object.__getstate__ with __slots__
        children = []
        for part in state:
            if part:
                children.extend(Child(_attr_step(k), v) for k, v in part.items())
        return children
    if (
        dataclasses.is_dataclass(cls)
        and isinstance(state, (list, tuple))
        and len(state) == len(fields := dataclasses.fields(cls))
    ):
        # slots=True dataclasses pickle their fields as a list
        return [Child(f".{f.name}", v) for f, v in zip(fields, state, strict=True)]
    return [Child(".<state>", state)]


def _reduce_value(obj: Any, tester: Tester) -> Any:
    cls = type(obj)
    reducer = None
    if tester.reducer_override is not None:
        try:
            rv = tester.reducer_override(obj)
        except Exception as exc:  # noqa: BLE001 - whatever a reducer raises
            raise ReduceFailed(exc, "reducer_override", True) from None
        if rv is not NotImplemented:
            return rv
    try:
        reducer = tester.dispatch_table.get(cls)
    except Exception:
        reducer = None
    if reducer is not None:
        try:
            return reducer(obj)
        except Exception as exc:  # noqa: BLE001 - whatever a reducer raises
            name = getattr(reducer, "__qualname__", "registered reducer")
            raise ReduceFailed(exc, f"registered reducer {name}", True) from None
    if issubclass(cls, type):
        return None  # a class with a metaclass: saved as a global
    try:
        reduce_ex = getattr(obj, "__reduce_ex__", None)
        if reduce_ex is not None:
            return reduce_ex(PROTOCOL)
        reduce = getattr(obj, "__reduce__", None)
        if reduce is None:
            raise pickle.PicklingError(f"Can't pickle {type_name(obj)} object")
        return reduce()
    except Exception as exc:  # noqa: BLE001 - whatever a reducer raises
        user = _user_reducer_name(cls)
        raise ReduceFailed(exc, user or "__reduce_ex__", user is not None) from None


def _constructor_steps(obj: Any, cls: Any, n: int) -> list[str]:
    fields = None
    if isinstance(cls, type) and issubclass(cls, tuple):
        fields = _mro_lookup(cls, "_fields")
    if (
        isinstance(fields, tuple)
        and len(fields) == n
        and all(isinstance(f, str) for f in fields)
    ):
        return [f".{f}" for f in fields]
    if taxonomy.isa(obj, BaseException):
        return [f".args[{i}]" for i in range(n)]
    return [f".<reduce {i}>" for i in range(n)]


def _reduce_children(obj: Any, rv: Any) -> list[Child]:
    if (
        not isinstance(rv, tuple)
        or not 2 <= len(rv) <= 6
        or not isinstance(rv[1], tuple)
    ):
        user = _user_reducer_name(type(obj))
        error = pickle.PicklingError(
            f"{user or '__reduce__'} must return a string or a tuple of 2 to 6 items"
            f" (args a tuple), got {safe_repr(rv, 40)}"
        )
        raise ReduceFailed(error, user or "__reduce_ex__", user is not None)
    func, args = rv[0], rv[1]
    state = rv[2] if len(rv) > 2 else None
    listitems = rv[3] if len(rv) > 3 else None
    dictitems = rv[4] if len(rv) > 4 else None
    setter = rv[5] if len(rv) > 5 else None
    cls = type(obj)
    children: list[Child] = []
    if func is copyreg.__newobj__ and args:
        children.append(Child("", args[0], "class_of" if args[0] is cls else "value"))
        ctor_args = args[1:]
    elif func is copyreg.__newobj_ex__ and len(args) == 3:
        children.append(Child("", args[0], "class_of" if args[0] is cls else "value"))
        ctor_args = tuple(args[1]) + tuple((args[2] or {}).values())
    elif func is copyreg._reconstructor and args:
        children.append(Child("", args[0], "class_of" if args[0] is cls else "value"))
        ctor_args = args[2:] if len(args) > 2 and args[2] is not None else ()
    else:
        if func is cls:
            children.append(Child("", func, "class_of"))
        else:
            children.append(Child(".<reducer>", func))
        ctor_args = args
    steps = _constructor_steps(obj, cls, len(ctor_args))
    children.extend(
        Child(step, value) for step, value in zip(steps, ctor_args, strict=True)
    )
    if listitems is not None:
        children.extend(Child(f"[{i}]", v) for i, v in enumerate(listitems))
    if dictitems is not None:
        for n, item in enumerate(dictitems):
            if isinstance(item, tuple) and len(item) == 2:
                children.append(Child(f".<key {n}>", item[0]))
                children.append(Child(_key_step(item[0]), item[1]))
    children.extend(_state_children(obj, state))
    if setter is not None:
        children.append(Child(".<state setter>", setter))
    return children


# Saved by the pickler's own opcodes: nothing below them.
_ATOMIC = frozenset(
    {
        type(None),
        bool,
        int,
        float,
        complex,
        str,
        bytes,
        bytearray,
        pickle.PickleBuffer,
        type(Ellipsis),
        type(NotImplemented),
    }
)


class Children(list):
    """Children made up front (a few, from a reduce value or a function)."""

    def objs(self, lo: int, hi: int) -> list[Any]:
        return [child.obj for child in list.__getitem__(self, slice(lo, hi))]


class LazyChildren(Sequence):
    """Children of a big container, made only for the indices that fail.

    ``items`` holds the objects in pickler order; ``step(i)`` renders the
    path step of item ``i``. Testing a range pickles a plain slice of ``items``.
    """

    def __init__(self, items: list[Any], step: Callable[[int], str]):
        self.items = items
        self._step = step

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> Child:  # type: ignore[override]
        return Child(self._step(i), self.items[i])

    def objs(self, lo: int, hi: int) -> list[Any]:
        return self.items[lo:hi]


def _dict_children(obj: dict) -> LazyChildren:
    # pickler order: key 0, value 0, key 1, value 1, ...
    items = list(itertools.chain.from_iterable(obj.items()))

    def step(i: int) -> str:
        n, is_value = divmod(i, 2)
        return _key_step(items[i - 1]) if is_value else f".<key {n}>"

    return LazyChildren(items, step)


def expand(obj: Any, tester: Tester) -> Children | LazyChildren:
    """The children the pickler saves for ``obj``; raises ReduceFailed."""
    cls = type(obj)
    if cls in _ATOMIC:
        return Children()
    if cls in (tuple, list):
        return LazyChildren(obj if cls is list else list(obj), _index_step)
    if cls is dict:
        return _dict_children(obj)
    if cls in (set, frozenset):
        return LazyChildren(list(obj), _item_step)
    return Children(_expand_object(obj, tester))


def _index_step(i: int) -> str:
    return f"[{i}]"


def _item_step(i: int) -> str:
    return f".<item {i}>"


def _expand_object(obj: Any, tester: Tester) -> list[Child]:
    if taxonomy.isa(obj, types.FunctionType):
        # plain pickle: a function is a global, nothing below it
        if tester.by_value and not by_reference(obj):
            return _function_children(obj)
        return []
    if taxonomy.isa(obj, type):
        if tester.by_value and not by_reference(obj):
            return _class_children(obj)
        return []
    if taxonomy.isa(obj, types.MethodType):
        return [Child(".__self__", obj.__self__), Child(".__func__", obj.__func__)]
    if taxonomy.isa(obj, functools.partial):
        return _partial_children(obj)
    rv = _reduce_value(obj, tester)
    if rv is None or isinstance(rv, str):
        return []
    return _reduce_children(obj, rv)


# ----------------------------------------------------------------------------
# The walk


@dataclasses.dataclass
class Culprit:
    """One object that does not cross, and how we know."""

    path: str
    obj: Any
    status: Status
    tester: str  # name of the pickler that failed on it
    # the class to judge when the culprit is an instance of an unfindable class
    definition: Any = None
    reduce_failure: ReduceFailed | None = None
    exc: BaseException | None = None
    stage: str = "dump"
    # set when the category is known from how the culprit was found (fidelity)
    category: str | None = None
    detail: str = ""

    @property
    def main_ref(self) -> bool:
        return self.status.main_ref and self.status.ok


@dataclasses.dataclass
class _Node:
    obj: Any
    path: str
    status: Status
    parent: _Node | None = None
    kind: str = "value"
    depth: int = 0
    recursion_run: int = 0
    culprits_seen: int = 0


def _find_bad(
    children: Children | LazyChildren,
    tester: Tester,
    masked: set[int],
    lo: int = 0,
    hi: int | None = None,
    known_bad: bool = True,
) -> list[tuple[Child, Status]]:
    """The children that fail: small ranges one by one, big ones by halves.

    ``known_bad`` skips testing a range already known to fail.
    """
    if hi is None:
        hi = len(children)
    if hi - lo <= _BISECT_THRESHOLD:
        out = []
        for i in range(lo, hi):
            child = children[i]
            status = tester.test(child.obj, masked)
            if status.bad:
                out.append((child, status))
        return out
    if not known_bad and not tester.test(children.objs(lo, hi), masked).bad:
        return []
    mid = (lo + hi) // 2
    return _find_bad(children, tester, masked, lo, mid, False) + _find_bad(
        children, tester, masked, mid, hi, False
    )


def _chain_top(
    node: _Node, max_period: int = 3, by_type_only: bool = False
) -> _Node | None:
    """The top of the self-similar chain ``node`` lies in, or None.

    The path to ``node`` is a list of links (type of the object, step taken
    from it). A chain is a run of links repeating with a period of 1 to
    ``max_period`` (``[0][0]...``, ``.next.next...``, ``[0]['n'][0]['n']...``)
    seen at least twice; its top is the first node of the run: ``a['cfg']``
    for ``{'cfg': [[[...]]]}``, not ``a``.
    """
    nodes = []
    current: _Node | None = node
    while current is not None and len(nodes) < 4 * _MAX_RECURSION_DESCENT:
        nodes.append(current)
        current = current.parent
    nodes.reverse()
    links = [
        (
            type(nodes[i].obj),
            None if by_type_only else nodes[i + 1].path[len(nodes[i].path) :],
        )
        for i in range(len(nodes) - 1)
    ]
    for period in range(1, max_period + 1):
        if len(links) < 2 * period:
            break
        start = len(links) - period
        while start > 0 and links[start - 1] == links[start - 1 + period]:
            start -= 1
        if len(links) - start >= 2 * period:
            return nodes[start]
    return None


def _below(node: _Node, top: _Node) -> bool:
    """Whether ``node`` hangs below a child of ``top`` (not from ``top`` itself)."""
    current = node.parent
    while current is not None:
        if current.parent is top:
            return True
        if current is top:
            return False
        current = current.parent
    return False


def _ancestor_ids(node: _Node) -> set[int]:
    ids = set()
    current = node
    while current is not None:
        ids.add(id(current.obj))
        current = current.parent
    return ids


def _is_ancestor(node: _Node, obj: Any) -> bool:
    target = id(obj)
    current = node
    steps = 0
    while current is not None and steps < 10_000:
        if id(current.obj) == target:
            return True
        current = current.parent
        steps += 1
    return False


class Walker:
    """Finds every culprit below a failing root, root-first paths included.

    ``by_value_tester`` (loky's pickler when it takes functions by value) is
    consulted when plain pickle fails on a function or class: if it cannot carry
    it either, the culprit is looked for among the closure cells and globals.
    """

    def __init__(
        self,
        tester: Tester,
        *,
        by_value_tester: Tester | None = None,
        max_culprits: int = 50,
    ):
        self.tester = tester
        self.by_value_tester = by_value_tester
        self.max_culprits = max_culprits
        self.culprits: list[Culprit] = []
        self._seen: set[int] = set()
        # culprits already found stand for themselves in later pickles
        self.masked: set[int] = set()
        self._keepalive: list[Any] = []

    def walk(self, root: Any, path: str, status: Status | None = None) -> list[Culprit]:
        start = len(self.culprits)
        if status is None:
            status = self.tester.test(root, self.masked)
        if not status.bad:
            return []
        self._walk(root, path, status, self.tester)
        return self.culprits[start:]

    def _add(self, culprit: Culprit, key_obj: Any) -> None:
        key = id(key_obj)
        if key in self._seen:
            return
        self._seen.add(key)
        self._keepalive.append(key_obj)
        self.culprits.append(culprit)
        self.masked.add(key)

    def _walk(self, root: Any, path: str, status: Status, tester: Tester) -> None:
        stack = [_Node(root, path, status, culprits_seen=len(self.culprits))]
        while stack and len(self.culprits) < self.max_culprits:
            node = stack.pop()
            if id(node.obj) in self._seen:
                continue
            if node.culprits_seen != len(self.culprits):
                # Culprits found since this node was tested may have been its
                # only problem: test again with them masked.
                node.status = tester.test(node.obj, self.masked)
                if not node.status.bad:
                    continue
            if node.kind == "class_of":
                self._class_of_culprit(node.parent, node.obj, node.status, tester)
                continue
            self._visit(node, stack, tester)

    def _visit(self, node: _Node, stack: list[_Node], tester: Tester) -> None:
        obj = node.obj
        self._keepalive.append(obj)
        exc = node.status.exc
        recursion = isinstance(exc, RecursionError)
        if taxonomy.is_terminal(obj):
            self._culprit(node, tester)
            return
        try:
            children = expand(obj, tester)
        except ReduceFailed as failure:
            self._culprit(node, tester, reduce_failure=failure)
            return
        except RecursionError as error:
            node.status = Status(False, error)
            self._culprit(node, tester)
            return
        except Exception as error:  # noqa: BLE001 - e.g. a reducer's item iterator raised
            user = _user_reducer_name(type(obj))
            failure = ReduceFailed(error, user or "__reduce_ex__", user is not None)
            self._culprit(node, tester, reduce_failure=failure)
            return
        if not children:
            self._culprit(node, tester)
            return
        self._keepalive.append(children)
        if recursion:
            top = _chain_top(node)
            if top is not None:
                # a self-similar chain: its top is the culprit; what was queued
                # below its first link is part of the chain, not news
                stack[:] = [n for n in stack if not _below(n, top)]
                top.status = node.status  # the top's own may predate masking
                self._culprit(top, tester)
                return
            if node.recursion_run >= _MAX_RECURSION_DESCENT:
                # no repeating step (distinct keys at each level): the top of
                # the run repeating the same types
                top = _chain_top(node, by_type_only=True) or node
                stack[:] = [n for n in stack if not _below(n, top)]
                top.status = node.status
                self._culprit(top, tester)
                return
        bad = _find_bad(children, tester, self.masked, known_bad=False)
        if any(_is_ancestor(node, b[0].obj) for b in bad):
            # A child leading back to an ancestor fails because the ancestor
            # does: judge this node with its ancestors standing for themselves.
            bad = [b for b in bad if not _is_ancestor(node, b[0].obj)]
            if not bad and not tester.test(obj, self.masked | _ancestor_ids(node)).bad:
                return
        if not bad:
            self._culprit(node, tester)
            return
        seen_now = len(self.culprits)
        # The object's own class is judged last (pushed first): a culprit the
        # instance holds is named at its own path (``.lock``), not where the
        # class taken by value happens to refer to it too.
        bad.sort(key=lambda b: b[0].kind == "class_of")
        for child, child_status in reversed(bad):
            stack.append(
                _Node(
                    child.obj,
                    node.path + child.step,
                    child_status,
                    parent=node,
                    kind=child.kind,
                    depth=node.depth + 1,
                    recursion_run=node.recursion_run + 1 if recursion else 0,
                    culprits_seen=seen_now,
                )
            )

    def _class_of_culprit(
        self, node: _Node, cls: Any, status: Status, tester: Tester
    ) -> None:
        """An instance whose class cannot be found by name: reported at the instance."""
        if id(cls) in self._seen:
            return
        if self._by_value_descend(cls, node.path + ".__class__", status, tester):
            return
        self._add(
            Culprit(
                node.path,
                node.obj,
                status,
                tester.name,
                definition=cls,
                exc=status.exc,
                stage="load" if status.ok else "dump",
            ),
            cls,
        )

    def _by_value_descend(
        self, defn: Any, path: str, status: Status, tester: Tester
    ) -> bool:
        """Plain pickle failed on a definition: if loky's by-value pickler fails
        too, report what inside it fails (closure cells, globals) instead."""
        other = self.by_value_tester
        if other is None or tester.by_value or not taxonomy.is_definition(defn):
            return False
        other_status = other.test(defn, self.masked)
        if not other_status.bad:
            return False
        before = len(self.culprits)
        self._walk(defn, path, other_status, other)
        found = self.culprits[before:]
        # only what is strictly inside the definition replaces it
        return any(c.obj is not defn for c in found)

    def _culprit(
        self, node: _Node, tester: Tester, reduce_failure: ReduceFailed | None = None
    ) -> None:
        obj = node.obj
        status = node.status
        if status.ok and status.main_ref and not taxonomy.is_definition(obj):
            return  # a "__main__" string in the data, not a reference
        if taxonomy.is_definition(obj) and self._by_value_descend(
            obj, node.path, status, tester
        ):
            return
        self._add(
            Culprit(
                node.path,
                obj,
                status,
                tester.name,
                reduce_failure=reduce_failure,
                exc=reduce_failure.exc if reduce_failure else status.exc,
                stage="load" if status.ok else "dump",
            ),
            obj,
        )


def walk(
    root: Any,
    path: str,
    tester: Tester,
    *,
    status: Status | None = None,
    by_value_tester: Tester | None = None,
) -> list[Culprit]:
    """All culprits below ``root`` (one per distinct object), root-first paths."""
    walker = Walker(tester, by_value_tester=by_value_tester)
    return walker.walk(root, path, status)
