"""loky's process backend: contexts, launchers, pickling, queues, locks.

Importing it registers the ``loky`` and ``loky_init_main`` contexts with
``multiprocessing`` and makes semaphores created by ``multiprocessing``'s
synchronisation primitives use loky-style names (``/loky-<pid>-<random>``).
"""

import os

from . import context as _context

# Import effects: the default pickler is chosen and the tracker client is
# instantiated (with its at-fork hook) but not launched.
from . import reduction, resource_tracker  # noqa: F401
from .context import get_context

__all__ = ["get_context"]

# The other semi-public names of ``.context`` are also reachable from here
# (``loky.backend.cpu_count``, ...). They are looked up in ``.context`` at
# access time, so a value replaced there (by a test or a caller) is the one
# seen here too.
_CONTEXT_NAMES = frozenset(
    [
        "START_METHODS",
        "_MAX_WINDOWS_WORKERS",
        "cpu_count",
        "set_start_method",
        "get_start_method",
        "LokyContext",
        "LokyInitMainContext",
        "physical_cores_cache",
        "_cpu_count_affinity_set",
        "_cpu_count_cgroup",
        "_count_physical_cores",
        "_count_physical_cores_linux",
        "_count_physical_cores_win32",
        "_count_physical_cores_win32_ctypes",
        "_count_physical_cores_win32_powershell",
        "_warn_physical_cores_not_found",
    ]
)


def __getattr__(name: str):
    if name in _CONTEXT_NAMES:
        return getattr(_context, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
