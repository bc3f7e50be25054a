"""loky's Future: a ``concurrent.futures.Future`` whose callbacks cannot kill
the thread that runs them.

Done-callbacks of executor futures run in the executor manager thread. The
stdlib only catches ``Exception`` around them, so a callback raising
``SystemExit`` (or any other ``BaseException``) would end that thread and leave
every other future pending for ever. Here any ``BaseException`` is logged and
the remaining callbacks still run.
"""

from __future__ import annotations

from concurrent.futures._base import LOGGER
from concurrent.futures._base import Future as _BaseFuture

__all__ = ["Future"]


class Future(_BaseFuture):
    """A ``concurrent.futures.Future`` whose done-callbacks may raise anything."""

    def _invoke_callbacks(self) -> None:
        for callback in self._done_callbacks:
            try:
                callback(self)
            except BaseException:
                LOGGER.exception(f"exception calling callback for {self!r}")
