"""The taxonomy of pickling failures: category, remedy, message and fix text.

Each category is recognised from the culprit's real type wherever a type test
is possible (``isinstance`` against the stdlib types, looked up only in modules
that are already imported, so classifying never imports anything heavy);
the exception is consulted only for what no type can tell (a reducer that
raised, a load that failed, a recursion overflow).
"""

from __future__ import annotations

import dataclasses
import sys
import types
from typing import Any

# category -> remedies in order of preference (the first applicable one is chosen)
REMEDIES: dict[str, tuple[str, ...]] = {
    "lambda": ("wrap", "move_to_module"),
    "local_function": ("wrap", "move_to_module"),
    "local_class": ("wrap", "move_to_module"),
    "main_module": ("wrap", "move_to_module"),
    "not_importable": ("pickle_by_value", "move_to_module"),
    "sync_primitive": ("create_in_worker",),
    "file_handle": ("create_in_worker",),
    "connection": ("create_in_worker",),
    "generator": ("materialize",),
    "module": ("wrap", "import_in_worker"),
    "weakref": ("implement_reduce",),
    "c_extension": ("implement_reduce", "create_in_worker"),
    "reduce_error": ("fix_reducer",),
    "unpickle_error": ("move_to_module", "pickle_by_value", "fix_reducer"),
    "recursion": ("restructure",),
    "fidelity": ("fix_reducer",),
    "other": ("none_known",),
}
CATEGORIES = tuple(REMEDIES)

_HEAPTYPE = 1 << 9  # Py_TPFLAGS_HEAPTYPE: set on classes written in Python

# Before 3.12 the C pickler counts its nesting against sys.getrecursionlimit();
# from 3.12 on against the interpreter's own C recursion limit, which
# sys.setrecursionlimit() does not raise (so advising it would be wrong there).
_PICKLER_DEPTH_FOLLOWS_RECURSIONLIMIT = sys.version_info < (3, 12)

# (module, dotted attribute) of the types of each category. Only modules that
# are already imported are consulted: an object cannot be an instance of a type
# whose module was never imported.
_TYPE_NAMES: dict[str, tuple[tuple[str, str], ...]] = {
    "sync_primitive": (
        ("_thread", "LockType"),
        ("_thread", "RLock"),
        ("threading", "Condition"),
        ("threading", "Event"),
        ("threading", "Semaphore"),
        ("threading", "Barrier"),
        ("queue", "Queue"),
        ("_queue", "SimpleQueue"),
        ("_multiprocessing", "SemLock"),
        ("multiprocessing.synchronize", "SemLock"),
        ("multiprocessing.synchronize", "Condition"),
        ("multiprocessing.synchronize", "Event"),
        ("multiprocessing.synchronize", "Barrier"),
        ("multiprocessing.queues", "Queue"),
        ("multiprocessing.queues", "SimpleQueue"),
        ("multiprocessing.sharedctypes", "SynchronizedBase"),
        ("multiprocessing.managers", "BaseManager"),
        ("multiprocessing.pool", "Pool"),
        ("concurrent.futures", "Executor"),
        ("concurrent.futures", "Future"),
        ("asyncio.locks", "Lock"),
        ("asyncio.locks", "Event"),
        ("asyncio.locks", "Condition"),
        ("asyncio.locks", "Semaphore"),
        ("asyncio.queues", "Queue"),
        ("loky.backend.synchronize", "SemLock"),
        ("loky.backend.synchronize", "Condition"),
        ("loky.backend.synchronize", "Event"),
        ("loky.backend.queues", "Queue"),
        ("loky.backend.queues", "SimpleQueue"),
    ),
    "file_handle": (
        ("io", "IOBase"),
        ("_io", "_IOBase"),
        ("tempfile", "_TemporaryFileWrapper"),
        ("tempfile", "SpooledTemporaryFile"),
        ("tempfile", "TemporaryDirectory"),
        ("mmap", "mmap"),
        ("os", "DirEntry"),
        ("posix", "ScandirIterator"),
    ),
    "connection": (
        ("_socket", "socket"),
        ("socket", "socket"),
        ("ssl", "SSLContext"),
        ("ssl", "SSLObject"),
        ("sqlite3", "Connection"),
        ("sqlite3", "Cursor"),
        ("http.client", "HTTPConnection"),
        ("http.client", "HTTPResponse"),
        ("multiprocessing.connection", "Connection"),
        ("multiprocessing.connection", "Listener"),
        ("selectors", "BaseSelector"),
        ("select", "epoll"),
        ("requests", "Session"),
        ("urllib3", "PoolManager"),
        ("urllib3.connectionpool", "ConnectionPool"),
        ("aiohttp", "ClientSession"),
        ("httpx", "Client"),
        ("psycopg2.extensions", "connection"),
        ("pymysql.connections", "Connection"),
        ("sqlalchemy.engine", "Connection"),
        ("sqlalchemy.engine", "Engine"),
        ("asyncio.events", "AbstractEventLoop"),
    ),
    "generator": (
        ("types", "GeneratorType"),
        ("types", "CoroutineType"),
        ("types", "AsyncGeneratorType"),
        ("types", "FrameType"),
        ("types", "TracebackType"),
    ),
    "module": (("types", "ModuleType"),),
    "weakref": (
        ("_weakref", "ReferenceType"),
        ("_weakref", "ProxyType"),
        ("_weakref", "CallableProxyType"),
        ("weakref", "WeakValueDictionary"),
        ("weakref", "WeakKeyDictionary"),
        ("_weakrefset", "WeakSet"),
        ("weakref", "finalize"),
    ),
    "c_extension": (
        ("_thread", "_local"),
        ("_contextvars", "ContextVar"),
        ("_contextvars", "Context"),
        ("_contextvars", "Token"),
        ("_hashlib", "HASH"),
        ("_hashlib", "HMAC"),
        ("_blake2", "blake2b"),
        ("_blake2", "blake2s"),
        ("_ctypes", "_Pointer"),
        ("_ctypes", "CFuncPtr"),
        ("_ctypes", "_SimpleCData"),
    ),
}
# Order matters: a socket is a connection before it is a C object.
_TYPE_ORDER = (
    "sync_primitive",
    "connection",
    "file_handle",
    "generator",
    "module",
    "weakref",
    "c_extension",
)
# C objects better created afresh in the worker than given a reducer.
_CREATE_IN_WORKER_C_TYPES = (
    ("_thread", "_local"),
    ("_contextvars", "ContextVar"),
    ("_contextvars", "Context"),
    ("_contextvars", "Token"),
)


def _resolve(module_name: str, dotted: str) -> type | None:
    module = sys.modules.get(module_name)
    if module is None:
        return None
    target: Any = module
    for part in dotted.split("."):
        target = getattr(target, part, None)
        if target is None:
            return None
    return target if isinstance(target, type) else None


def _types_of(category: str) -> tuple[type, ...]:
    return tuple(
        t for t in (_resolve(m, n) for m, n in _TYPE_NAMES[category]) if t is not None
    )


def isa(obj: Any, kinds: type | tuple[type, ...]) -> bool:
    """``isinstance`` by the real type: never consults a ``__class__`` property."""
    return issubclass(type(obj), kinds)


def classify_type(obj: Any) -> str | None:
    """The category an object belongs to by its type alone, or None.

    Only built-in kinds are recognised here (locks, files, sockets, generators,
    modules, weak references, known C objects); definitions (functions and
    classes) are classified by :func:`classify_definition`.
    """
    for category in _TYPE_ORDER:
        kinds = _types_of(category)
        if kinds and isa(obj, kinds):
            return category
    return None


def is_terminal(obj: Any) -> bool:
    """True for objects reported as a whole, never descended into.

    A ``threading.Condition`` fails because of the lock inside it, but the user
    passed the condition: it is reported, typed by the container (spec §10).
    """
    return classify_type(obj) is not None


def is_c_type(cls: type) -> bool:
    """Whether ``cls`` is implemented in C (not a class statement)."""
    try:
        return not (cls.__flags__ & _HEAPTYPE)
    except Exception:
        return False


def _definition_attr(defn: Any, name: str) -> Any:
    # Functions and classes keep these in C slots or the type's own dict: no
    # user-level __getattr__ can intercept them (metaclass properties aside).
    try:
        return getattr(defn, name)
    except Exception:
        return None


def classify_definition(defn: Any, *, main_ref: bool = False) -> str:
    """Category of a function or class that a pickler could not store by name."""
    module = _definition_attr(defn, "__module__")
    qualname = _definition_attr(defn, "__qualname__") or ""
    if main_ref:
        return "main_module"
    if isa(defn, types.FunctionType) and defn.__name__ == "<lambda>":
        return "lambda"
    if "<locals>" in str(qualname):
        return "local_class" if isa(defn, type) else "local_function"
    if module in ("__main__", "__mp_main__"):
        return "main_module"
    return "not_importable"


def is_definition(obj: Any) -> bool:
    """Functions and classes: what pickle stores by module and name."""
    return isa(obj, (types.FunctionType, type))


def wrapped_definition(obj: Any) -> Any:
    """The function a C-level wrapper stores by name (``functools.lru_cache``,
    ``functools.cache``): pickled by its qualified name like a function, but
    no pickler can take it by value. None for anything else."""
    lru_wrapper = _resolve("functools", "_lru_cache_wrapper")
    if is_definition(obj) or not (
        is_c_type(type(obj)) or (lru_wrapper is not None and isa(obj, lru_wrapper))
    ):
        return None
    try:
        state = object.__getattribute__(obj, "__dict__")
    except Exception:
        return None
    wrapped = state.get("__wrapped__") if isinstance(state, dict) else None
    return wrapped if is_definition(wrapped) else None


def categorize(
    obj: Any,
    *,
    definition: Any = None,
    exc: BaseException | None = None,
    reducer_raised: bool = False,
    main_ref: bool = False,
    stage: str = "dump",
) -> str:
    """One category for one culprit.

    ``definition`` is the function or class to judge when the culprit is an
    instance of a class that cannot be found by name; ``reducer_raised`` tells
    that a user-level ``__reduce__``/``__getstate__``/registered reducer raised.
    """
    if isinstance(exc, RecursionError):
        return "recursion"
    if definition is not None:
        return classify_definition(definition, main_ref=main_ref)
    if is_definition(obj):
        if stage == "load" and not main_ref and exc is not None:
            if not isinstance(exc, (ImportError, AttributeError)):
                return "unpickle_error"
        return classify_definition(obj, main_ref=main_ref)
    wrapped = wrapped_definition(obj)
    if wrapped is not None and (stage == "dump" or main_ref):
        return classify_definition(wrapped, main_ref=main_ref)
    category = classify_type(obj)
    if category is not None:
        return category
    if reducer_raised:
        return "reduce_error"
    if stage == "load":
        return "unpickle_error"
    if is_c_type(type(obj)) or _c_state_refused(obj, exc):
        return "c_extension"
    return "other"


def _c_state_refused(obj: Any, exc: BaseException | None) -> bool:
    """The interpreter's own refusal for an object whose state lives in C
    (``cannot pickle 'zlib.Compress' object``): C extension types built with
    ``PyType_FromSpec`` are heap types, so the type flag alone misses them."""
    if type(exc) is not TypeError:
        return False
    try:
        text = str(exc)
    except Exception:
        return False
    if not (text.startswith("cannot pickle '") and text.endswith("' object")):
        return False
    # about this very object, not something inside it
    name = text[len("cannot pickle '") : -len("' object")]
    return name.rsplit(".", 1)[-1] == type(obj).__name__


def _is_exception(obj: Any, definition: Any) -> bool:
    if isa(obj, BaseException):
        return True
    target = definition if definition is not None else obj
    return isa(target, type) and issubclass(target, BaseException)


def choose_remedy(
    category: str,
    *,
    wrap_fixes: bool,
    obj: Any = None,
    definition: Any = None,
    exc: BaseException | None = None,
    stage: str = "dump",
) -> str:
    """The remedy for a category, skipping ``wrap`` unless it was verified."""
    options = REMEDIES[category]
    if category == "not_importable":
        # The parent imports the module but the worker cannot: send its code by
        # value. The parent itself cannot find the name: move the definition.
        target = definition if definition is not None else obj
        module = sys.modules.get(str(_definition_attr(target, "__module__")))
        if stage == "load" and module is not None:
            return "pickle_by_value"
        return "move_to_module"
    if category == "c_extension":
        create = tuple(
            t for t in (_resolve(m, n) for m, n in _CREATE_IN_WORKER_C_TYPES) if t
        )
        return "create_in_worker" if create and isa(obj, create) else "implement_reduce"
    if category == "unpickle_error":
        if isinstance(exc, ModuleNotFoundError):
            return "pickle_by_value"
        if (
            isinstance(exc, (ImportError, AttributeError))
            and "attribute" in str(exc).lower()
        ):
            return "move_to_module"
        return "fix_reducer"
    if _is_exception(obj, definition) and "move_to_module" in options:
        # A wrapped exception round-trips, but it is no longer an exception:
        # it can neither be raised nor caught as one.
        return "move_to_module"
    for option in options:
        if option == "wrap" and not wrap_fixes:
            continue
        return option
    return options[-1]


# ----------------------------------------------------------------------------
# Texts


@dataclasses.dataclass
class Texts:
    message: str
    fix: str


_SYNC_NAMES = {
    "lock": "A lock",
    "rlock": "A lock",
    "condition": "A condition",
    "event": "An event",
    "semaphore": "A semaphore",
    "boundedsemaphore": "A semaphore",
    "barrier": "A barrier",
    "queue": "A queue",
    "simplequeue": "A queue",
    "joinablequeue": "A queue",
    "semlock": "A semaphore",
}


def _sync_noun(obj: Any) -> str:
    name = type(obj).__name__.lower().lstrip("_")
    return _SYNC_NAMES.get(name, "A synchronisation object")


def describe_exception(exc: BaseException | None, *, limit: int = 160) -> str:
    """``TypeName: message`` on one line, the message bounded to ``limit``
    characters; ``""`` for None."""
    if exc is None:
        return ""
    try:
        text = str(exc)
    except Exception:
        text = "<unprintable>"
    text = " ".join(text.split())
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def texts(
    category: str,
    remedy: str,
    *,
    path: str,
    obj: Any = None,
    type_name: str = "",
    definition: Any = None,
    exc: BaseException | None = None,
    wrap_fixes: bool = False,
    loky_carries: bool = False,
    reducer_name: str = "",
    cloudpickle_carries: bool = True,
) -> Texts:
    """Message (why) and fix (what to do) for one finding."""
    short_type = type_name.rsplit(".", 1)[-1] or "object"
    carries = (
        " loky's pickler carries it, but plain pickle, concurrent.futures and"
        " multiprocessing do not."
        if loky_carries
        else ""
    )
    if category == "lambda":
        message = "Standard pickle stores functions by name and a lambda has none; cloudpickle carries it."
    elif category == "local_function":
        message = (
            "Standard pickle stores functions by name and one defined inside another"
            " function cannot be found by name; cloudpickle carries it by value."
        )
    elif category == "local_class":
        what = "An instance of a class" if definition is not None else "A class"
        message = (
            f"{what} defined inside a function cannot be found by name by standard pickle;"
            " cloudpickle carries it by value."
        )
    elif category == "main_module":
        message = (
            "Defined in __main__: pickled by name, but a loky worker's __main__ is not your"
            " script, so the worker cannot load it."
        )
        if loky_carries:
            message += " loky's default pickler (cloudpickle) carries it by value."
    elif category == "not_importable":
        target = definition if definition is not None else obj
        name = f"{_definition_attr(target, '__module__')}.{_definition_attr(target, '__qualname__')}"
        message = f"Pickled by name, but {name} cannot be imported" + (
            " in the worker." if exc is not None else "."
        )
    elif category == "sync_primitive":
        message = f"{_sync_noun(obj)} belongs to one process; no pickler can send it."
    elif category == "file_handle":
        message = "An open file belongs to one process; only its path can travel."
        if loky_carries:
            message += (
                " cloudpickle sends a snapshot of a readable text file's contents."
            )
    elif category == "connection":
        message = "A socket or connection is tied to this process's open descriptor."
        if loky_carries:
            message += " loky passes the descriptor itself; standard pickle cannot."
    elif category == "generator":
        if short_type in ("frame", "traceback"):
            message = f"A {short_type} belongs to this process's call stack; no pickler can send it."
        else:
            kind = short_type.replace("Type", "").replace("_", " ").lower()
            article = "An" if kind[:1] in "aeiou" else "A"
            message = f"{article} {kind} holds a running frame; no pickler can send its state."
    elif category == "module":
        message = (
            "Standard pickle cannot store a module; cloudpickle stores it by name."
        )
    elif category == "weakref":
        message = "A weak reference cannot be pickled: what it points to would not travel with it."
        if loky_carries:
            message += " cloudpickle carries this weak container."
    elif category == "c_extension":
        message = f"{type_name} is a C object without pickle support."
    elif category == "reduce_error":
        message = f"Its {reducer_name or 'reducer'} raised {describe_exception(exc)}."
    elif category == "unpickle_error":
        message = f"It pickles, but loading it fails: {describe_exception(exc)}."
    elif category == "recursion":
        if _PICKLER_DEPTH_FOLLOWS_RECURSIONLIMIT:
            limit = f"the recursion limit ({sys.getrecursionlimit()})"
        else:
            limit = "the interpreter's C recursion limit"
        message = f"Nested deeper than {limit}; the pickler gives up."
    elif category == "fidelity":
        message = "The round trip returns a different value."
    else:
        message = describe_exception(exc) or "This object cannot be pickled."
    wrapper_of = wrapped_definition(obj) if definition is None else None
    if wrapper_of is not None and category in ("local_function", "main_module"):
        where = (
            "defined inside another function"
            if category == "local_function"
            else "defined in __main__"
        )
        message = (
            f"This {short_type.lstrip('_')} wraps a function {where}: every pickler"
            " stores it by name, and a worker cannot find that name."
        )
    elif not cloudpickle_carries and category in (
        "lambda",
        "local_function",
        "local_class",
    ):
        # cloudpickle takes the definition by value but fails on what it refers to
        message = message.split(";")[0] + (
            "; loky's pickler carries it by value, but cloudpickle alone fails on"
            " what it refers to."
            if loky_carries
            else "; taken by value, it still refers to something no pickler can send."
        )
    if carries and category in ("c_extension", "reduce_error", "other"):
        message += carries

    fix = _fix_text(
        remedy,
        category,
        path=path,
        obj=obj,
        definition=definition,
        wrap_fixes=wrap_fixes,
        reducer_name=reducer_name,
        short_type=short_type,
    )
    if REMEDIES[category][0] == "wrap" and remedy != "wrap":
        if not wrap_fixes:
            fix += "   (wrap_non_picklable_objects was checked and does not help here)"
        elif _is_exception(obj, definition):
            fix += "   (wrapped, an exception can no longer be raised or caught as one)"
    return Texts(message=message, fix=fix)


def _fix_text(
    remedy: str,
    category: str,
    *,
    path: str,
    obj: Any,
    definition: Any,
    wrap_fixes: bool,
    reducer_name: str,
    short_type: str,
) -> str:
    target = definition if definition is not None else obj
    target = wrapped_definition(target) or target
    name = _definition_attr(target, "__qualname__") if is_definition(target) else None
    if remedy == "wrap":
        return f"loky.wrap_non_picklable_objects({path})   (checked: the wrapped copy round-trips)"
    if remedy == "move_to_module":
        if name and str(name).endswith("<lambda>"):
            return "replace the lambda with a def at module level in an importable module (not in __main__)."
        if name:
            return f"define {str(name).replace('.<locals>', '')} at module level in an importable module (not in __main__, not inside a function)."
        return "move the definitions it needs to an importable module."
    if remedy == "pickle_by_value":
        module = _definition_attr(target, "__module__") if target is not None else None
        return f"cloudpickle.register_pickle_by_value({module}) in the parent, or make {module} importable in the worker."
    if remedy == "create_in_worker":
        if category == "file_handle":
            return (
                "pass the path and open the file in the worker (or in initializer=...)."
            )
        if category == "connection":
            return "pass the address and connect in the worker (initializer=...)."
        return "create it in the worker (initializer=...), or drop it in __getstate__."
    if remedy == "materialize":
        if short_type in ("frame", "traceback"):
            return "pass the text instead (traceback.format_tb / format_stack), not the object."
        if short_type == "coroutine":
            return f"await {path} in the parent and pass its result (or pass the coroutine function and its arguments)."
        if short_type == "async_generator":
            return f"pass a list instead: [x async for x in {path}]."
        return f"pass a list instead: list({path})."
    if remedy == "import_in_worker":
        return "import the module inside the function that runs in the worker; pass its name."
    if remedy == "implement_reduce" and category == "weakref":
        return (
            "give the object holding it a __getstate__ / __reduce__ that leaves the weak"
            " reference out (and re-creates it after loading), or pass the referent."
        )
    if remedy == "implement_reduce":
        return (
            f"give {short_type} a __reduce__ (or loky.backend.reduction.register / copyreg.pickle"
            " a reducer) that rebuilds it from picklable state."
        )
    if remedy == "fix_reducer":
        if category == "fidelity":
            where = reducer_name or "__reduce__ / __getstate__"
            return f"fix {short_type}'s {where} so that the copy keeps every value of the original."
        if category == "unpickle_error":
            where = reducer_name or "__reduce__ / __setstate__"
            return (
                f"fix {short_type}'s {where} so that it loads back: the rebuild"
                " function must accept what the reducer returns."
            )
        where = reducer_name or "__reduce__ / __getstate__"
        return f"fix {short_type}'s {where} so that it returns picklable state without raising."
    if remedy == "restructure":
        if _PICKLER_DEPTH_FOLLOWS_RECURSIONLIMIT:
            return "flatten the structure (or raise sys.setrecursionlimit in both processes)."
        return "flatten the structure (sys.setrecursionlimit does not raise the pickler's limit)."
    return "no known fix: convert it to plain data before passing it."
