"""Start methods, contexts and their registration with multiprocessing,
import-time effects of loky, relocation of the package."""

from __future__ import annotations

import multiprocessing
import multiprocessing.context as mp_context
import os
import re
import shutil
import subprocess
import sys
import textwrap
import warnings

import pytest
from test_launch_targets import report_identity

import loky.backend
from loky.backend import context as loky_context
from loky.backend import get_context
from loky.backend.context import (
    START_METHODS,
    LokyContext,
    LokyInitMainContext,
    get_start_method,
    set_start_method,
)
from loky.backend.process import LokyInitMainProcess, LokyProcess

FORK_WARNING = (
    "`fork` start method should not be used with `loky` as it does not respect "
    "POSIX. Try using `spawn` or `loky` instead."
)


@pytest.fixture
def restore_start_method():
    saved = loky_context._DEFAULT_START_METHOD
    yield
    loky_context._DEFAULT_START_METHOD = saved


@pytest.fixture(scope="module", autouse=True)
def stop_forkserver():
    yield
    from multiprocessing import forkserver

    forkserver._forkserver._stop()


def test_start_methods():
    if sys.platform == "win32":
        assert START_METHODS == ["loky", "loky_init_main", "spawn"]
    else:
        assert START_METHODS == [
            "loky",
            "loky_init_main",
            "spawn",
            "fork",
            "forkserver",
        ]


def test_default_and_loky_contexts():
    ctx = get_context()
    assert isinstance(ctx, LokyContext)
    assert ctx.get_start_method() == "loky"
    assert ctx.Process is LokyProcess
    assert get_context("loky") is ctx
    assert loky.backend.get_context is get_context

    init_main = get_context("loky_init_main")
    assert isinstance(init_main, LokyInitMainContext)
    assert init_main.get_start_method() == "loky_init_main"
    assert init_main.Process is LokyInitMainProcess


@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_stdlib_contexts(method):
    ctx = get_context(method)
    assert ctx is multiprocessing.get_context(method)
    assert ctx.get_start_method() == method


def test_fork_context_warns():
    with pytest.warns(UserWarning) as record:
        ctx = get_context("fork")
    assert ctx is multiprocessing.get_context("fork")
    assert [str(w.message) for w in record] == [FORK_WARNING]


@pytest.mark.parametrize("method", ["foo", "LOKY", 3, ["loky"]])
def test_unknown_method_is_a_clear_error(method):
    expected = f"Unknown context '{method}'. Value should be in {START_METHODS}."
    with pytest.raises(ValueError) as excinfo:
        get_context(method)
    assert str(excinfo.value) == expected


def test_contexts_are_registered_with_multiprocessing():
    assert isinstance(mp_context._concrete_contexts["loky"], LokyContext)
    assert isinstance(
        mp_context._concrete_contexts["loky_init_main"], LokyInitMainContext
    )
    assert multiprocessing.get_context("loky") is get_context("loky")
    assert multiprocessing.get_context("loky_init_main") is get_context(
        "loky_init_main"
    )


@pytest.mark.usefixtures("restore_start_method")
def test_set_start_method():
    set_start_method(None, force=True)
    assert get_start_method() is None
    set_start_method("spawn")
    assert get_start_method() == "spawn"
    assert get_context() is multiprocessing.get_context("spawn")
    with pytest.raises(RuntimeError, match="^context has already been set$"):
        set_start_method("loky")
    set_start_method("loky_init_main", force=True)
    assert isinstance(get_context(), LokyInitMainContext)
    # Reset: back to the "loky" default.
    set_start_method(None, force=True)
    assert get_start_method() is None
    assert isinstance(get_context(), LokyContext)
    assert get_context().get_start_method() == "loky"
    # Independent of multiprocessing's own default.
    assert multiprocessing.get_start_method(allow_none=True) != "loky_init_main"


@pytest.mark.usefixtures("restore_start_method")
@pytest.mark.parametrize("bad", ["foo", "Loky", ""])
def test_set_start_method_rejects_unknown_methods(bad):
    set_start_method(None, force=True)
    with pytest.raises(AssertionError, match="start_method"):
        set_start_method(bad)
    assert get_start_method() is None


@pytest.mark.usefixtures("restore_start_method")
@pytest.mark.parametrize("method", START_METHODS)
def test_children_of_the_default_context_report_its_method(method):
    set_start_method(method, force=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the fork warning
        ctx = get_context()
    r, w = multiprocessing.Pipe(duplex=False)
    p = ctx.Process(target=report_identity, args=(w,))
    p.start()
    w.close()
    info = r.recv()
    p.join()
    assert info["start_method"] == method


def test_loky_context_factories():
    from loky.backend import queues, synchronize

    ctx = get_context("loky")
    assert ctx.cpu_count() == loky_context.cpu_count()
    assert ctx.cpu_count(only_physical_cores=True) == loky_context.cpu_count(
        only_physical_cores=True
    )
    q = ctx.SimpleQueue()
    try:
        assert isinstance(q, queues.SimpleQueue)
    finally:
        q.close()
    q = ctx.Queue(maxsize=3, reducers={})
    try:
        assert isinstance(q, queues.Queue)
        assert q._maxsize == 3
    finally:
        q.close()
        q.join_thread()
    if sys.platform != "win32":
        assert isinstance(ctx.Lock(), synchronize.Lock)
        assert isinstance(ctx.RLock(), synchronize.RLock)
        assert isinstance(ctx.Semaphore(2), synchronize.Semaphore)
        assert isinstance(ctx.BoundedSemaphore(2), synchronize.BoundedSemaphore)
        assert isinstance(ctx.Condition(), synchronize.Condition)
        assert isinstance(ctx.Event(), synchronize.Event)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/dev/shm")
def test_stdlib_semaphores_get_loky_names():
    name = multiprocessing.synchronize.SemLock._make_name()
    assert re.fullmatch(rf"/loky-{os.getpid()}-\w+", name), name
    lock = multiprocessing.get_context("spawn").Lock()
    semaphore_name = lock._semlock.name
    assert semaphore_name.startswith(f"/loky-{os.getpid()}-")
    assert os.path.exists(f"/dev/shm/sem.{semaphore_name[1:]}")
    del lock  # its finalizer unlinks the semaphore
    assert not os.path.exists(f"/dev/shm/sem.{semaphore_name[1:]}")


def run_python(code, args=(), extra=(), **kwargs):
    return subprocess.run(
        [sys.executable, *args, "-c", textwrap.dedent(code), *extra],
        capture_output=True,
        text=True,
        timeout=60,
        **kwargs,
    )


def test_import_loky_starts_no_process_and_no_thread():
    result = run_python(
        """
        import threading, warnings
        warnings.simplefilter("error")
        import multiprocessing.context, multiprocessing.synchronize
        import psutil
        import loky
        import loky.backend.context, loky.backend.utils
        from loky.backend import resource_tracker
        assert threading.active_count() == 1, threading.enumerate()
        assert psutil.Process().children() == []
        assert resource_tracker._resource_tracker._fd is None
        assert "loky" in multiprocessing.context._concrete_contexts
        assert "loky_init_main" in multiprocessing.context._concrete_contexts
        assert multiprocessing.synchronize.SemLock._make_name().startswith("/loky-")
        import sys
        # The child's entry point must not be imported by the package.
        assert "loky.backend.popen_loky_posix" not in sys.modules
        print("ok")
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
    assert result.stderr == ""


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX launcher")
def test_relocated_package_starts_children_under_its_own_name(tmp_path):
    """Vendored as ``vendor_pkg.externals.loky`` (like joblib does), the
    launcher runs the vendored copy: plain ``loky`` is never imported."""
    import loky

    target = tmp_path / "vendor_pkg" / "externals" / "loky"
    shutil.copytree(
        os.path.dirname(loky.__file__),
        target,
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    for init in (tmp_path / "vendor_pkg", tmp_path / "vendor_pkg" / "externals"):
        (init / "__init__.py").write_text("")
    script = tmp_path / "run_vendored.py"
    script.write_text(
        textwrap.dedent(
            """
            import sys
            import multiprocessing

            def child_modules(conn):
                conn.send(sorted(m for m in sys.modules if "loky" in m.split(".")[0]))
                conn.close()

            if __name__ == "__main__":
                from vendor_pkg.externals.loky.backend import get_context
                r, w = multiprocessing.Pipe(duplex=False)
                p = get_context("loky").Process(target=child_modules, args=(w,))
                p.start()
                w.close()
                modules = r.recv()
                p.join()
                assert p.exitcode == 0, p.exitcode
                assert "loky" not in sys.modules, "parent imported plain loky"
                print(modules)
            """
        )
    )
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env=env,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    # No module of a top-level "loky" package in the child.
    assert "'loky'" not in result.stdout
    assert "'loky." not in result.stdout


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX launcher")
def test_children_get_the_parents_interpreter_flags(tmp_path):
    result = run_python(
        """
        import multiprocessing, sys
        sys.path.insert(0, sys.argv[1])
        from loky.backend.process import LokyProcess
        from test_launch_targets import report_flags
        r, w = multiprocessing.Pipe(duplex=False)
        p = LokyProcess(target=report_flags, args=(w,))
        p.start()
        w.close()
        print(r.recv())
        p.join()
        """,
        args=("-E",),
        extra=(os.path.dirname(__file__),),
    )
    assert result.returncode == 0, result.stderr
    assert "'ignore_environment': 1" in result.stdout
    assert result.stderr == ""


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX launcher")
def test_launcher_entry_point_rejects_bad_arguments():
    for args in ([], ["--pipe", "x"], ["--bogus", "1"]):
        result = subprocess.run(
            [sys.executable, "-m", "loky.backend.popen_loky_posix", *args],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 1
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("loky.backend.popen_loky_posix:")
