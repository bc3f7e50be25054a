"""Suite-wide harness: hypothesis profile and the end-of-session leak check.

The leak check fails the run when the suite leaves behind, in this process:
  * a child process (other than the resource trackers, which live as long as
    their parent by design),
  * a loky semaphore in /dev/shm that did not exist when the session started
    and that neither its creator nor, once the creator is dead, the resource
    tracker removed (a killed process cannot unlink its semaphores: unlinking
    them at its exit is the tracker's job, so the tracker is stopped first),
  * a file or folder registered with loky's resource tracker that still exists
    and was never unregistered.
"""

from __future__ import annotations

import gc
import os
import sys
import time

import psutil
import pytest
from _helpers import shutdown_reusable_executor
from hypothesis import HealthCheck, settings

from pytest_loky.leaks import (
    SHM_DIR,
    child_processes,
    loky_semaphore_names,
    new_loky_semaphores,
)

pytest_plugins = ["pytester"]

settings.register_profile(
    "ci",
    derandomize=True,
    max_examples=25,
    deadline=None,
    database=None,
    print_blob=False,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("dev", max_examples=100, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

_LEAK_GRACE_SECONDS = 10.0


_tracked_resources: dict[tuple[str, str], int] = {}
_semaphores_at_start: set[str] = set()
# Which test a semaphore first appeared during: names the culprit of a leak.
_semaphore_origin: dict[str, str] = {}


def _track_resource_tracker_registrations() -> None:
    """Record file/folder registrations made through loky's tracker client."""
    try:
        from loky.backend import resource_tracker
    except Exception:  # loky not importable yet: nothing to track
        return
    tracker = resource_tracker._resource_tracker
    original_register = tracker.register
    original_unregister = tracker.unregister
    original_maybe_unlink = tracker.maybe_unlink

    def register(name, rtype):
        if rtype in ("file", "folder"):
            _tracked_resources[(name, rtype)] = (
                _tracked_resources.get((name, rtype), 0) + 1
            )
        return original_register(name, rtype)

    def unregister(name, rtype):
        _tracked_resources.pop((name, rtype), None)
        return original_unregister(name, rtype)

    def maybe_unlink(name, rtype):
        _tracked_resources.pop((name, rtype), None)
        return original_maybe_unlink(name, rtype)

    tracker.register = register
    tracker.unregister = unregister
    tracker.maybe_unlink = maybe_unlink


def _is_xdist_controller(config: pytest.Config) -> bool:
    if hasattr(config, "workerinput"):
        return False
    numprocesses = getattr(config.option, "numprocesses", None)
    return bool(numprocesses)


def pytest_sessionstart(session: pytest.Session) -> None:
    _semaphores_at_start.update(loky_semaphore_names())
    _track_resource_tracker_registrations()


def pytest_runtest_logfinish(nodeid: str, location: tuple) -> None:
    for name in loky_semaphore_names():
        _semaphore_origin.setdefault(name, nodeid)


def _made_here(semaphore_name: str) -> bool:
    return semaphore_name.startswith(f"sem.loky-{os.getpid()}-")


def _stop_resource_tracker() -> None:
    """Stop this process's tracker: it unlinks what dead processes left."""
    module = sys.modules.get("loky.backend.resource_tracker")
    if module is not None:
        module._resource_tracker._stop()


# ------------------------------------------------------------ shared fixtures


@pytest.fixture
def fresh_storage():
    """An empty reusable-executor storage for this thread; what the test made
    there is shut down afterwards."""
    from loky import reusable_executor

    storage = reusable_executor._executor_storage
    if storage.executor is not None:
        storage.executor.shutdown(wait=True, kill_workers=True)
    storage.executor = storage.executor_kwargs = None
    try:
        yield storage
    finally:
        if storage.executor is not None:
            storage.executor.shutdown(wait=True, kill_workers=True)
        storage.executor = storage.executor_kwargs = None
        gc.collect()


@pytest.fixture
def restore_loky_pickler():
    """Undo set_loky_pickler() and register() calls made by the test."""
    from loky.backend import reduction

    name = reduction.get_loky_pickler_name()
    table = dict(reduction._dispatch_table)
    yield
    reduction.set_loky_pickler(None)
    if name != reduction.get_loky_pickler_name():
        reduction.set_loky_pickler(name)
    reduction._dispatch_table.clear()
    reduction._dispatch_table.update(table)


@pytest.fixture
def stop_reusable_executor():
    """Probes run on loky's reusable executor: stop its workers afterwards."""
    yield
    shutdown_reusable_executor()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _is_xdist_controller(session.config):
        return
    # The reusable executor is a per-thread singleton kept warm across tests
    # by design; shut the main thread's one down before counting leftovers.
    shutdown_reusable_executor()
    deadline = time.monotonic() + _LEAK_GRACE_SECONDS
    while True:
        # A shut-down executor that is only garbage in a reference cycle (say,
        # a __main__-style example namespace and its functions) still holds
        # its semaphores until the cyclic collector runs: run it, so only
        # live references count as leaks.
        gc.collect()
        children = child_processes()
        semaphores = new_loky_semaphores(_semaphores_at_start)
        files = [name for (name, _rtype) in _tracked_resources if os.path.exists(name)]
        if not (children or semaphores or files) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    notes = []
    if semaphores and not children and not any(map(_made_here, semaphores)):
        # All made by processes that died (killed workers and their nested
        # pools): the tracker unlinks them when it stops.
        orphans = semaphores
        _stop_resource_tracker()
        semaphores = new_loky_semaphores(_semaphores_at_start)
        notes.extend(
            f"semaphore {name} of a killed process (appeared during "
            f"{_semaphore_origin.get(name, 'the session end')})"
            for name in sorted(orphans - semaphores)
        )

    problems = []
    for child in children:
        try:
            problems.append(
                f"child process {child.pid}: {' '.join(child.cmdline())[:200]}"
            )
        except psutil.Error:
            continue
        child.kill()
    problems.extend(
        f"semaphore {SHM_DIR}/{name} (appeared during "
        f"{_semaphore_origin.get(name, 'the session end')})"
        for name in sorted(semaphores)
    )
    problems.extend(f"resource-tracker file {name}" for name in sorted(files))
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")

    def say(title: str, lines: list[str], **colour: bool) -> None:
        message = f"\nleak check: {title}:\n  " + "\n  ".join(lines)
        if reporter is not None:
            reporter.write_line(message, **colour)
        else:
            print(message, file=sys.stderr)

    if notes:
        say("removed by the resource tracker", notes, yellow=True)
    if problems:
        say("the test session left behind", problems, red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
