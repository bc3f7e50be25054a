"""Where the examples of a reducer's type come from.

In order: a strategy registered with ``register_strategy``; else hypothesis'
own resolution (``st.register_type_strategy`` and ``st.from_type``, which
builds classes from their constructor's type hints); when none of those can
build the type, ``NoStrategyError`` says in one line which type and why.
"""

from __future__ import annotations

import inspect
import typing
from typing import Any

from hypothesis import strategies as st
from hypothesis.strategies import SearchStrategy

from .equality import qualified_name

__all__ = [
    "NoStrategyError",
    "register_strategy",
    "strategy_for",
    "explain_unbuildable",
]

_STRATEGY_REGISTRY: dict[type, SearchStrategy] = {}


class NoStrategyError(TypeError):
    """No strategy can build examples of a type (the message names it)."""


def register_strategy(type_: type, strategy: SearchStrategy | Any) -> None:
    """Use ``strategy`` for the examples of ``type_`` in reducer round trips.

    ``strategy`` is a hypothesis ``SearchStrategy`` or a callable taking no
    argument and returning one (handy for recursive types).
    """
    if not isinstance(type_, type):
        raise TypeError(f"register_strategy expects a type, got {type_!r}")
    if not isinstance(strategy, SearchStrategy):
        if not callable(strategy):
            raise TypeError(
                f"register_strategy({type_.__qualname__}, ...) expects a hypothesis strategy"
                f" or a callable returning one, got {strategy!r}"
            )
        strategy = st.deferred(strategy)
    _STRATEGY_REGISTRY[type_] = strategy


def registered_strategy(type_: type) -> SearchStrategy | None:
    return _STRATEGY_REGISTRY.get(type_)


def strategy_for(type_: type) -> SearchStrategy:
    """The strategy for ``type_``: registered here, else hypothesis' resolution.

    Raises ``NoStrategyError`` when the type obviously cannot be built (a
    required constructor argument without a type hint); other resolution
    failures surface when hypothesis draws the first example.
    """
    strategy = _STRATEGY_REGISTRY.get(type_)
    if strategy is not None:
        return strategy
    if _has_hypothesis_registration(type_):
        return st.from_type(type_)
    reason = explain_unbuildable(type_)
    if reason is not None:
        raise NoStrategyError(no_strategy_message(type_, reason))
    return st.from_type(type_)


def no_strategy_message(type_: type, reason: str) -> str:
    name = getattr(type_, "__name__", "T")
    return (
        f"cannot build examples of {qualified_name(type_)}: {reason};"
        f" register one with loky_check.register_strategy({name}, <hypothesis strategy>)"
    )


def _has_hypothesis_registration(type_: type) -> bool:
    try:
        from hypothesis.strategies._internal import types as hypothesis_types
    except ImportError:  # private layout changed: let from_type decide
        return False
    lookup = getattr(hypothesis_types, "_global_type_lookup", {})
    return type_ in lookup


def explain_unbuildable(type_: type) -> str | None:
    """Why ``st.builds(type_)`` cannot work, or None when it looks buildable."""
    if inspect.isabstract(type_):
        return "it is abstract"
    try:
        signature = inspect.signature(type_)
    except (TypeError, ValueError):
        return None  # builtins and C types: hypothesis knows many of them
    try:
        hints = (
            typing.get_type_hints(type_.__init__)
            if "__init__" in _own_dicts(type_)
            else {}
        )
    except Exception:
        hints = {}
    for parameter in signature.parameters.values():
        if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            continue
        if parameter.default is not parameter.empty:
            continue
        annotated = (
            parameter.annotation is not parameter.empty or parameter.name in hints
        )
        if not annotated:
            return (
                f"parameter {parameter.name!r} of {type_.__qualname__}() is required"
                " and has no type hint"
            )
        hint = hints.get(parameter.name, parameter.annotation)
        if _mentions_callable(hint):
            # hypothesis invents functions closing over its own state (weakrefs):
            # no pickler carries them, so every reducer would seem to fail.
            return (
                f"parameter {parameter.name!r} of {type_.__qualname__}() is a Callable"
                " (hypothesis would invent functions holding its own unpicklable"
                " state)"
            )
    return None


def _mentions_callable(hint: Any) -> bool:
    from .targets import _mentions_callable as mentions

    try:
        return mentions(hint)
    except Exception:  # an odd hint: let hypothesis decide
        return False


def _own_dicts(type_: type) -> set[str]:
    names: set[str] = set()
    for klass in type_.__mro__[:-1]:
        names.update(klass.__dict__)
    return names
