"""cpu_count: os count, affinity, cgroup quotas, LOKY_MAX_CPU_COUNT, physical
cores. The helpers are module globals read at call time: tests monkeypatch
them, ``open``, ``os.path.exists``, ``sys.platform`` and ``subprocess.run``."""

from __future__ import annotations

import builtins
import io
import os
import subprocess
import sys
import types
import warnings

import pytest

import loky
from loky.backend import context
from loky.backend.context import cpu_count

PHYSICAL_WARNING_START = (
    "Could not find the number of physical cores for the following reason:\n"
)
PHYSICAL_WARNING_END = (
    "Returning the number of logical cores instead. You can silence this warning "
    "by setting LOKY_MAX_CPU_COUNT to the number of cores you want to use."
)
AFFINITY_WARNING = (
    "Failed to inspect CPU affinity constraints on this system. Please install "
    "psutil or explictly set LOKY_MAX_CPU_COUNT."
)
CGROUP_V2 = "/sys/fs/cgroup/cpu.max"
CGROUP_V1_QUOTA = "/sys/fs/cgroup/cpu/cpu.cfs_quota_us"
CGROUP_V1_PERIOD = "/sys/fs/cgroup/cpu/cpu.cfs_period_us"


@pytest.fixture(autouse=True)
def clean_state(monkeypatch):
    monkeypatch.delenv("LOKY_MAX_CPU_COUNT", raising=False)
    monkeypatch.setattr(context, "physical_cores_cache", {})


def fake_files(monkeypatch, files):
    """Serve ``files`` (path -> text) through ``open``/``os.path.exists``;
    other cgroup files and /proc/cpuinfo do not exist."""
    real_open, real_exists = builtins.open, os.path.exists

    def is_faked(path):
        path = str(path)
        return (
            path in files
            or path.startswith("/sys/fs/cgroup")
            or path == ("/proc/cpuinfo")
        )

    def exists(path):
        return path in files if is_faked(path) else real_exists(path)

    def fake_open(path, *args, **kwargs):
        if is_faked(path):
            if path not in files:
                raise FileNotFoundError(2, "No such file or directory", path)
            return io.StringIO(files[path])
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os.path, "exists", exists)
    monkeypatch.setattr(builtins, "open", fake_open)


def fixed_machine(monkeypatch, n_cpus=8, affinity=None, cgroup=None):
    monkeypatch.setattr(os, "cpu_count", lambda: n_cpus)
    monkeypatch.setattr(context, "_cpu_count_affinity_set", lambda: affinity)
    if cgroup is not None:
        monkeypatch.setattr(context, "_cpu_count_cgroup", lambda n: cgroup)


def test_real_machine():
    n = cpu_count()
    assert 1 <= n <= os.cpu_count()
    if hasattr(os, "sched_getaffinity"):
        assert n <= len(os.sched_getaffinity(0))
    assert 1 <= cpu_count(only_physical_cores=True) <= n
    assert loky.cpu_count is cpu_count


def test_os_cpu_count_none_means_one(monkeypatch):
    fixed_machine(monkeypatch, n_cpus=None, cgroup=1000)
    monkeypatch.setattr(os, "cpu_count", lambda: None)
    assert cpu_count() == 1


def test_affinity_limits(monkeypatch):
    fixed_machine(monkeypatch, n_cpus=8, affinity={1, 3}, cgroup=8)
    assert cpu_count() == 2


def test_affinity_from_sched_getaffinity(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 2, 5}, raising=False)
    assert context._cpu_count_affinity_set() == {0, 2, 5}


def test_affinity_falls_back_to_psutil(monkeypatch):
    monkeypatch.delattr(os, "sched_getaffinity", raising=False)

    class FakeProcess:
        def cpu_affinity(self):
            return [0, 1, 2]

    monkeypatch.setitem(
        sys.modules, "psutil", types.SimpleNamespace(Process=FakeProcess)
    )
    assert context._cpu_count_affinity_set() == {0, 1, 2}


def test_missing_psutil_warns_on_linux_unless_max_cpu_count_is_set(monkeypatch):
    monkeypatch.delattr(os, "sched_getaffinity", raising=False)
    monkeypatch.setitem(sys.modules, "psutil", None)  # import psutil fails
    monkeypatch.setattr(sys, "platform", "linux")
    with pytest.warns(UserWarning) as record:
        assert context._cpu_count_affinity_set() is None
    assert [str(w.message) for w in record] == [AFFINITY_WARNING]

    monkeypatch.setenv("LOKY_MAX_CPU_COUNT", "3")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert context._cpu_count_affinity_set() is None

    monkeypatch.delenv("LOKY_MAX_CPU_COUNT")
    monkeypatch.setattr(sys, "platform", "darwin")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert context._cpu_count_affinity_set() is None


@pytest.mark.parametrize(
    "files, expected",
    [
        ({CGROUP_V2: "150000 100000\n"}, 2),
        ({CGROUP_V2: "100000 100000\n"}, 1),
        ({CGROUP_V2: "50000 100000\n"}, 1),
        ({CGROUP_V2: "max 100000\n"}, 8),
        ({CGROUP_V2: "0 100000\n"}, 8),
        ({CGROUP_V2: "-1 100000\n"}, 8),
        ({CGROUP_V2: "garbage here\n"}, 8),
        # Not exactly two tokens: cgroup v1 is consulted.
        (
            {CGROUP_V2: "max\n", CGROUP_V1_QUOTA: "250000", CGROUP_V1_PERIOD: "100000"},
            3,
        ),
        ({CGROUP_V2: "", CGROUP_V1_QUOTA: "250000", CGROUP_V1_PERIOD: "100000"}, 3),
        ({CGROUP_V2: "max\n"}, 8),
        ({CGROUP_V1_QUOTA: "400000\n", CGROUP_V1_PERIOD: "100000\n"}, 4),
        ({CGROUP_V1_QUOTA: "-1\n", CGROUP_V1_PERIOD: "100000\n"}, 8),
        # Both v1 files are needed.
        ({CGROUP_V1_QUOTA: "100000\n"}, 8),
        ({}, 8),
    ],
)
def test_cgroup_quota(monkeypatch, files, expected):
    fake_files(monkeypatch, files)
    assert context._cpu_count_cgroup(8) == expected
    fixed_machine(monkeypatch, n_cpus=8, affinity=None)
    assert cpu_count() == expected


@pytest.mark.parametrize(
    "value, expected", [("2", 2), ("0", 1), ("-3", 1), ("100", 8), (" 4 ", 4)]
)
def test_loky_max_cpu_count(monkeypatch, value, expected):
    fixed_machine(monkeypatch, n_cpus=8, affinity=None, cgroup=8)
    monkeypatch.setenv("LOKY_MAX_CPU_COUNT", value)
    assert cpu_count() == expected
    # Read at each call.
    monkeypatch.setenv("LOKY_MAX_CPU_COUNT", "1")
    assert cpu_count() == 1


@pytest.mark.parametrize("value", ["abc", "1.5", ""])
def test_malformed_loky_max_cpu_count_is_a_clear_error(monkeypatch, value):
    fixed_machine(monkeypatch, n_cpus=8, affinity=None, cgroup=8)
    monkeypatch.setenv("LOKY_MAX_CPU_COUNT", value)
    with pytest.raises(ValueError, match="LOKY_MAX_CPU_COUNT") as excinfo:
        cpu_count()
    assert repr(value) in str(excinfo.value)


def test_minimum_of_all_limits(monkeypatch):
    fixed_machine(monkeypatch, n_cpus=16, affinity=set(range(12)), cgroup=6)
    monkeypatch.setattr(context, "_count_physical_cores", lambda cpu_set: (4, None))
    assert cpu_count() == 6
    assert cpu_count(only_physical_cores=True) == 4
    monkeypatch.setenv("LOKY_MAX_CPU_COUNT", "3")
    assert cpu_count(only_physical_cores=True) == 3


def test_physical_cores_get_the_affinity_set_on_linux_only(monkeypatch):
    seen = []

    def count(cpu_set):
        seen.append(cpu_set)
        return 2, None

    fixed_machine(monkeypatch, n_cpus=8, affinity={0, 1, 2}, cgroup=8)
    monkeypatch.setattr(context, "_count_physical_cores", count)
    monkeypatch.setattr(sys, "platform", "linux")
    assert cpu_count(only_physical_cores=True) == 2
    monkeypatch.setattr(sys, "platform", "darwin")
    assert cpu_count(only_physical_cores=True) == 2
    assert seen == [{0, 1, 2}, None]


def test_windows_caps_at_max_windows_workers(monkeypatch):
    assert context._MAX_WINDOWS_WORKERS == 61
    fixed_machine(monkeypatch, n_cpus=128, affinity=None)
    monkeypatch.setattr(context, "_cpu_count_cgroup", lambda n: n)
    monkeypatch.setattr(sys, "platform", "win32")
    assert cpu_count() == 61


CPUINFO_2_SOCKETS_SMT = "\n\n".join(
    f"processor\t: {proc}\nmodel name\t: Fake CPU\nphysical id\t: {socket}\n"
    f"siblings\t: 4\ncore id\t\t: {core}\ncpu cores\t: 2"
    # 2 sockets x 2 cores x 2 threads; sockets reuse core ids 0 and 1.
    for proc, (socket, core) in enumerate(
        [(0, 0), (0, 1), (1, 0), (1, 1), (0, 0), (0, 1), (1, 0), (1, 1)]
    )
)


def test_physical_cores_from_proc_cpuinfo(monkeypatch):
    fake_files(monkeypatch, {"/proc/cpuinfo": CPUINFO_2_SOCKETS_SMT + "\n"})
    assert context._count_physical_cores_linux() == 4
    # Processors 0 and 4 are SMT siblings: they count once.
    assert context._count_physical_cores_linux({0, 4}) == 1
    assert context._count_physical_cores_linux({0, 2}) == 2
    assert context._count_physical_cores_linux({0, 1, 4, 5}) == 2

    monkeypatch.setattr(sys, "platform", "linux")
    assert context._count_physical_cores() == (4, None)
    assert context._count_physical_cores({0, 4}) == (1, None)
    assert context.physical_cores_cache == {None: 4, frozenset({0, 4}): 1}

    fixed_machine(monkeypatch, n_cpus=8, affinity={0, 4, 1}, cgroup=8)
    assert cpu_count() == 3
    assert cpu_count(only_physical_cores=True) == 2


def test_physical_cores_are_cached(monkeypatch):
    calls = []

    def count_linux(cpu_set=None):
        calls.append(cpu_set)
        return 3

    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setattr(context, "_count_physical_cores_linux", count_linux)
    assert context._count_physical_cores() == (3, None)
    assert context._count_physical_cores() == (3, None)
    assert context._count_physical_cores([1, 2]) == (3, None)
    assert context._count_physical_cores({2, 1}) == (3, None)
    assert calls == [None, [1, 2]]


def test_physical_cores_not_found_warns_once(monkeypatch, capsys):
    fake_files(monkeypatch, {"/proc/cpuinfo": "processor\t: 0\nmodel name\t: x\n"})
    monkeypatch.setattr(sys, "platform", "linux")
    fixed_machine(monkeypatch, n_cpus=6, affinity=None, cgroup=6)
    with pytest.warns(UserWarning) as record:
        assert cpu_count(only_physical_cores=True) == 6
    assert len(record) == 1
    message = str(record[0].message)
    assert message.startswith(PHYSICAL_WARNING_START)
    assert message.endswith(PHYSICAL_WARNING_END)
    assert "core id" in message  # the reason
    assert "Traceback" in capsys.readouterr().err
    assert context.physical_cores_cache == {None: "not found"}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert cpu_count(only_physical_cores=True) == 6
        assert context._count_physical_cores() == ("not found", None)
    assert capsys.readouterr().err == ""


def test_warn_physical_cores_not_found_prints_the_traceback(capsys):
    try:
        raise ValueError("no cores here")
    except ValueError as exc:
        error = exc
    with pytest.warns(UserWarning, match="no cores here"):
        context._warn_physical_cores_not_found(error)
    err = capsys.readouterr().err
    assert "Traceback" in err and "ValueError: no cores here" in err


def fake_run(outputs, calls):
    def run(cmd, **kwargs):
        calls.append((cmd, kwargs))
        return subprocess.CompletedProcess(cmd, 0, stdout=outputs[cmd[0]], stderr="")

    return run


@pytest.mark.parametrize(
    "platform, command, output, expected",
    [
        ("darwin", ["sysctl", "-n", "hw.physicalcpu"], "6\n", 6),
        ("freebsd14", ["sysctl", "-n", "kern.smp.cores"], "12\n", 12),
    ],
)
def test_physical_cores_bsd_like(monkeypatch, platform, command, output, expected):
    calls = []
    monkeypatch.setattr(sys, "platform", platform)
    monkeypatch.setattr(subprocess, "run", fake_run({"sysctl": output}, calls))
    assert context._count_physical_cores() == (expected, None)
    assert calls[0][0] == command
    # An affinity set is only supported on Linux.
    count, exc = context._count_physical_cores({0, 1})
    assert count == "not found" and isinstance(exc, NotImplementedError)


def test_physical_cores_unsupported_platform_and_zero(monkeypatch):
    monkeypatch.setattr(sys, "platform", "sunos5")
    count, exc = context._count_physical_cores()
    assert count == "not found" and isinstance(exc, NotImplementedError)

    context.physical_cores_cache.clear()
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setattr(context, "_count_physical_cores_linux", lambda cpu_set=None: 0)
    count, exc = context._count_physical_cores()
    assert count == "not found" and isinstance(exc, ValueError)


def test_windows_physical_cores_via_powershell(monkeypatch):
    calls = []
    monkeypatch.setattr(subprocess, "CREATE_NO_WINDOW", 0x08000000, raising=False)
    monkeypatch.setattr(
        subprocess, "run", fake_run({"powershell.exe": "4\n4\n"}, calls)
    )
    assert context._count_physical_cores_win32_powershell() == 8
    cmd, kwargs = calls[0]
    assert cmd == [
        "powershell.exe",
        "-NoProfile",
        "-Command",
        "(Get-CimInstance -ClassName Win32_Processor).NumberOfCores",
    ]
    assert kwargs["creationflags"] == 0x08000000


def test_windows_physical_cores_fallback_chain(monkeypatch):
    calls = []
    monkeypatch.setattr(sys, "platform", "win32")
    monkeypatch.setattr(subprocess, "CREATE_NO_WINDOW", 0x08000000, raising=False)
    monkeypatch.setattr(
        subprocess,
        "run",
        fake_run(
            {"powershell.exe": "", "wmic": "\nNode,NumberOfCores\nHOST,6\n"}, calls
        ),
    )

    def no_ctypes():
        raise OSError("no GetLogicalProcessorInformationEx here")

    monkeypatch.setattr(context, "_count_physical_cores_win32_ctypes", no_ctypes)
    # Empty PowerShell output is a failure: falls through to wmic.
    with pytest.raises(ValueError, match="PowerShell"):
        context._count_physical_cores_win32_powershell()
    assert context._count_physical_cores() == (6, None)
    assert [cmd[0] for cmd, _ in calls] == ["powershell.exe", "powershell.exe", "wmic"]

    monkeypatch.setattr(context, "_count_physical_cores_win32_ctypes", lambda: 5)
    context.physical_cores_cache.clear()
    assert context._count_physical_cores() == (5, None)


def test_helpers_are_looked_up_at_call_time(monkeypatch):
    fixed_machine(monkeypatch, n_cpus=8, affinity=None)
    monkeypatch.setattr("loky.backend.context._cpu_count_cgroup", lambda n: 5)
    assert cpu_count() == 5
    monkeypatch.setattr(
        "loky.backend.context._count_physical_cores",
        lambda cpu_set: ("not found", None),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        # A cached failure (no exception) uses the logical count, silently.
        assert cpu_count(only_physical_cores=True) == 5
