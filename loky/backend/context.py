"""Start methods, multiprocessing contexts and ``cpu_count``.

Importing this module registers the ``loky`` and ``loky_init_main`` contexts
with ``multiprocessing``, so ``multiprocessing.get_context("loky")`` works and
a loky child reports ``multiprocessing.get_start_method() == "loky"``.

The ``cpu_count`` helpers are module globals looked up at call time, and they
read ``sys.platform``, ``os.cpu_count``, ``os.sched_getaffinity``,
``os.path.exists``, ``open`` and ``subprocess.run`` at call time, so that
callers (and tests) can monkeypatch any of them.
"""

from __future__ import annotations

import math
import os
import sys
import traceback
import warnings
from multiprocessing import context as mp_context
from multiprocessing.context import BaseContext

from .process import LokyInitMainProcess, LokyProcess

__all__ = [
    "START_METHODS",
    "cpu_count",
    "get_context",
    "set_start_method",
    "get_start_method",
    "LokyContext",
    "LokyInitMainContext",
]

# Windows' WaitForMultipleObjects limit, minus the handles the executor needs
# for itself (the stdlib's _MAX_WINDOWS_WORKERS).
_MAX_WINDOWS_WORKERS = 61

START_METHODS = ["loky", "loky_init_main", "spawn"]
if sys.platform != "win32":
    START_METHODS += ["fork", "forkserver"]

_DEFAULT_START_METHOD: str | None = None

# Physical core counts ("not found" included), keyed by None or the
# frozenset of allowed CPUs.
physical_cores_cache: dict[frozenset[int] | None, int | str] = {}


def get_context(method: str | None = None) -> BaseContext:
    """Return the context of ``method`` (default: the method chosen with
    :func:`set_start_method`, else ``"loky"``)."""
    method = method or _DEFAULT_START_METHOD or "loky"
    if method == "fork":
        # The warning is meant for the user calling get_context.
        warnings.warn(
            "`fork` start method should not be used with "
            "`loky` as it does not respect POSIX. Try using "
            "`spawn` or `loky` instead.",
            UserWarning,
            stacklevel=2,
        )
    try:
        return mp_context._default_context.get_context(method)
    except (ValueError, TypeError):
        raise ValueError(
            f"Unknown context '{method}'. Value should be in {START_METHODS}."
        ) from None


def set_start_method(method: str | None, force: bool = False) -> None:
    """Choose the default start method of :func:`get_context` (``None``
    with ``force=True`` resets it to ``"loky"``)."""
    global _DEFAULT_START_METHOD
    if _DEFAULT_START_METHOD is not None and not force:
        raise RuntimeError("context has already been set")
    if method is not None and method not in START_METHODS:
        # An explicit raise (not ``assert``) so that -O keeps the check.
        raise AssertionError(
            f"'{method}' is not a valid start_method. It should be in {START_METHODS}"
        )
    _DEFAULT_START_METHOD = method


def get_start_method() -> str | None:
    """Return the start method chosen with :func:`set_start_method`
    (``None`` until one is chosen)."""
    return _DEFAULT_START_METHOD


# ---------------------------------------------------------------------------
# cpu_count
# ---------------------------------------------------------------------------


def cpu_count(only_physical_cores: bool = False) -> int:
    """Return the number of CPUs the current process can use.

    The result is the minimum of: ``os.cpu_count()``, the size of the CPU
    affinity set, the CPU quota of the cgroup (v1 or v2), the
    ``LOKY_MAX_CPU_COUNT`` environment variable and, with
    ``only_physical_cores=True``, the number of physical cores (SMT siblings
    counted once). It is always at least 1.
    """
    os_cpu_count = os.cpu_count() or 1
    if sys.platform == "win32":
        # Above this limit the executor cannot wait on all worker sentinels.
        os_cpu_count = min(os_cpu_count, _MAX_WINDOWS_WORKERS)

    affinity_set = _cpu_count_affinity_set()
    cpu_count_affinity = os_cpu_count if affinity_set is None else len(affinity_set)
    cpu_count_cgroup = _cpu_count_cgroup(os_cpu_count)
    cpu_count_loky = _cpu_count_from_env(os_cpu_count)
    counts = [os_cpu_count, cpu_count_affinity, cpu_count_cgroup, cpu_count_loky]

    if only_physical_cores:
        cpu_set = affinity_set if sys.platform == "linux" else None
        cpu_count_physical, exception = _count_physical_cores(cpu_set)
        if cpu_count_physical == "not found":
            cpu_count_physical = os_cpu_count
            if exception is not None:
                # Only the first failure warns: later calls hit the cache.
                _warn_physical_cores_not_found(exception)
        counts.append(cpu_count_physical)

    return max(1, min(counts))


def _cpu_count_from_env(os_cpu_count: int) -> int:
    """``LOKY_MAX_CPU_COUNT`` as an int (``os_cpu_count`` when unset)."""
    value = os.environ.get("LOKY_MAX_CPU_COUNT")
    if value is None:
        return os_cpu_count
    try:
        return int(value)
    except ValueError as exc:
        # Keep int()'s own message ("invalid literal for int() ...") too.
        raise ValueError(
            f"LOKY_MAX_CPU_COUNT must be an integer number of CPUs, got {value!r}"
            f" ({exc})"
        ) from None


def _cpu_count_affinity_set() -> set[int] | None:
    """The set of CPUs this process may run on, or None if unknown."""
    sched_getaffinity = getattr(os, "sched_getaffinity", None)
    if sched_getaffinity is not None:
        try:
            return set(sched_getaffinity(0))
        except Exception:
            # Unsupported here (NotImplementedError, OSError, ...): try psutil.
            pass
    try:
        import psutil
    except ImportError:
        if sys.platform == "linux" and os.environ.get("LOKY_MAX_CPU_COUNT") is None:
            warnings.warn(
                "Failed to inspect CPU affinity constraints on this system. "
                "Please install psutil or explictly set LOKY_MAX_CPU_COUNT.",
                stacklevel=3,
            )
        return None
    try:
        process = psutil.Process()
        if hasattr(process, "cpu_affinity"):
            return set(process.cpu_affinity())
    except Exception:
        pass
    return None


def _read_file(path: str) -> str:
    """``open(path).read()``, closing the file afterwards.

    ``open`` may be replaced (callers monkeypatch it): anything with a
    ``read()`` method will do, a context manager or not.
    """
    f = open(path)
    try:
        return f.read()
    finally:
        close = getattr(f, "close", None)
        if close is not None:
            close()


def _read_text(path: str) -> str | None:
    """Contents of ``path``, or None if it cannot be read."""
    try:
        return _read_file(path)
    except (OSError, UnicodeDecodeError):
        return None


def _cpu_count_cgroup(os_cpu_count: int) -> int:
    """CPU count allowed by the cgroup CPU quota (``os_cpu_count`` when
    there is no limit)."""
    cpu_max_fname = "/sys/fs/cgroup/cpu.max"  # cgroup v2
    cfs_quota_fname = "/sys/fs/cgroup/cpu/cpu.cfs_quota_us"  # cgroup v1
    cfs_period_fname = "/sys/fs/cgroup/cpu/cpu.cfs_period_us"

    tokens: list[str] = []
    if os.path.exists(cpu_max_fname):
        tokens = (_read_text(cpu_max_fname) or "").split()
    if len(tokens) != 2:
        # No usable v2 file ("max" alone, empty, missing): try v1.
        if not (os.path.exists(cfs_quota_fname) and os.path.exists(cfs_period_fname)):
            return os_cpu_count
        quota_text = (_read_text(cfs_quota_fname) or "").strip()
        period_text = (_read_text(cfs_period_fname) or "").strip()
        tokens = [quota_text, period_text]

    quota_text, period_text = tokens
    if quota_text == "max":
        return os_cpu_count
    try:
        quota, period = int(quota_text), int(period_text)
    except ValueError:
        return os_cpu_count
    if quota > 0 and period > 0:
        return math.ceil(quota / period)
    return os_cpu_count


def _count_physical_cores(cpu_set=None) -> tuple[int | str, Exception | None]:
    """Return ``(count, None)`` or ``("not found", exception)``.

    Results are cached in ``physical_cores_cache``; a cache hit returns
    ``(value, None)``, so a failure is reported (with its exception) once.
    """
    key = None if cpu_set is None else frozenset(cpu_set)
    if key in physical_cores_cache:
        return physical_cores_cache[key], None

    try:
        if sys.platform == "linux":
            count = _count_physical_cores_linux(cpu_set)
        elif cpu_set is not None:
            raise NotImplementedError(
                "Counting physical cores within a CPU affinity set is only "
                f"supported on Linux, not on {sys.platform!r}"
            )
        elif sys.platform == "win32":
            count = _count_physical_cores_win32()
        elif sys.platform == "darwin":
            count = _count_physical_cores_sysctl("hw.physicalcpu")
        elif sys.platform.startswith("freebsd"):
            count = _count_physical_cores_sysctl("kern.smp.cores")
        else:
            raise NotImplementedError(f"unsupported platform: {sys.platform}")
        if count < 1:
            raise ValueError(f"found {count} physical cores < 1")
    except Exception as exc:
        physical_cores_cache[key] = "not found"
        return "not found", exc

    physical_cores_cache[key] = count
    return count, None


def _count_physical_cores_linux(cpu_set=None) -> int:
    """Distinct (physical id, core id) pairs in /proc/cpuinfo, restricted to
    the processors in ``cpu_set`` if given."""
    cpuinfo = _read_file("/proc/cpuinfo")
    cores = set()
    for block in cpuinfo.split("\n\n"):
        fields = {}
        for line in block.splitlines():
            key, sep, value = line.partition(":")
            if sep:
                fields[key.strip()] = value.strip()
        if "core id" not in fields:
            continue
        if cpu_set is not None:
            try:
                processor = int(fields.get("processor", ""))
            except ValueError:
                continue
            if processor not in cpu_set:
                continue
        cores.add((fields.get("physical id"), fields["core id"]))
    if not cores:
        raise ValueError("found 0 physical cores in /proc/cpuinfo (no 'core id')")
    return len(cores)


def _text(output) -> str:
    """A command's captured output as text (replaced ``subprocess.run``
    functions may return bytes, or None)."""
    if output is None:
        return ""
    if isinstance(output, bytes):
        return output.decode(errors="replace")
    return output


def _count_physical_cores_sysctl(name: str) -> int:
    import subprocess

    completed = subprocess.run(["sysctl", "-n", name], capture_output=True, text=True)
    # A failing sysctl prints nothing on stdout: int() raises ValueError.
    return int(_text(completed.stdout).strip())


def _count_physical_cores_win32() -> int:
    """Try ctypes, then PowerShell, then wmic."""
    errors = []
    for counter in (
        _count_physical_cores_win32_ctypes,
        _count_physical_cores_win32_powershell,
    ):
        try:
            return counter()
        except Exception as exc:
            # Counters may be replaced by mocks, which have no __name__.
            name = getattr(counter, "__name__", repr(counter))
            errors.append(f"{name}: {exc!r}")
    try:
        return _count_physical_cores_win32_wmic()
    except Exception as exc:
        errors.append(f"_count_physical_cores_win32_wmic: {exc!r}")
        raise RuntimeError(
            "could not count physical cores: " + "; ".join(errors)
        ) from exc


def _count_physical_cores_win32_ctypes() -> int:
    """GetLogicalProcessorInformationEx(RelationProcessorCore): one record
    per physical core."""
    import ctypes

    relation_processor_core = 0
    kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)
    func = kernel32.GetLogicalProcessorInformationEx
    func.restype = ctypes.c_int  # BOOL
    length = ctypes.c_ulong(0)
    func(relation_processor_core, None, ctypes.byref(length))
    if length.value == 0:
        raise OSError(ctypes.get_last_error(), "GetLogicalProcessorInformationEx")
    buffer = ctypes.create_string_buffer(length.value)
    if not func(relation_processor_core, buffer, ctypes.byref(length)):
        raise OSError(ctypes.get_last_error(), "GetLogicalProcessorInformationEx")
    # Variable-size records: DWORD Relationship, DWORD Size, then payload.
    count, offset = 0, 0
    while offset < length.value:
        size = int.from_bytes(buffer.raw[offset + 4 : offset + 8], "little")
        if size == 0:
            break
        count += 1
        offset += size
    return count


def _count_physical_cores_win32_powershell() -> int:
    """Sum of NumberOfCores over processors (one line per socket)."""
    import subprocess

    completed = subprocess.run(
        [
            "powershell.exe",
            "-NoProfile",
            "-Command",
            "(Get-CimInstance -ClassName Win32_Processor).NumberOfCores",
        ],
        capture_output=True,
        text=True,
        creationflags=subprocess.CREATE_NO_WINDOW,
    )
    stdout = _text(completed.stdout)
    lines = [line.strip() for line in stdout.splitlines() if line.strip()]
    if not lines:
        raise ValueError(f"unexpected PowerShell output: {stdout!r}")
    return sum(int(line) for line in lines)


def _count_physical_cores_win32_wmic() -> int:
    """Sum of NumberOfCores reported by ``wmic`` (CSV: Node,NumberOfCores)."""
    import subprocess

    completed = subprocess.run(
        ["wmic", "CPU", "Get", "NumberOfCores", "/Format:csv"],
        capture_output=True,
        text=True,
        creationflags=subprocess.CREATE_NO_WINDOW,
    )
    stdout = _text(completed.stdout)
    total = 0
    for line in stdout.splitlines():
        fields = line.strip().split(",")
        if len(fields) >= 2 and fields[-1].strip().isdigit():
            total += int(fields[-1])
    if total < 1:
        raise ValueError(f"unexpected wmic output: {stdout!r}")
    return total


def _warn_physical_cores_not_found(exc: BaseException) -> None:
    warnings.warn(
        "Could not find the number of physical cores for the "
        f"following reason:\n{exc}\n"
        "Returning the number of logical cores instead. You can "
        "silence this warning by setting LOKY_MAX_CPU_COUNT to "
        "the number of cores you want to use.",
        stacklevel=3,
    )
    traceback.print_exception(type(exc), exc, exc.__traceback__)


# ---------------------------------------------------------------------------
# Contexts
# ---------------------------------------------------------------------------


class LokyContext(BaseContext):
    """Context of the ``loky`` start method (fork+exec on POSIX)."""

    _name = "loky"
    Process = LokyProcess

    def cpu_count(self, only_physical_cores: bool = False) -> int:
        """Number of usable CPUs (see :func:`loky.backend.context.cpu_count`)."""
        return cpu_count(only_physical_cores=only_physical_cores)

    def Queue(self, maxsize: int = 0, reducers=None):
        """A queue whose items are pickled with loky's pickler."""
        from .queues import Queue

        return Queue(maxsize, reducers=reducers, ctx=self.get_context())

    def SimpleQueue(self, reducers=None):
        """A simple queue whose items are pickled with loky's pickler."""
        from .queues import SimpleQueue

        return SimpleQueue(reducers=reducers, ctx=self.get_context())

    if sys.platform != "win32":
        # loky's primitives: named semaphores tracked by loky's resource
        # tracker, usable by processes that do not share a fork.

        def Semaphore(self, value: int = 1):
            """A loky semaphore."""
            from .synchronize import Semaphore

            return Semaphore(value=value)

        def BoundedSemaphore(self, value: int = 1):
            """A loky bounded semaphore."""
            from .synchronize import BoundedSemaphore

            return BoundedSemaphore(value)

        def Lock(self):
            """A loky lock."""
            from .synchronize import Lock

            return Lock()

        def RLock(self):
            """A loky recursive lock."""
            from .synchronize import RLock

            return RLock()

        def Condition(self, lock=None):
            """A loky condition variable."""
            from .synchronize import Condition

            return Condition(lock)

        def Event(self):
            """A loky event."""
            from .synchronize import Event

            return Event()


class LokyInitMainContext(LokyContext):
    """Context of ``loky_init_main``: like ``loky``, but children re-run the
    parent's ``__main__`` module (as ``__mp_main__``), like ``spawn``."""

    _name = "loky_init_main"
    Process = LokyInitMainProcess


# A child's bootstrap forces its default context from
# _concrete_contexts[process._start_method]: registering here makes
# multiprocessing.get_start_method() report "loky" in loky children.
mp_context._concrete_contexts["loky"] = LokyContext()
mp_context._concrete_contexts["loky_init_main"] = LokyInitMainContext()
