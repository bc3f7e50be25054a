"""Worker initializers: validation and chaining with viztracer's own initializer.

When viztracer is tracing the parent at executor construction, workers must
start their own tracer; that initializer is chained after the user's one.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

__all__: list[str] = []


def _viztracer_init(init_kwargs: dict) -> None:
    """Start a VizTracer in the worker with the parent's settings."""
    from viztracer import VizTracer

    tracer = VizTracer(**init_kwargs)
    tracer.register_exit()
    tracer.start()


def _make_viztracer_initializer_and_initargs() -> tuple[Callable | None, tuple]:
    """Return ``(_viztracer_init, (kwargs,))`` if a viztracer tracer is enabled."""
    try:
        import viztracer

        tracer = viztracer.get_tracer()
        if tracer is not None and getattr(tracer, "enable", False):
            # Sampled now: stopping the tracer later only affects later executors.
            return _viztracer_init, (tracer.init_kwargs,)
    except ImportError:
        pass
    except Exception as e:
        warnings.warn(f"Unable to introspect viztracer state: {e}", stacklevel=2)
    return None, ()


class _ChainedInitializer:
    """Run several initializers in order, each with its own arguments."""

    def __init__(self, initializers: list[Callable]):
        self._initializers = initializers

    def __call__(self, *args: tuple) -> None:
        for initializer, initargs in zip(self._initializers, args, strict=True):
            initializer(*initargs)


def _chain_initializers(
    initializer_and_args: list[tuple[Callable | None, tuple]],
) -> tuple[Callable | None, tuple]:
    """Combine ``(initializer, initargs)`` pairs, dropping the ``None`` ones."""
    pairs = [(init, args) for init, args in initializer_and_args if init is not None]
    if not pairs:
        return None, ()
    if len(pairs) == 1:
        return pairs[0]
    initializers, initargs = zip(*pairs, strict=True)
    return _ChainedInitializer(list(initializers)), list(initargs)


def _prepare_initializer(
    initializer: Any, initargs: tuple
) -> tuple[Callable | None, Any]:
    """Validate the user's initializer and chain the tool initializers after it."""
    if initializer is not None and not callable(initializer):
        raise TypeError(f"initializer must be a callable, got: {initializer!r}")
    return _chain_initializers(
        [(initializer, initargs), _make_viztracer_initializer_and_initargs()]
    )
