"""Audit of the executor's check mode (toolkit spec section 6): demanding-user cases.

A warnings filter that turns ``LokyPicklingWarning`` into an exception makes the
check raise from ``submit()`` / ``map()``: the call does not proceed, so nothing
is queued (not even the clean items of a ``map()`` before the bad one), the
executor stays usable, and the next call at the same site raises again instead
of proceeding silently.
"""

from __future__ import annotations

import asyncio
import gc
import inspect
import pickle
import threading
import warnings

import pytest
from _helpers import run_python

import loky
from loky.backend import reduction
from loky_check import LokyPicklingWarning, PicklingCheckError
from loky_check.runtime import SubmitChecker


def identity(x):
    return x


def call_with_lock(checker, lock):
    return checker.check_submit(identity, (lock,), {})


def submit_lock(executor, lock):
    return executor.submit(identity, lock)


def submit_lambda(executor):
    return executor.submit(identity, lambda: 1)


def numbers_then(bad, count=6, at=4):
    for i in range(count):
        yield bad if i == at else i


@pytest.fixture(scope="module")
def warn_executor():
    executor = loky.ProcessPoolExecutor(1, pickle_check="warn")
    try:
        yield executor
    finally:
        executor.shutdown(wait=True)


def test_warning_raised_by_a_filter_is_raised_again_at_the_same_site():
    checker = SubmitChecker("warn")
    lock = threading.Lock()
    with warnings.catch_warnings():
        warnings.simplefilter("error", LokyPicklingWarning)
        for _ in range(2):
            with pytest.raises(LokyPicklingWarning):
                call_with_lock(checker, lock)
    # Once the warning is let through, it is still given exactly once.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            call_with_lock(checker, lock)
    assert len([w for w in caught if w.category is LokyPicklingWarning]) == 1


def test_warn_under_an_error_filter_queues_nothing_and_stays_usable(warn_executor):
    lock = threading.Lock()
    queued = warn_executor._queue_count
    with warnings.catch_warnings():
        warnings.simplefilter("error", LokyPicklingWarning)
        for _ in range(2):
            with pytest.raises(LokyPicklingWarning):
                submit_lock(warn_executor, lock)
        # map(): the bad item is found before any clean item is queued
        for _ in range(2):
            with pytest.raises(LokyPicklingWarning):
                warn_executor.map(identity, numbers_then(lock))
    assert warn_executor._queue_count == queued
    assert warn_executor._pickle_checker._prechecked == {}
    assert warn_executor.submit(identity, 7).result(timeout=60) == 7
    assert list(warn_executor.map(identity, range(3))) == [0, 1, 2]


def test_wrap_under_an_error_filter_does_not_wrap_silently_afterwards():
    with loky.ProcessPoolExecutor(1, pickle_check="wrap") as executor:
        queued = executor._queue_count
        with warnings.catch_warnings():
            warnings.simplefilter("error", LokyPicklingWarning)
            for _ in range(2):
                with pytest.raises(LokyPicklingWarning, match="wrapped"):
                    submit_lambda(executor)
        assert executor._queue_count == queued
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for _ in range(2):
                assert callable(submit_lambda(executor).result(timeout=60))
        texts = [str(w.message) for w in caught if w.category is LokyPicklingWarning]
        assert len(texts) == 1 and "wrapped" in texts[0]


@pytest.mark.parametrize("mode", ["warn", "error", "wrap"])
def test_map_on_a_shut_down_executor_is_the_usual_error_and_no_check(mode):
    executor = loky.ProcessPoolExecutor(1, pickle_check=mode)
    executor.shutdown(wait=True)
    lock = threading.Lock()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(RuntimeError, match="after shutdown") as info:
            executor.map(identity, [1, lock, lambda: 1])
        with pytest.raises(RuntimeError, match="after shutdown"):
            executor.submit(identity, lock)
    assert not isinstance(info.value, pickle.PicklingError)
    assert [w for w in caught if w.category is LokyPicklingWarning] == []
    del info
    gc.collect()
    assert executor._pickle_checker._prechecked == {}


def test_map_checks_every_item_of_a_generator_before_queueing():
    error = loky.ProcessPoolExecutor(1, pickle_check="error")
    try:
        lock = threading.Lock()
        queued = error._queue_count
        items = (lock if i == 500 else i for i in range(1000))
        with pytest.raises(PicklingCheckError) as info:
            error.map(identity, items, chunksize=7)
        assert error._queue_count == queued
        assert info.value.report.findings[0].category == "sync_primitive"
        assert error._pickle_checker._prechecked == {}
        assert list(error.map(identity, range(20), chunksize=3)) == list(range(20))
    finally:
        error.shutdown(wait=True)


def _notes(exc):
    return getattr(exc, "__notes__", [])


def test_a_map_error_names_the_first_item_with_a_finding():
    error = loky.ProcessPoolExecutor(1, pickle_check="error")
    try:
        lock = threading.Lock()
        items = [
            {"v": i, "lock": lock} if i in (500, 900) else {"v": i} for i in range(1000)
        ]
        with pytest.raises(PicklingCheckError) as info:
            error.map(identity, items, chunksize=7)
        assert "map(): item 500 (counting from 0) is the first with a finding." in (
            _notes(info.value)
        )
        # Worked out per call, not cached with the verdict of the site.
        items[500] = {"v": 500}
        for _ in range(2):
            with pytest.raises(PicklingCheckError) as info:
                error.map(identity, items, chunksize=7)
            assert "map(): item 900 (counting from 0) is the first with a finding." in (
                _notes(info.value)
            )
        # submit() of the same culprit: no map line
        with pytest.raises(PicklingCheckError) as info:
            error.submit(identity, lock)
        assert not any(note.startswith("map():") for note in _notes(info.value))
    finally:
        error.shutdown(wait=True)


def test_a_map_warning_names_the_first_item_with_a_finding(warn_executor):
    items = [1, 2, lambda: 3, 4]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        list(warn_executor.map(str, items, chunksize=2))
    [warning] = [w for w in caught if issubclass(w.category, LokyPicklingWarning)]
    text = str(warning.message)
    assert text.endswith(
        "\nmap(): item 2 (counting from 0) is the first with a finding."
    )


class Guarded:
    """Holds a lock; the executor's job reducer sends only its value."""

    def __init__(self, value):
        self.value = value
        self.lock = threading.Lock()

    def read(self):
        return self.value


def _rebuild_guarded(value):
    return Guarded(value)


def _reduce_guarded(obj):
    return _rebuild_guarded, (obj.value,)


def values_of(items, callback=None):
    return [item.value for item in items]


def test_job_reduced_object_inside_a_container_is_not_a_culprit(restore_loky_pickler):
    reducers = {Guarded: _reduce_guarded}
    with loky.ProcessPoolExecutor(
        1, pickle_check="error", job_reducers=reducers
    ) as executor:
        # A lambda sends the call down the diagnosis path; the lock inside the
        # reduced object (which the job reducer never pickles) is no finding.
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            future = executor.submit(values_of, [Guarded(3)], lambda: 0)
            method = executor.submit(Guarded(4).read)
        assert future.result(timeout=60) == [3]
        assert method.result(timeout=60) == 4
        reports = [
            w.message.report for w in caught if w.category is LokyPicklingWarning
        ]
        assert [f.category for r in reports for f in r.findings] == ["lambda"]
        reduction.set_loky_pickler("pickle")
        with pytest.raises(PicklingCheckError) as info:
            executor.submit(values_of, ({"k": [Guarded(1)]},), lambda: 0)
        assert [f.category for f in info.value.report.findings] == ["lambda"]


def absorb(a, *rest, **opts):
    return a


def submit_at_one_site(executor, how, culprit):
    method, args, kwargs = {
        "positional": ("submit", (1, 2, culprit), {}),
        "keyword": ("submit", (1,), {"k": culprit}),
        "map": ("map", ([1], [culprit]), {}),
    }[how]
    return getattr(executor, method)(absorb, *args, **kwargs)  # one call site


def test_one_site_names_each_argument_a_culprit_failed_in():
    lock = threading.Lock()
    with loky.ProcessPoolExecutor(1, pickle_check="error") as executor:
        seen = []
        for how in ["positional", "keyword", "map", "positional"]:
            with pytest.raises(PicklingCheckError) as info:
                submit_at_one_site(executor, how, lock)
            seen += [(f.argument, f.path) for f in info.value.report.findings]
    assert seen == [
        ("args[2]", "rest[1]"),
        ("kwargs['k']", "opts['k']"),
        ("args[1]", "rest[0]"),
        ("args[2]", "rest[1]"),
    ]


def first(x, lock=None):
    return x


def second(x, callback=None):
    return x


def launch(executor, fn, *args):
    return executor.submit(fn, *args)  # one call site for every function


def test_one_site_names_each_function_it_submits():
    # Under loky's default pickler a lambda is a portability warning: the
    # call proceeds, and the verdict cached for ``first`` must not stand for
    # ``second`` (other name, other parameter) at the same call site.
    culprit = lambda x: x  # noqa: E731
    with loky.ProcessPoolExecutor(1, pickle_check="warn") as executor:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for fn in [first, second, first, second]:
                assert launch(executor, fn, [1], culprit).result(timeout=60) == [1]
    reports = [w.message.report for w in caught if w.category is LokyPicklingWarning]
    assert [(r.target, [f.path for f in r.findings]) for r in reports] == [
        (f"{__name__}:first", ["lock"]),
        (f"{__name__}:second", ["callback"]),
    ]


class Counted:
    """Counts how many times it is pickled (in this process)."""

    reductions = 0

    def __init__(self, data=b""):
        self.data = data

    def __reduce__(self):
        type(self).reductions += 1
        return Counted, (self.data,)


def size_of(counted):
    return len(counted.data)


@pytest.mark.parametrize("mode", ["warn", "error", "wrap"])
def test_map_pickles_each_item_once_in_every_mode(mode):
    with loky.ProcessPoolExecutor(1, pickle_check=mode) as executor:
        Counted.reductions = 0
        items = [Counted(b"x" * n) for n in range(5)]
        assert list(executor.map(size_of, items, chunksize=2)) == list(range(5))
        assert Counted.reductions == 5
        assert executor._pickle_checker._prechecked == {}


async def run_in_loop(executor, lock):
    loop = asyncio.get_running_loop()
    with pytest.raises(pickle.PicklingError):
        await loop.run_in_executor(executor, identity, lock)  # the user's line


def test_run_in_executor_warning_points_at_the_users_line(warn_executor):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        asyncio.run(run_in_loop(warn_executor, threading.Lock()))
    [warning] = [w for w in caught if w.category is LokyPicklingWarning]
    assert warning.filename == __file__
    source = inspect.getsource(run_in_loop).splitlines()
    line = next(i for i, text in enumerate(source) if "the user's line" in text)
    assert warning.lineno == run_in_loop.__code__.co_firstlineno + line


@pytest.mark.parametrize("mode", ["warn", "wrap", "off"])
def test_a_call_let_through_that_fails_to_pickle_carries_the_diagnosis(mode):
    executor = loky.ProcessPoolExecutor(1, pickle_check=mode)
    try:
        lock = threading.Lock()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", LokyPicklingWarning)
            futures = [executor.submit(identity, {"jobs": [1, lock]})]
            mapped = executor.map(identity, [1, lock], chunksize=1)
        for future in futures:
            with pytest.raises(pickle.PicklingError) as info:
                future.result(timeout=60)
            assert str(info.value) == (
                "Could not pickle the task to send it to the workers."
            )
            notes = _notes(info.value)
            if mode == "off":
                assert notes == []
            else:
                [note] = notes
                assert note.startswith(
                    "loky pickle_check: the task cannot be pickled to send it to"
                    " the workers.\nloky-check  test_audit_check_mode:identity"
                )
                assert "x['jobs'][1]" in note and "[sync_primitive]" in note
        with pytest.raises(pickle.PicklingError) as info:
            list(mapped)
        assert (_notes(info.value) == []) == (mode == "off")
        assert executor.submit(identity, 3).result(timeout=60) == 3
    finally:
        executor.shutdown(wait=True)


# -------------------------------------------- what workers receive at start-up

_MAIN_SETUP_SCRIPT = """
import warnings
from loky import ProcessPoolExecutor
from loky_check import LokyPicklingWarning, PicklingCheckError

class Thing:
    pass

def init():
    pass

def reduce_thing(thing):
    return Thing, ()

try:
    ProcessPoolExecutor(1, pickle_check="error", initializer=init)
except PicklingCheckError as exc:
    print("ERROR", exc)
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    for _ in range(3):
        executor = ProcessPoolExecutor(
            1, pickle_check="warn", job_reducers={Thing: reduce_thing}
        )
        executor.shutdown()
print("WARNINGS", len([w for w in caught if w.category is LokyPicklingWarning]))
print(caught[0].message)
raised = 0
for _ in range(2):
    with warnings.catch_warnings():
        warnings.simplefilter("error", LokyPicklingWarning)
        try:
            ProcessPoolExecutor(1, pickle_check="warn", initializer=init).shutdown()
        except LokyPicklingWarning:
            raised += 1
print("RAISED", raised)
"""


def test_start_up_arguments_that_cannot_load_in_the_workers_are_diagnosed():
    # Under LOKY_PICKLER=pickle a __main__ initializer or reducer kills every
    # worker as it starts: say so where the executor is made.
    result = run_python(_MAIN_SETUP_SCRIPT, LOKY_PICKLER="pickle")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.startswith(
        "ERROR loky pickle_check: every worker receives these when it starts"
    )
    assert "error    initializer   initializer\n" in out
    assert "function init at <string>" in out and "[main_module]" in out
    assert "WARNINGS 1\n" in out  # once per call site
    assert "job_reducers.<key 0>" in out and "class Thing  [main_module]" in out
    # A warning a filter turned into an exception is raised again next time.
    assert "RAISED 2\n" in out
    assert "Traceback" not in result.stderr


def init_with(lock, queue):
    _WORKER_STATE.update(lock=lock, queue=queue)


_WORKER_STATE = {}


def test_process_shared_primitives_in_initargs_are_not_findings():
    from loky.backend import get_context

    context = get_context()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        executor = loky.ProcessPoolExecutor(
            1,
            pickle_check="error",
            initializer=init_with,
            initargs=(context.Lock(), context.Queue()),
        )
    try:
        assert executor.submit(identity, 5).result(timeout=60) == 5
    finally:
        executor.shutdown(wait=True)
