"""Observe the calls a test sends to process pools.

While a recorder is installed (see :func:`set_recorder`), every ``submit`` /
``map`` on a loky or ``concurrent.futures`` process pool, and every
``apply_async`` / ``map`` / ``starmap`` (and their ``_async`` forms) on a
``multiprocessing`` pool, is described as a :class:`PoolCall` (what would be
sent, and the ``file:line`` of the user code that sent it) and handed to the
recorder *before* the call proceeds unchanged. The recorder decides what to do
with it; this module holds no diagnosis logic.

The patches are installed once (:func:`install`) and cost one global read per
call while no recorder is set.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import os
import sys
import threading
from collections.abc import Callable, Iterable
from typing import Any

# Pickler names understood by the engine.
STANDARD = "pickle"
LOKY = "loky"


@dataclasses.dataclass
class PoolCall:
    """One call made to a process pool, as the pool would send it."""

    pool: str  # "loky", "concurrent.futures" or "multiprocessing"
    method: str  # "submit", "map", "apply_async", ...
    fn: Any
    calls: list[tuple[tuple, dict]]  # (args, kwargs) of each task
    filename: str  # the user's code that made the call
    lineno: int
    picklers: tuple[str, ...]  # standard pickle first, then the pool's own

    @property
    def function_name(self) -> str:
        return describe_callable(self.fn)


Recorder = Callable[[PoolCall], None]

_recorder: Recorder | None = None
_guard = threading.local()  # per-thread "already inside an observed call"
_installed: list[tuple[type, str, Any]] = []  # (class, attribute, original)
_install_lock = threading.Lock()
_install_count = 0  # nested sessions (pytester) install and uninstall in pairs
_internal_dirs: tuple[str, ...] = ()


def set_recorder(recorder: Recorder | None) -> Recorder | None:
    """Install the function called for each observed pool call; returns the old one."""
    global _recorder
    previous, _recorder = _recorder, recorder
    return previous


def describe_callable(fn: Any) -> str:
    """``module.qualname`` of a function, else a repr bounded to 80 characters."""
    qualname = getattr(fn, "__qualname__", None)
    module = getattr(fn, "__module__", None)
    if isinstance(qualname, str):
        return f"{module}.{qualname}" if isinstance(module, str) else qualname
    try:
        text = repr(fn)
    except Exception:
        text = f"<{type(fn).__qualname__} object>"
    return text if len(text) <= 80 else text[:77] + "..."


def _module_dir(name: str) -> str | None:
    module = sys.modules.get(name)
    path = getattr(module, "__file__", None)
    return os.path.dirname(os.path.abspath(path)) + os.sep if path else None


def _find_call_site() -> tuple[str, int]:
    """The innermost frame outside the pools, the checkers and this plugin."""
    frame = sys._getframe(2)
    fallback = None
    while frame is not None:
        filename = frame.f_code.co_filename
        if fallback is None:
            fallback = (filename, frame.f_lineno)
        absolute = os.path.abspath(filename)
        if not absolute.startswith(_internal_dirs):
            return absolute, frame.f_lineno
        frame = frame.f_back
    return fallback or ("?", 0)


def _record(pool, method, fn, calls, picklers) -> None:
    recorder = _recorder
    if recorder is None:
        return
    filename, lineno = _find_call_site()
    recorder(
        PoolCall(
            pool=pool,
            method=method,
            fn=fn,
            calls=calls,
            filename=filename,
            lineno=lineno,
            picklers=picklers,
        )
    )


class _Observing:
    """Context manager marking this thread as inside an observed call, so that
    the calls a pool makes to itself (``map`` -> ``submit``, a subclass calling
    ``super().submit``) are not observed twice."""

    __slots__ = ()

    def __enter__(self):
        _guard.active = True

    def __exit__(self, *exc):
        _guard.active = False


_observing = _Observing()


def _should_observe() -> bool:
    return _recorder is not None and not getattr(_guard, "active", False)


def _materialize(iterables: Iterable[Iterable]) -> tuple[list[tuple], list[list]]:
    """Zip the iterables (as the base ``Executor.map`` does, eagerly) and return
    the task argument tuples plus equivalent columns to pass on."""
    iterables = list(iterables)
    rows = list(zip(*iterables, strict=False))  # shortest wins, as in Executor.map
    columns = (
        [list(column) for column in zip(*rows, strict=True)]
        if rows
        else [[] for _ in iterables]
    )
    return rows, columns


def _executor_submit(original, pool, picklers_of):
    @functools.wraps(original)
    def submit(self, fn, /, *args, **kwargs):
        if not _should_observe():
            return original(self, fn, *args, **kwargs)
        with _observing:
            _record(pool, "submit", fn, [(args, kwargs)], picklers_of(self))
            return original(self, fn, *args, **kwargs)

    return submit


def _executor_map(original, pool, picklers_of):
    @functools.wraps(original)
    def map(self, fn, *iterables, **kwargs):
        if not _should_observe():
            return original(self, fn, *iterables, **kwargs)
        with _observing:
            rows, columns = _materialize(iterables)
            _record(pool, "map", fn, [(row, {}) for row in rows], picklers_of(self))
            return original(self, fn, *columns, **kwargs)

    return map


def _is_thread_pool(pool) -> bool:
    from multiprocessing.pool import ThreadPool

    return isinstance(pool, ThreadPool)


def _pool_apply_async(original):
    @functools.wraps(original)
    def apply_async(self, func, args=(), kwds={}, *rest, **options):  # noqa: B006
        if not _should_observe() or _is_thread_pool(self):
            return original(self, func, args, kwds, *rest, **options)
        with _observing:
            _record(
                "multiprocessing",
                "apply_async",
                func,
                [(tuple(args), dict(kwds))],
                (STANDARD,),
            )
            return original(self, func, args, kwds, *rest, **options)

    return apply_async


def _pool_map(original, method, star):
    @functools.wraps(original)
    def map(self, func, iterable, *rest, **options):
        if not _should_observe() or _is_thread_pool(self):
            return original(self, func, iterable, *rest, **options)
        with _observing:
            items = list(iterable)
            calls = [(tuple(item) if star else (item,), {}) for item in items]
            _record("multiprocessing", method, func, calls, (STANDARD,))
            return original(self, func, items, *rest, **options)

    return map


def _patch(cls: type, name: str, make_wrapper: Callable[[Any], Any]) -> None:
    original = cls.__dict__.get(name)
    if original is None or getattr(original, "_pytest_loky_wrapped", False):
        return
    wrapper = make_wrapper(original)
    wrapper._pytest_loky_wrapped = True
    setattr(cls, name, wrapper)
    _installed.append((cls, name, original))


def _optional_import(name: str):
    try:
        return importlib.import_module(name)
    except Exception:  # a pool library that is absent or broken is simply not observed
        return None


def install() -> None:
    """Patch the pools' entry points; pair each call with :func:`uninstall`."""
    global _internal_dirs, _install_count
    with _install_lock:
        _install_count += 1
        if _installed:
            return
        cf_process = _optional_import("concurrent.futures.process")
        mp_pool = _optional_import("multiprocessing.pool")
        loky_executor = _optional_import("loky.process_executor")
        loky_reusable = _optional_import("loky.reusable_executor")

        def loky_picklers(_executor):
            return (STANDARD, LOKY)

        def standard_picklers(_executor):
            return (STANDARD,)

        for module, class_name, pool, picklers_of in (
            (loky_executor, "ProcessPoolExecutor", "loky", loky_picklers),
            (loky_reusable, "_ReusablePoolExecutor", "loky", loky_picklers),
            (
                cf_process,
                "ProcessPoolExecutor",
                "concurrent.futures",
                standard_picklers,
            ),
        ):
            cls = getattr(module, class_name, None)
            if cls is None:
                continue
            _patch(
                cls,
                "submit",
                lambda o, p=pool, k=picklers_of: _executor_submit(o, p, k),
            )
            _patch(cls, "map", lambda o, p=pool, k=picklers_of: _executor_map(o, p, k))

        pool_class = getattr(mp_pool, "Pool", None)
        if pool_class is not None:
            _patch(pool_class, "apply_async", _pool_apply_async)
            for method, star in (
                ("map", False),
                ("map_async", False),
                ("starmap", True),
                ("starmap_async", True),
            ):
                _patch(
                    pool_class, method, lambda o, m=method, s=star: _pool_map(o, m, s)
                )

        dirs = [os.path.dirname(os.path.abspath(__file__)) + os.sep]
        for name in (
            "loky",
            "loky_check",
            "concurrent.futures",
            "multiprocessing",
            "joblib",
        ):
            directory = _module_dir(name)
            if directory:
                dirs.append(directory)
        _internal_dirs = tuple(dirs)


def uninstall() -> None:
    """Restore every patched method once the last user is gone."""
    global _install_count
    with _install_lock:
        _install_count = max(0, _install_count - 1)
        while _installed and _install_count == 0:
            cls, name, original = _installed.pop()
            setattr(cls, name, original)
