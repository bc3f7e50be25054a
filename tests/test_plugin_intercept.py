"""What the plugin's interception records, observed directly (no inner session)."""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import sys
import threading
from multiprocessing.pool import ThreadPool

import pytest

from pytest_loky import intercept
from pytest_loky.plugin import _check_pool_call


def square(x):
    return x * x


@pytest.fixture
def recorded():
    """Install the patches with a recorder that keeps every observed call."""
    calls: list[intercept.PoolCall] = []
    intercept.install()
    previous = intercept.set_recorder(calls.append)
    try:
        yield calls
    finally:
        intercept.set_recorder(previous)
        intercept.uninstall()


def _line_of(marker: str) -> int:
    with open(__file__, encoding="utf-8") as source:
        for number, line in enumerate(source, start=1):
            if line.rstrip().endswith(f"# {marker}"):
                return number
    raise AssertionError(marker)


def test_executor_map_is_one_call_with_every_task(recorded) -> None:
    context = multiprocessing.get_context("fork")
    with concurrent.futures.ProcessPoolExecutor(
        max_workers=1, mp_context=context
    ) as pool:
        assert list(pool.map(square, iter([1, 2, 3]))) == [1, 4, 9]  # MAP-SITE
        assert pool.submit(square, 5).result() == 25
    # map's own submits (with _process_chunk) are not observed a second time
    assert [(c.pool, c.method) for c in recorded] == [
        ("concurrent.futures", "map"),
        ("concurrent.futures", "submit"),
    ]
    mapped, submitted = recorded
    assert mapped.fn is square and mapped.calls == [((1,), {}), ((2,), {}), ((3,), {})]
    assert (mapped.filename, mapped.lineno) == (__file__, _line_of("MAP-SITE"))
    assert mapped.picklers == ("pickle",)
    assert submitted.calls == [((5,), {})]


def test_multiprocessing_pool_calls_are_observed_thread_pools_are_not(recorded) -> None:
    with multiprocessing.get_context("fork").Pool(1) as pool:
        assert pool.apply_async(abs, (-3,)).get() == 3  # APPLY-SITE
        assert pool.starmap(pow, [(2, 3), (3, 2)]) == [8, 9]
        assert pool.apply(abs, (-4,)) == 4
    with ThreadPool(1) as threads:  # nothing crosses a process boundary
        assert threads.map(abs, [-1]) == [1]
    assert [(c.method, c.calls) for c in recorded] == [
        ("apply_async", [((-3,), {})]),
        ("starmap", [((2, 3), {}), ((3, 2), {})]),
        ("apply_async", [((-4,), {})]),
    ]
    assert recorded[0].lineno == _line_of("APPLY-SITE")


def test_no_recorder_means_no_observation() -> None:
    intercept.install()
    try:
        assert intercept.set_recorder(None) is None
        with ThreadPool(1) as threads:
            assert threads.apply(square, (3,)) == 9
        assert intercept.describe_callable(square) == f"{__name__}.square"
    finally:
        intercept.uninstall()
    assert not hasattr(
        concurrent.futures.ProcessPoolExecutor.submit, "_pytest_loky_wrapped"
    )


def _call(fn, rows, picklers=("pickle", "loky")) -> intercept.PoolCall:
    return intercept.PoolCall(
        pool="loky" if "loky" in picklers else "concurrent.futures",
        method="map",
        fn=fn,
        calls=[(row, {}) for row in rows],
        filename=__file__,
        lineno=1,
        picklers=picklers,
    )


def test_every_task_of_a_map_is_checked_when_one_is_not_plain_data() -> None:
    rows = [(1,), (2,), ({"lock": threading.Lock()},)]
    findings = _check_pool_call(_call(square, rows), "here:1")
    assert {(f.severity, f.argument, f.path, f.category) for f in findings} == {
        ("error", "args[0]", "x['lock']", "sync_primitive")
    }


def test_severity_follows_the_pool_pickler() -> None:
    def nested(x):
        return x

    loky_findings = _check_pool_call(_call(nested, [(1,)]), "here:1")
    assert {(f.severity, f.category) for f in loky_findings} == {
        ("warning", "local_function")
    }
    standard_findings = _check_pool_call(_call(nested, [(1,)], ("pickle",)), "here:1")
    assert {(f.severity, f.category) for f in standard_findings} == {
        ("error", "local_function")
    }


def test_plugin_module_imports_nothing_heavy_at_startup() -> None:
    import subprocess

    code = (
        "import sys, pytest, pytest_loky.plugin\n"
        "heavy = [m for m in ('loky', 'loky_check', 'psutil', 'cloudpickle', "
        "'pytest_loky.intercept') if m in sys.modules]\n"
        "print(heavy)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"
