"""loky's process backend: contexts, launchers, pickling, queues, locks.

Importing it registers the ``loky`` and ``loky_init_main`` contexts with
``multiprocessing`` and makes semaphores created by ``multiprocessing``'s
synchronisation primitives use loky-style names (``/loky-<pid>-<random>``).
"""

import os

# Import effects: the default pickler is chosen and the tracker client is
# instantiated (with its at-fork hook) but not launched.
from . import reduction, resource_tracker  # noqa: F401
from .context import get_context

__all__ = ["get_context"]


def _make_loky_semaphore_name() -> str:
    """Name for a stdlib semaphore: ``/loky-<pid>-<random>`` (short enough
    for macOS' 31-character limit)."""
    return f"/loky-{os.getpid()}-{next(_SemLock._rand)}"


try:
    from multiprocessing.synchronize import SemLock as _SemLock
except ImportError:  # no sem_open on this platform: nothing to rename
    pass
else:
    _SemLock._make_name = staticmethod(_make_loky_semaphore_name)
