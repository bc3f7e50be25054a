"""Make objects that plain pickle cannot carry travel with cloudpickle.

``wrap_non_picklable_objects`` wraps functions, lambdas, closures, instances
and classes so that they are serialised by value with cloudpickle whatever
pickler the executor uses (even ``LOKY_PICKLER=pickle``).
"""

from __future__ import annotations

import inspect
from functools import partial
from typing import Any

import cloudpickle

__all__ = ["wrap_non_picklable_objects"]

# Wrappers made by _wrap_objects_when_needed, keyed by the wrapped object, so a
# function used for many tasks is wrapped (and its pickle cached by identity) once.
WRAP_CACHE: dict = {}


class CloudpickledObjectWrapper:
    """Serialise the wrapped object with cloudpickle; delegate attribute access."""

    def __init__(self, obj: Any, keep_wrapper: bool = False):
        self._obj = obj
        self._keep_wrapper = keep_wrapper

    def __reduce__(self):
        pickled_object = cloudpickle.dumps(self._obj)
        if not self._keep_wrapper:
            return cloudpickle.loads, (pickled_object,)
        return _reconstruct_wrapper, (pickled_object, self._keep_wrapper)

    def __getattr__(self, attr: str) -> Any:
        # Only called when normal lookup fails: never recurse on our own slots
        # (e.g. while unpickling, before __init__ has run).
        if attr not in ("_obj", "_keep_wrapper"):
            return getattr(self._obj, attr)
        raise AttributeError(
            f"{type(self).__name__!r} object has no attribute {attr!r}"
        )


class CallableObjectWrapper(CloudpickledObjectWrapper):
    """A ``CloudpickledObjectWrapper`` that stays callable."""

    def __call__(self, *args, **kwargs):
        return self._obj(*args, **kwargs)


def _wrap_non_picklable_objects(
    obj: Any, keep_wrapper: bool
) -> CloudpickledObjectWrapper:
    if callable(obj):
        return CallableObjectWrapper(obj, keep_wrapper=keep_wrapper)
    return CloudpickledObjectWrapper(obj, keep_wrapper=keep_wrapper)


def _reconstruct_wrapper(
    _pickled_object: bytes, keep_wrapper: bool
) -> CloudpickledObjectWrapper:
    obj = cloudpickle.loads(_pickled_object)
    return _wrap_non_picklable_objects(obj, keep_wrapper)


def _wrap_objects_when_needed(obj: Any) -> Any:
    """Wrap ``obj`` only if plain pickle could not import it by name.

    Used by downstream code (not by the executor): ``__main__`` objects, nested
    functions and lambdas are wrapped, recursing into ``functools.partial``.
    """
    module = getattr(obj, "__module__", None)
    # Builtin methods have __module__ None.
    need_wrap = isinstance(module, str) and "__main__" in module
    if isinstance(obj, partial):
        return partial(
            _wrap_objects_when_needed(obj.func),
            *[_wrap_objects_when_needed(a) for a in obj.args],
            **{k: _wrap_objects_when_needed(v) for k, v in obj.keywords.items()},
        )
    if callable(obj):
        func_code = getattr(obj, "__code__", "")
        need_wrap |= getattr(func_code, "co_flags", 0) & inspect.CO_NESTED
        func_name = getattr(obj, "__name__", "")
        need_wrap |= "<lambda>" in func_name
    if not need_wrap:
        return obj
    try:
        wrapped_obj = WRAP_CACHE.get(obj)
    except TypeError:  # unhashable object
        wrapped_obj = None
    if wrapped_obj is None:
        wrapped_obj = _wrap_non_picklable_objects(obj, keep_wrapper=False)
        try:
            WRAP_CACHE[obj] = wrapped_obj
        except TypeError:
            pass
    return wrapped_obj


def _make_class_wrapper(cls: type, keep_wrapper: bool) -> type:
    """A wrapper class whose instances hold a ``cls`` instance built from the
    constructor arguments, and pickle it with cloudpickle."""

    def __init__(self, *args, **kwargs):
        CloudpickledObjectWrapper.__init__(
            self, cls(*args, **kwargs), keep_wrapper=keep_wrapper
        )

    wrapper = type(
        cls.__name__,
        (CloudpickledObjectWrapper,),
        {
            "__init__": __init__,
            "__doc__": cls.__doc__,
            "__qualname__": cls.__qualname__,
        },
    )
    wrapper.__module__ = cls.__module__
    return wrapper


def wrap_non_picklable_objects(obj: Any, keep_wrapper: bool = True) -> Any:
    """Wrap ``obj`` so that it is pickled with cloudpickle.

    Works as a function or a decorator, on functions, lambdas, closures,
    instances and classes. A wrapped class returns wrapper instances that
    delegate attribute and method access to the original. With
    ``keep_wrapper=True`` the object comes back wrapped after unpickling (so it
    can travel again); with ``False`` it comes back bare.

    Cloudpickle is slower than pickle: prefer module-level functions and
    ``__reduce__`` methods when possible.
    """
    if inspect.isclass(obj):
        return _make_class_wrapper(obj, keep_wrapper)
    return _wrap_non_picklable_objects(obj, keep_wrapper=keep_wrapper)
