"""Audit of loky's surface (loky_api.md §1, §7, §16, §19, §20): names
reachable from ``loky.backend``, and the joblib-style call patterns of §20
run end to end in a fresh interpreter."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
from test_conformance_namespace import SEMI_PUBLIC

import loky.backend
from loky.backend import context

# The names section 19 lists under "loky.backend / .context".
CONTEXT_NAMES = [
    name for name in SEMI_PUBLIC["loky.backend.context"] if name != "get_context"
]


@pytest.mark.parametrize("name", CONTEXT_NAMES)
def test_backend_exposes_the_context_names(name):
    # §19 lists them under "loky.backend / .context".
    assert getattr(loky.backend, name) is getattr(context, name)


def test_backend_context_names_follow_replacements(monkeypatch):
    def fake(cpu_set=None):
        return 3, None

    monkeypatch.setattr(context, "_count_physical_cores", fake)
    monkeypatch.setattr(context, "physical_cores_cache", {})
    assert loky.backend._count_physical_cores is fake
    assert loky.backend.physical_cores_cache is context.physical_cores_cache
    assert loky.backend.__all__ == ["get_context"]
    with pytest.raises(AttributeError, match="no_such_name"):
        loky.backend.no_such_name  # noqa: B018


JOBLIB_TASKS = """
import os

from loky import process_executor
from loky.backend import resource_tracker
from loky.process_executor import _ExceptionWithTraceback


def env_and_depth(_):
    return os.environ.get("OMP_NUM_THREADS"), process_executor._CURRENT_DEPTH


def failing(x):
    try:
        raise ValueError(f"boom {x}")
    except ValueError as e:
        return _ExceptionWithTraceback(e)


def make_file(folder):
    filename = os.path.join(folder, "data.bin")
    open(filename, "wb").close()
    resource_tracker.register(filename, "file")
    resource_tracker._resource_tracker.maybe_unlink(filename, "file")
    return filename


def block(event_path):
    import time

    open(event_path, "w").close()
    time.sleep(60)
"""

JOBLIB_FLOW = """
import os, shutil, tempfile, time

from loky import cpu_count, wrap_non_picklable_objects
from loky import process_executor
from loky.backend import resource_tracker
from loky.process_executor import (
    ShutdownExecutorError, TerminatedWorkerError, _ExceptionWithTraceback,
)
from loky.reusable_executor import _ReusablePoolExecutor

assert resource_tracker._resource_tracker._fd is None

unlinked = []


def unlink_file(filename):  # joblib's retrying replacement
    unlinked.append(filename)
    os.unlink(filename)


resource_tracker._CLEANUP_FUNCS["file"] = unlink_file


class Manager:
    def __init__(self):
        self.folder = tempfile.mkdtemp(prefix="loky_audit_surface_")
        resource_tracker.register(self.folder, "folder")

    def clean(self):
        resource_tracker.unregister(self.folder, "folder")
        shutil.rmtree(self.folder, ignore_errors=True)


class MemmappingExecutor(_ReusablePoolExecutor):
    @classmethod
    def get_memmapping_executor(cls, n_jobs, reuse, timeout=300, env=None):
        manager = Manager()
        executor, is_reused = super().get_reusable_executor(
            n_jobs, job_reducers={}, result_reducers={}, reuse=reuse,
            timeout=timeout, initializer=None, initargs=(), env=env,
        )
        if is_reused:
            manager.clean()
        else:
            executor._temp_folder_manager = manager
        return executor, is_reused

    def terminate(self, kill_workers=False):
        self.shutdown(kill_workers=kill_workers)
        with self._submit_resize_lock:
            self._temp_folder_manager.clean()

    def map(self, f, *args):
        return list(super().map(f, *args))


def retrieve(out):
    if isinstance(out, _ExceptionWithTraceback):
        rebuild, args = out.__reduce__()
        out = rebuild(*args)
    if isinstance(out, BaseException):
        raise out
    return out


if __name__ == "__main__":
    import tasks

    assert cpu_count(only_physical_cores=True) >= 1
    assert process_executor._CURRENT_DEPTH == 0
    resource_tracker.VERBOSE = False
    resource_tracker.ensure_running()
    env = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    ex, is_reused = MemmappingExecutor.get_memmapping_executor(2, True, env=env)
    assert type(ex) is MemmappingExecutor and not is_reused
    assert ex.map(tasks.env_and_depth, range(3)) == [("1", 1)] * 3
    again, is_reused = MemmappingExecutor.get_memmapping_executor(2, True, env=env)
    assert again is ex and is_reused
    assert ex.submit(wrap_non_picklable_objects(lambda: 5)).result() == 5

    try:
        retrieve(ex.submit(tasks.failing, 3).result())
    except ValueError as e:
        assert type(e.__cause__) is process_executor._RemoteTraceback
        assert "boom 3" in e.__cause__.tb
    else:
        raise AssertionError("no error")

    filename = ex.submit(tasks.make_file, ex._temp_folder_manager.folder).result()
    for _ in range(3000):  # the tracker process unlinks it, asynchronously
        if not os.path.exists(filename):
            break
        time.sleep(0.01)
    assert not os.path.exists(filename)

    started = os.path.join(ex._temp_folder_manager.folder, "started")
    future = ex.submit(tasks.block, started)
    while not os.path.exists(started):
        time.sleep(0.01)
    folder = ex._temp_folder_manager.folder
    ex.terminate(kill_workers=True)
    try:
        future.result()
    except ShutdownExecutorError:
        pass
    else:
        raise AssertionError("no ShutdownExecutorError")
    assert not os.path.exists(folder)

    ex2, is_reused = MemmappingExecutor.get_memmapping_executor(2, False, env=env)
    assert ex2 is not ex and not is_reused
    try:
        ex2.submit(os._exit, 3).result()
    except TerminatedWorkerError:
        pass
    else:
        raise AssertionError("no TerminatedWorkerError")
    ex2.terminate(kill_workers=True)
    print("ok")
"""


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX-only probe")
def test_joblib_call_patterns_in_a_fresh_interpreter(tmp_path):
    (tmp_path / "tasks.py").write_text(textwrap.dedent(JOBLIB_TASKS))
    script = tmp_path / "flow.py"
    script.write_text(textwrap.dedent(JOBLIB_FLOW))
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    env.pop("LOKY_PICKLER", None)
    result = subprocess.run(
        [sys.executable, "-W", "always", str(script)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env=env,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout == "ok\n"
    # No warning at all: no leaked folder or file, no stray warning.
    assert result.stderr == "", result.stderr


def test_cpu_count_files_read_through_any_replaced_open(monkeypatch):
    # §7: callers replace the builtin ``open``; ``open(path).read()`` is all
    # that is asked of what it returns (here: no context manager, no close).
    import builtins
    import types

    files = {
        "/proc/cpuinfo": (
            "processor\t: 0\nphysical id\t: 0\ncore id\t: 0\n\n"
            "processor\t: 1\nphysical id\t: 0\ncore id\t: 0\n\n"
            "processor\t: 2\nphysical id\t: 0\ncore id\t: 1\n"
        ),
        "/sys/fs/cgroup/cpu.max": "150000 100000\n",
    }
    real_open = builtins.open

    def fake_open(path, *args, **kwargs):
        if path in files:
            return types.SimpleNamespace(read=lambda: files[path])
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", fake_open)
    monkeypatch.setattr(os.path, "exists", lambda path: path in files)
    assert context._count_physical_cores_linux() == 2
    assert context._count_physical_cores_linux({0, 1}) == 1
    assert context._cpu_count_cgroup(8) == 2


def test_cpu_count_closes_the_files_it_opens(monkeypatch):
    import builtins

    opened = []
    real_open = builtins.open

    def recording_open(*args, **kwargs):
        f = real_open(*args, **kwargs)
        opened.append(f)
        return f

    monkeypatch.setattr(builtins, "open", recording_open)
    monkeypatch.setattr(context, "physical_cores_cache", {})
    if sys.platform == "linux":
        try:
            context._count_physical_cores_linux()
        except ValueError:  # no "core id" lines (some ARM machines)
            pass
    context._cpu_count_cgroup(4)
    context.cpu_count(only_physical_cores=True)
    assert all(f.closed for f in opened)
