"""End-to-end tests of ``pytest --loky-picklecheck`` on small test projects.

Each test writes a project with pytester and runs pytest on it (in process,
or in a subprocess where xdist needs one) and checks what the user sees: the
summary section, the strict-mode failures, the exit codes and the JSON file.
Every inner project shuts down the pools it starts.
"""

from __future__ import annotations

import copyreg
import json

import pytest

APP = """
import threading


class Config:
    def __init__(self):
        self.name = "demo"
        self.lock = threading.Lock()


def square(x):
    return x * x


def work(x, cfg):
    return x
"""

# A loky pool shared by the tests of one inner session (one worker: cheap).
CONFTEST = """
import pytest
from loky import ProcessPoolExecutor


@pytest.fixture(scope="session")
def pool():
    executor = ProcessPoolExecutor(max_workers=1)
    yield executor
    executor.shutdown(wait=True)
"""

CLEAN_TESTS = """
def test_submit(pool):
    assert pool.submit(square, 3).result() == 9


def test_map(pool):
    assert list(pool.map(square, [1, 2, 3])) == [1, 4, 9]


def test_concurrent_futures():
    # Not "fork": the loky pool's threads are alive, and from Python 3.12 on
    # forking a multi-threaded process warns (DeprecationWarning) by itself.
    import multiprocessing

    spawn = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=spawn) as executor:
        assert list(executor.map(square, [1, 2])) == [1, 4]
"""

CALL_TESTS = """
def test_clean(pool):
    assert pool.submit(square, 3).result() == 9


def test_lambda(pool):
    assert pool.submit(lambda x: x + 1, 1).result() == 2  # SITE lambda


def test_lock_in_config(pool):
    future = pool.submit(work, 1, Config())  # SITE lock
    with pytest.raises(Exception):
        future.result()


def test_nested_function_in_map(pool):
    def bump(x):
        return x + 1

    assert list(pool.map(bump, [1, 2])) == [2, 3]  # SITE nested


def test_concurrent_futures():
    # spawn, not the default fork: forking this multi-threaded pytest process
    # (the loky pool's threads) can leave a child that outlives the session.
    spawn = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=spawn) as executor:
        future = executor.submit(work, 2, cfg=Config())  # SITE cf
        with pytest.raises(Exception):
            future.result()
        with pytest.raises(Exception):
            list(executor.map(lambda x: x, [1, 2]))  # SITE cf-lambda
"""

HEADER = "import concurrent.futures\nimport multiprocessing\n\nimport pytest\nfrom app import Config, square, work\n\n"

FAILING_TESTS = [
    "test_lambda",
    "test_lock_in_config",
    "test_nested_function_in_map",
    "test_concurrent_futures",
]


def _write_project(
    pytester: pytest.Pytester, tests: str, name: str = "test_calls"
) -> str:
    pytester.makepyfile(app=APP)
    pytester.makeconftest(CONFTEST)
    source = HEADER + tests
    pytester.makepyfile(**{name: source})
    return source


def _site(source: str, tag: str, name: str = "test_calls") -> str:
    """``file:line`` of the line marked ``# SITE tag``."""
    for number, line in enumerate(source.splitlines(), start=1):
        if line.endswith(f"# SITE {tag}"):
            return f"{name}.py:{number}"
    raise AssertionError(f"no SITE {tag}")


def _section(output: str) -> str:
    """The text of the terminal summary section 'loky picklecheck'."""
    start = output.index(" loky picklecheck ")
    end = output.find("short test summary info", start)
    return output[start : end if end != -1 else len(output)]


def _test_blocks(section: str) -> dict[str, str]:
    """Split the summary section into one text block per test id."""
    blocks: dict[str, str] = {}
    current = None
    for line in section.splitlines():
        if line.startswith("test_") and "::" in line:
            current = line.strip()
            blocks[current] = ""
        elif current is not None:
            blocks[current] += line + "\n"
    return blocks


# ---------------------------------------------------------------- report mode


def test_clean_calls_produce_no_findings_and_no_noise(
    pytester: pytest.Pytester,
) -> None:
    _write_project(pytester, CLEAN_TESTS)
    result = pytester.runpytest("--loky-picklecheck", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=3)
    assert result.ret == 0
    output = result.stdout.str()
    assert "loky picklecheck" not in output
    assert "warning" not in output.lower()


def test_report_mode_lists_each_finding_by_test_and_call_site(
    pytester: pytest.Pytester,
) -> None:
    source = _write_project(pytester, CALL_TESTS)
    result = pytester.runpytest("--loky-picklecheck", "-v", "-p", "no:cacheprovider")
    # report mode never changes an outcome
    result.assert_outcomes(passed=5)
    assert result.ret == 0
    section = _section(result.stdout.str())
    blocks = _test_blocks(section)
    assert set(blocks) == {f"test_calls.py::{name}" for name in FAILING_TESTS}

    lam = blocks["test_calls.py::test_lambda"]
    assert f"call site: {_site(source, 'lambda')}   loky submit" in lam
    assert "warning  fn" in lam and "[lambda]" in lam
    assert "wrap_non_picklable_objects" in lam

    lock = blocks["test_calls.py::test_lock_in_config"]
    assert (
        f"call site: {_site(source, 'lock')}   loky submit   function: app.work" in lock
    )
    assert "error    cfg  (args[1])   cfg.lock" in lock
    assert "_thread.lock  [sync_primitive]" in lock

    nested = blocks["test_calls.py::test_nested_function_in_map"]
    assert f"call site: {_site(source, 'nested')}   loky map" in nested
    assert "bump" in nested and "[local_function]" in nested

    cf = blocks["test_calls.py::test_concurrent_futures"]
    assert f"call site: {_site(source, 'cf')}   concurrent.futures submit" in cf
    assert "error    cfg  (kwargs['cfg'])   cfg.lock" in cf
    # standard pickle is this pool's pickler: what it cannot carry is an error here
    assert f"call site: {_site(source, 'cf-lambda')}   concurrent.futures map" in cf
    assert "error    fn   fn" in cf and "[lambda]" in cf


def test_json_file_holds_every_finding_with_test_and_call_site(
    pytester: pytest.Pytester,
) -> None:
    source = _write_project(pytester, CALL_TESTS)
    result = pytester.runpytest(
        "--loky-picklecheck", "--loky-picklecheck-json=out/findings.json", "-q"
    )
    assert result.ret == 0
    data = json.loads((pytester.path / "out" / "findings.json").read_text())
    assert data["schema"] == "loky-check/1"
    assert data["ok"] is False
    by_test = {}
    for finding in data["findings"]:
        by_test.setdefault(finding["test"], []).append(finding)
        assert {"severity", "argument", "path", "category", "remedy", "fix"} <= set(
            finding
        )
        assert {"carried_by", "wrap_fixes", "location", "stage", "type"} <= set(finding)
    assert set(by_test) == {f"test_calls.py::{name}" for name in FAILING_TESTS}
    (lock,) = by_test["test_calls.py::test_lock_in_config"]
    assert lock["call_site"] == _site(source, "lock")
    assert (lock["severity"], lock["argument"], lock["parameter"], lock["path"]) == (
        "error",
        "args[1]",
        "cfg",
        "cfg.lock",
    )
    assert lock["category"] == "sync_primitive"
    (lam,) = by_test["test_calls.py::test_lambda"]
    assert (lam["severity"], lam["category"], lam["call_site"]) == (
        "warning",
        "lambda",
        _site(source, "lambda"),
    )


# ---------------------------------------------------------------- strict mode


def test_strict_mode_fails_tests_with_findings_and_shows_the_report(
    pytester: pytest.Pytester,
) -> None:
    source = _write_project(pytester, CALL_TESTS)
    result = pytester.runpytest("--loky-picklecheck=strict", "--tb=short", "-q")
    result.assert_outcomes(passed=1, failed=4)
    assert result.ret == 1
    output = result.stdout.str()
    for name in FAILING_TESTS:
        assert f"FAILED test_calls.py::{name} - loky picklecheck (strict)" in output
    failures = output[
        output.index("= FAILURES =") : output.index(" loky picklecheck ==")
    ]
    assert "loky picklecheck (strict): 1 error in the calls" in failures
    assert "loky picklecheck (strict): 2 errors in the calls" in failures
    assert f"call site: {_site(source, 'lock')}" in failures
    assert "cfg.lock" in failures and "[lambda]" in failures


def test_unknown_modes_are_usage_errors(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_x="def test_x():\n    pass\n")
    result = pytester.runpytest("--loky-picklecheck=loud")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "unknown mode 'loud'" in result.stderr.str()

    result = pytester.runpytest("-o", "loky_picklecheck=sometimes")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "loky_picklecheck: unknown mode 'sometimes'" in result.stderr.str()

    pytester.makepyfile(
        test_x="import pytest\n\n@pytest.mark.loky_picklecheck('never')\ndef test_x():\n    pass\n"
    )
    result = pytester.runpytest()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "unknown mode" in result.stderr.str() and "test_x" in result.stderr.str()


def test_a_path_after_the_bare_option_is_a_test_path_not_a_mode(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(test_one="def test_one():\n    pass\n")
    pytester.makepyfile(test_two="def test_two():\n    assert False\n")
    # `pytest --loky-picklecheck test_one.py` means mode report, on that file only
    result = pytester.runpytest("--loky-picklecheck", "test_one.py")
    result.assert_outcomes(passed=1)
    result = pytester.runpytest("--loky-picklecheck", "test_one.py", "test_two.py")
    result.assert_outcomes(passed=1, failed=1)


def test_plugin_can_be_disabled(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_x="def test_x(assert_picklable):\n    pass\n")
    result = pytester.runpytest("-p", "no:pytest_loky")
    result.assert_outcomes(errors=1)
    assert "fixture 'assert_picklable' not found" in result.stdout.str()
    result = pytester.runpytest("-p", "no:pytest_loky", "--loky-picklecheck")
    assert result.ret == pytest.ExitCode.USAGE_ERROR


# ---------------------------------------------------------------- marker and ini

MARKED_TESTS = """
@pytest.mark.loky_picklecheck("report")
def test_marked_report(pool):
    assert pool.submit(lambda: 1).result() == 1


@pytest.mark.loky_picklecheck("off")
def test_marked_off(pool):
    assert pool.submit(lambda: 2).result() == 2


@pytest.mark.loky_picklecheck("strict")
def test_marked_strict(pool):
    assert pool.submit(lambda: 3).result() == 3


def test_unmarked(pool):
    assert pool.submit(lambda: 4).result() == 4
"""


def _outcomes(result) -> dict[str, str]:
    outcomes = {}
    for line in result.stdout.lines:
        for word in ("PASSED", "FAILED"):
            if line.startswith("test_calls.py::") and f" {word}" in line:
                outcomes[line.split()[0].split("::")[1]] = word
    return outcomes


def test_marker_overrides_ini_and_command_line(pytester: pytest.Pytester) -> None:
    _write_project(pytester, MARKED_TESTS)
    pytester.makeini("[pytest]\nloky_picklecheck = strict\n")
    result = pytester.runpytest("-v")
    assert _outcomes(result) == {
        "test_marked_report": "PASSED",
        "test_marked_off": "PASSED",
        "test_marked_strict": "FAILED",
        "test_unmarked": "FAILED",  # the ini's strict
    }
    section = _section(result.stdout.str())
    assert "test_marked_report" in section and "test_marked_off" not in section

    # the command line beats the ini, the marker beats both
    result = pytester.runpytest("-v", "--loky-picklecheck=report")
    assert _outcomes(result)["test_unmarked"] == "PASSED"
    assert _outcomes(result)["test_marked_strict"] == "FAILED"

    # with everything off, a marker alone turns the check on for its test
    result = pytester.runpytest("-v", "--loky-picklecheck=off")
    assert _outcomes(result) == {
        "test_marked_report": "PASSED",
        "test_marked_off": "PASSED",
        "test_marked_strict": "FAILED",
        "test_unmarked": "PASSED",
    }
    section = _section(result.stdout.str())
    assert "test_unmarked" not in section and "test_marked_report" in section


# ---------------------------------------------------------------- fixtures

FIXTURE_TESTS = """
import pickle
import threading


def test_picklable_call(assert_picklable):
    report = assert_picklable(square, 3)
    assert report.ok


def test_unpicklable_call(assert_picklable):
    assert_picklable(work, 1, Config())


def test_unpicklable_object(assert_picklable):
    assert_picklable({"jobs": [1, threading.Lock()]})


def test_executor_checks_calls(loky_executor):
    assert loky_executor.submit(square, 4).result() == 16
    with pytest.raises(pickle.PicklingError) as info:
        loky_executor.submit(work, 1, Config())
    assert "cfg.lock" in str(info.value)
    assert loky_executor.submit(square, 5).result() == 25


def test_executor_leftover_is_reported(loky_executor):
    import subprocess
    import sys

    subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
"""


def test_fixtures(pytester: pytest.Pytester) -> None:
    _write_project(pytester, FIXTURE_TESTS)
    result = pytester.runpytest("-v", "-p", "no:cacheprovider")
    assert _outcomes(result) == {
        "test_picklable_call": "PASSED",
        "test_unpicklable_call": "FAILED",
        "test_unpicklable_object": "FAILED",
        "test_executor_checks_calls": "PASSED",
        "test_executor_leftover_is_reported": "PASSED",  # then an error at teardown
    }
    result.assert_outcomes(passed=3, failed=2, errors=1)
    output = result.stdout.str()
    assert "error    cfg  (args[1])   cfg.lock" in output
    assert "obj['jobs'][1]" in output
    # The teardown error's own line (the short summary may repeat it, depending
    # on the terminal's width, so only lines that start with it are counted).
    leftover = [
        line
        for line in result.stdout.lines
        if line.startswith("loky_executor: left behind")
    ]
    assert len(leftover) == 1 and "worker process" in leftover[0]


# ---------------------------------------------------------------- reducers

GEO = """
import copyreg
import struct
from dataclasses import dataclass


@dataclass
class Point:
    x: float
    y: float


def reduce_point(point):
    # lossy on purpose: x goes through a 32-bit float
    x32 = struct.unpack("f", struct.pack("f", point.x))[0]
    return Point, (x32, point.y)


@dataclass
class Tile:
    row: int
    col: int


def reduce_tile(tile):
    return Tile, (tile.row, tile.col)


copyreg.pickle(Point, reduce_point)
copyreg.pickle(Tile, reduce_tile)
"""


@pytest.fixture
def restore_copyreg():
    """Inner sessions run in this process: forget the reducers they registered."""
    before = dict(copyreg.dispatch_table)
    yield
    for key in set(copyreg.dispatch_table) - set(before):
        del copyreg.dispatch_table[key]


def test_reducer_items(pytester: pytest.Pytester, restore_copyreg) -> None:
    pytester.makepyfile(geo=GEO)
    pytester.makeini("[pytest]\npythonpath = .\n")
    result = pytester.runpytest("--loky-reducers=geo", "-v", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, failed=1)
    output = result.stdout.str()
    assert "reducer[geo.Tile] PASSED" in output
    assert "reducer[geo.Point] FAILED" in output
    failure = output[output.index("= FAILURES =") :]
    assert "counterexample: Point(x=" in failure
    assert "shrunk" in failure
    assert "geo.reduce_point" in failure


def test_reducer_module_from_ini_and_bad_module(
    pytester: pytest.Pytester, restore_copyreg
) -> None:
    pytester.makepyfile(geo=GEO)
    pytester.makeini("[pytest]\npythonpath = .\nloky_reducers = geo\n")
    result = pytester.runpytest("-v", "-k", "Tile", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    assert "reducer[geo.Tile] PASSED" in result.stdout.str()
    result = pytester.runpytest("--loky-reducers=no_such_module")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "--loky-reducers: cannot import 'no_such_module'" in result.stderr.str()


# ---------------------------------------------------------------- xdist


def test_xdist_findings_from_every_worker_reach_the_summary(
    pytester: pytest.Pytester,
) -> None:
    source = _write_project(pytester, CALL_TESTS)
    other = HEADER + (
        "def test_other(pool):\n"
        "    assert pool.submit(lambda: 7).result() == 7  # SITE other\n"
    )
    pytester.makepyfile(test_other=other)
    # loadfile sends each of the two files to its own worker
    result = pytester.runpytest_subprocess(
        "-n",
        "2",
        "--dist",
        "loadfile",
        "-v",
        "--loky-picklecheck",
        "--loky-picklecheck-json=findings.json",
        "-p",
        "no:cacheprovider",
    )
    result.assert_outcomes(passed=6)
    workers = {}
    for line in result.stdout.lines:
        if line.startswith("[gw") and "PASSED" in line:
            workers[line.split()[-1].split("::")[0]] = line.split()[0]
    assert len(set(workers.values())) == 2, workers
    expected = {f"test_calls.py::{n}" for n in FAILING_TESTS} | {
        "test_other.py::test_other"
    }
    section = _section(result.stdout.str())
    assert set(_test_blocks(section)) == expected
    assert f"call site: {_site(source, 'lock')}" in section
    assert f"call site: {_site(other, 'other', 'test_other')}   loky submit" in section
    data = json.loads((pytester.path / "findings.json").read_text())
    assert {f["test"] for f in data["findings"]} == expected
