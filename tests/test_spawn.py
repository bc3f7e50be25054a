"""Spawn preparation data and main-module handling, checked in real children
of scripts, ``-m`` modules and ``-c`` programs run in subprocesses."""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
import textwrap
import types
from multiprocessing import process, util

import pytest

from loky.backend import spawn
from loky.backend.process import AuthenticationKey

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX launcher")

BASE_KEYS = {
    "log_to_stderr",
    "authkey",
    "name",
    "sys_argv",
    "orig_dir",
    "dir",
    "sys_path",
    "tracker_fd",
    "mp_tracker_fd",
}


def fake_main(monkeypatch, **attributes):
    module = types.ModuleType("__main__")
    module.__spec__ = None
    for name, value in attributes.items():
        setattr(module, name, value)
    monkeypatch.setitem(sys.modules, "__main__", module)


def test_get_executable():
    assert spawn.get_executable() == sys.executable


def test_preparation_data_keys_without_main_module(monkeypatch):
    monkeypatch.setattr(util, "_logger", None)
    data = spawn.get_preparation_data("worker-1", init_main_module=False)
    assert set(data) == BASE_KEYS
    assert data["name"] == "worker-1"
    assert data["authkey"] == process.current_process().authkey
    assert isinstance(data["authkey"], AuthenticationKey)
    assert data["sys_argv"] == sys.argv
    assert data["dir"] == os.getcwd()
    assert data["orig_dir"] == process.ORIGINAL_DIR
    assert data["log_to_stderr"] is util._log_to_stderr


def test_preparation_data_starts_both_trackers():
    from multiprocessing.resource_tracker import _resource_tracker as mp_tracker

    from loky.backend.resource_tracker import _resource_tracker

    data = spawn.get_preparation_data("w", init_main_module=False)
    assert data["tracker_fd"] == _resource_tracker._fd is not None
    assert data["mp_tracker_fd"] == mp_tracker._fd is not None


def test_empty_sys_path_entry_becomes_the_original_dir(monkeypatch):
    monkeypatch.setattr(sys, "path", ["", "/some/where"])
    data = spawn.get_preparation_data("w", init_main_module=False)
    assert data["sys_path"] == [process.ORIGINAL_DIR, "/some/where"]
    assert sys.path == ["", "/some/where"]


def test_logging_configuration_is_passed(monkeypatch):
    import logging

    logger = logging.getLogger("test-loky-spawn-logger")
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("LOKY-TEST %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    monkeypatch.setattr(util, "_logger", logger)
    data = spawn.get_preparation_data("w", init_main_module=False)
    assert data["log_level"] == logging.INFO
    assert data["log_fmt"] == "LOKY-TEST %(message)s"
    logger.removeHandler(handler)


@pytest.mark.parametrize(
    "main_attributes, expected",
    [
        (
            {"__spec__": types.SimpleNamespace(name="pkg.mod")},
            {"init_main_from_name": "pkg.mod"},
        ),
        ({"__file__": "/abs/script.py"}, {"init_main_from_path": "/abs/script.py"}),
        ({}, {}),  # interactive session, -c program
    ],
)
def test_main_module_data(monkeypatch, main_attributes, expected):
    fake_main(monkeypatch, **main_attributes)
    data = spawn.get_preparation_data("w", init_main_module=True)
    assert {k: v for k, v in data.items() if k.startswith("init_main")} == expected
    data = spawn.get_preparation_data("w", init_main_module=False)
    assert not any(k.startswith("init_main") for k in data)


def test_relative_main_path_is_made_absolute(monkeypatch):
    fake_main(monkeypatch, __file__=os.path.join("sub", "..", "script.py"))
    data = spawn.get_preparation_data("w")
    assert data["init_main_from_path"] == os.path.join(
        process.ORIGINAL_DIR, "script.py"
    )


def test_starting_a_process_while_bootstrapping_is_an_error(monkeypatch):
    monkeypatch.setattr(process.current_process(), "_inheriting", True, raising=False)
    with pytest.raises(RuntimeError, match="bootstrapping phase") as excinfo:
        spawn.get_preparation_data("w")
    assert "if __name__ == '__main__':" in str(excinfo.value)


# --- real children of scripts run in subprocesses ----------------------------

CHILD_REPORT = """
import json, os, sys, logging
import multiprocessing
from multiprocessing import process, util

def report(path):
    main = sys.modules["__main__"]
    logger = util._logger
    info = {
        "main_name": main.__name__,
        "main_spec": getattr(getattr(main, "__spec__", None), "name", None),
        # multiprocessing always aliases __mp_main__ to __main__: a re-run
        # main is a distinct module object named __mp_main__.
        "mp_main": main.__name__ == "__mp_main__",
        "marker": getattr(main, "MARKER", None),
        "cwd": os.getcwd(),
        "orig_dir": process.ORIGINAL_DIR,
        "sys_path": sys.path,
        "argv": sys.argv,
        "start_method": multiprocessing.get_start_method(),
        "log_level": logger.getEffectiveLevel() if logger else None,
        "log_fmt": logger.handlers[0].formatter._fmt if logger and logger.handlers else None,
    }
    with open(path, "w") as f:
        json.dump(info, f)
"""


def run_script(tmp_path, body, args=(), **kwargs):
    """Run ``body`` (with CHILD_REPORT's ``report``) as a script; return the
    completed process and the child's report (None if it did not write it)."""
    script = tmp_path / "main_script.py"
    script.write_text(CHILD_REPORT + textwrap.dedent(body))
    report_path = tmp_path / "report.json"
    result = subprocess.run(
        [sys.executable, *args, str(script), str(report_path)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        **kwargs,
    )
    report = json.loads(report_path.read_text()) if report_path.exists() else None
    return result, report


def test_loky_does_not_rerun_an_unguarded_main(tmp_path):
    result, report = run_script(
        tmp_path,
        """
        from loky.backend import get_context
        MARKER = "set at import"
        print("main module ran")
        p = get_context("loky").Process(target=report, args=(sys.argv[1],))
        p.start()
        p.join()
        print("exitcode", p.exitcode)
        """,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    # Only the parent printed: the child did not re-run the script.
    assert result.stdout.split("\n") == ["main module ran", "exitcode 0", ""]
    assert report["main_spec"] == "loky.backend.popen_loky_posix"
    assert report["main_name"] == "__main__"
    assert report["mp_main"] is False
    assert report["marker"] is None
    assert report["start_method"] == "loky"
    assert result.stderr == ""


def test_loky_init_main_fails_on_an_unguarded_main(tmp_path):
    result, report = run_script(
        tmp_path,
        """
        from loky.backend import get_context
        p = get_context("loky_init_main").Process(target=report, args=(sys.argv[1],))
        p.start()
        p.join()
        print("exitcode", p.exitcode)
        """,
    )
    assert result.returncode == 0, result.stderr
    assert report is None
    assert "exitcode 1" in result.stdout
    # The child's failure is reported on its (inherited) stdout.
    assert "failed with traceback" in result.stdout
    assert "RuntimeError:" in result.stdout
    assert "bootstrapping phase" in result.stdout


GUARDED = """
from loky.backend import get_context
MARKER = "set at import"
if __name__ == "__main__":
    method = os.environ.get("TEST_START_METHOD", "loky_init_main")
    p = get_context(method).Process(target=report, args=(sys.argv[1],))
    p.start()
    p.join()
    print("exitcode", p.exitcode)
"""


def test_loky_init_main_reruns_a_guarded_script_as_mp_main(tmp_path):
    result, report = run_script(tmp_path, GUARDED)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "exitcode 0" in result.stdout
    assert report["main_name"] == "__mp_main__"
    assert report["mp_main"] is True
    assert report["marker"] == "set at import"
    assert report["start_method"] == "loky_init_main"
    assert result.stderr == ""


def test_loky_init_main_reruns_a_dash_m_module(tmp_path):
    (tmp_path / "guarded_mod.py").write_text(CHILD_REPORT + textwrap.dedent(GUARDED))
    report_path = tmp_path / "report.json"
    result = subprocess.run(
        [sys.executable, "-m", "guarded_mod", str(report_path)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(report_path.read_text())
    assert report["main_name"] == "__mp_main__"
    assert report["main_spec"] == "guarded_mod"
    assert report["marker"] == "set at import"


def test_loky_init_main_works_from_a_dash_c_program(tmp_path):
    report_path = tmp_path / "report.json"
    program = CHILD_REPORT + textwrap.dedent(
        """
        from loky.backend import get_context
        p = get_context("loky_init_main").Process(target=report, args=(sys.argv[1],))
        p.start()
        p.join()
        print("exitcode", p.exitcode)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", program, str(report_path)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "exitcode 0" in result.stdout
    report = json.loads(report_path.read_text())
    assert report["mp_main"] is False
    assert report["argv"] == ["-c", str(report_path)]


@pytest.mark.parametrize("method", ["loky", "loky_init_main"])
def test_sys_path_cwd_argv_and_logging_reach_the_child(tmp_path, method):
    extra = tmp_path / "extra_path"
    workdir = tmp_path / "workdir"
    extra.mkdir()
    workdir.mkdir()
    result, report = run_script(
        tmp_path,
        f"""
        import logging
        from loky.backend import get_context
        if __name__ == "__main__":
            logger = util.log_to_stderr(logging.DEBUG)
            logger.handlers[0].setFormatter(logging.Formatter("CHILDLOG %(message)s"))
            sys.path.insert(0, {str(extra)!r})
            out = os.path.abspath(sys.argv[1])
            os.chdir({str(workdir)!r})
            p = get_context({method!r}).Process(target=report, args=(out,))
            p.start()
            p.join()
            print("exitcode", p.exitcode)
        """,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "exitcode 0" in result.stdout
    assert report["cwd"] == str(workdir)
    assert report["orig_dir"] == str(tmp_path)
    assert report["sys_path"][0] == str(extra)
    assert report["argv"][0].endswith("main_script.py")
    assert report["log_level"] == 10
    assert report["log_fmt"] == "CHILDLOG %(message)s"
    # The child logs through the inherited configuration (DEBUG on stderr).
    assert "CHILDLOG child process calling self.run()" in result.stderr


def test_stdlib_spawn_still_works_from_a_script_importing_loky(tmp_path):
    result, report = run_script(
        tmp_path, GUARDED, env={**os.environ, "TEST_START_METHOD": "spawn"}
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert report["start_method"] == "spawn"
    assert report["main_name"] == "__mp_main__"


def test_multiprocessing_spawn_preparation_data_untouched():
    """loky's spawn module does not alter multiprocessing's own."""
    from multiprocessing import spawn as mp_spawn

    assert mp_spawn.get_preparation_data is not spawn.get_preparation_data
    assert "start_method" in mp_spawn.get_preparation_data("x")
    assert multiprocessing.get_start_method(allow_none=True) in (
        None,
        "fork",
        "spawn",
        "forkserver",
    )


def test_worker_unlinks_parent_shared_memory_silently(tmp_path):
    """Children inherit the stdlib resource tracker: shared memory made by
    the parent and unlinked by a worker is not reported as leaked."""
    script = tmp_path / "shm_script.py"
    script.write_text(
        textwrap.dedent(
            """
            from multiprocessing import shared_memory
            from loky.backend import get_context

            def unlink_it(name):
                shm = shared_memory.SharedMemory(name=name)
                shm.buf[0] = 42
                shm.close()
                shm.unlink()

            if __name__ == "__main__":
                shm = shared_memory.SharedMemory(create=True, size=16)
                p = get_context("loky").Process(target=unlink_it, args=(shm.name,))
                p.start()
                p.join()
                print("exitcode", p.exitcode, "value", shm.buf[0])
                shm.close()
            """
        )
    )
    result = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60
    )
    assert result.stdout.strip() == "exitcode 0 value 42"
    assert result.stderr == ""
