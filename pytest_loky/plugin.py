"""pytest hooks, options and fixtures of ``pytest --loky-picklecheck``.

A thin layer: the calls tests send to process pools are observed by
:mod:`pytest_loky.intercept`, checked with ``loky_check.check_call`` (standard
pickle and the pool's own pickler), and the engine's findings are attached to
the test reports (so they travel from pytest-xdist workers to the controller),
summarised, optionally written as JSON, and, in ``strict`` mode, turned into
test failures. Nothing but pytest is imported until a check mode is on.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import pytest

MODES = ("off", "report", "strict")
_FINDING_SEVERITIES = ("error", "warning")  # the ones strict mode fails on
_MARKER = "loky_picklecheck"
_REPORT_ATTRIBUTE = "loky_picklecheck"  # extra report attribute, serialised by xdist
_SECTION = "loky picklecheck"

_settings_key = pytest.StashKey["_Settings"]()
_item_mode_key = pytest.StashKey[str]()


# ---------------------------------------------------------------- options


class _SwallowedTestPath(str):
    """A test path argparse handed to ``--loky-picklecheck`` as its MODE value
    (``pytest --loky-picklecheck tests/``): the mode is ``report`` and the path
    goes back to the positional arguments in :func:`pytest_configure`."""


def _looks_like_test_path(value: str) -> bool:
    return os.path.exists(value.split("::", 1)[0]) or "/" in value or ".py" in value


def _mode_argument(value: str) -> str:
    """argparse type of ``--loky-picklecheck[=MODE]``: a usage error otherwise."""
    import argparse

    if value not in MODES and _looks_like_test_path(value):
        return _SwallowedTestPath(value)
    if value not in MODES:
        raise argparse.ArgumentTypeError(
            f"unknown mode {value!r} (choose from {', '.join(MODES)}; "
            "write --loky-picklecheck=MODE, with '=', when paths follow)"
        )
    return value


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("loky-picklecheck", "loky pickling checks")
    group.addoption(
        "--loky-picklecheck",
        dest="loky_picklecheck",
        nargs="?",
        const="report",
        default=None,
        type=_mode_argument,
        metavar="MODE",
        help="check that every call a test sends to a process pool pickles: "
        "'report' (the default when given) summarises the findings, 'strict' also "
        "fails the tests that have a warning or an error, 'off' disables.",
    )
    group.addoption(
        "--loky-picklecheck-json",
        dest="loky_picklecheck_json",
        default=None,
        metavar="PATH",
        help="write every finding of --loky-picklecheck as JSON (schema loky-check/1 "
        "plus 'test' and 'call_site') to PATH.",
    )
    group.addoption(
        "--loky-reducers",
        dest="loky_reducers",
        action="append",
        default=[],
        metavar="MODULE",
        help="import MODULE (which registers reducers) and collect one test per "
        "registered reducer checking its pickling round trip (repeatable).",
    )
    parser.addini(
        "loky_picklecheck",
        "pickling check mode of calls sent to process pools: off, report or strict.",
        default="off",
    )
    parser.addini(
        "loky_reducers",
        "modules registering reducers; one test per reducer checks its round trip.",
        type="args",
        default=[],
    )


class _Settings:
    """Per-session configuration and the findings collected for the summary."""

    def __init__(self, mode: str, json_path: str | None, reducer_modules: list[str]):
        self.mode = mode
        self.json_path = json_path
        self.reducer_modules = reducer_modules
        self.findings: list[dict[str, Any]] = []  # every finding of every test
        self.errors: list[dict[str, Any]] = []  # checks that could not run
        self.reducers: list[dict[str, Any]] = []  # reducer results
        self.calls = 0  # pool calls checked
        self.checker: _Checker | None = None
        self.reducer_executor: Any = None


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"{_MARKER}(mode): override the --loky-picklecheck mode (off, report, strict) "
        "for this test.",
    )
    mode = config.getoption("loky_picklecheck")
    if isinstance(mode, _SwallowedTestPath):
        _restore_test_path(config, str(mode))
        mode = "report"
    if mode is None:
        mode = (config.getini("loky_picklecheck") or "off").strip()
        if mode not in MODES:
            raise pytest.UsageError(
                f"ini option loky_picklecheck: unknown mode {mode!r} "
                f"(choose from {', '.join(MODES)})"
            )
    reducer_modules = [
        *config.getini("loky_reducers"),
        *config.getoption("loky_reducers"),
    ]
    settings = _Settings(
        mode, config.getoption("loky_picklecheck_json"), reducer_modules
    )
    config.stash[_settings_key] = settings
    config.pluginmanager.register(_Reporter(config, settings), "pytest_loky_reporter")


def _restore_test_path(config: pytest.Config, path: str) -> None:
    """Put a path swallowed as the option's value back among the test paths."""
    if config.args_source == pytest.Config.ArgsSource.ARGS:
        config.args.insert(0, path)
    else:  # it was the only path: pytest fell back to testpaths / the cwd
        config.args[:] = [path]
        config.args_source = pytest.Config.ArgsSource.ARGS


def _settings(config: pytest.Config) -> _Settings | None:
    return config.stash.get(_settings_key, None)


def _is_xdist_worker(config: pytest.Config) -> bool:
    return hasattr(config, "workerinput")


# ---------------------------------------------------------------- collection


def _marker_mode(item: pytest.Item) -> str | None:
    marker = item.get_closest_marker(_MARKER)
    if marker is None:
        return None
    mode = marker.args[0] if marker.args else marker.kwargs.get("mode", "report")
    if mode not in MODES:
        raise pytest.UsageError(
            f"{item.nodeid}: @pytest.mark.{_MARKER}({mode!r}): unknown mode "
            f"(choose from {', '.join(MODES)})"
        )
    return mode


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(
    session: pytest.Session, config: pytest.Config, items: list[pytest.Item]
) -> None:
    settings = _settings(config)
    if settings is None:
        return
    if settings.reducer_modules:
        items.extend(_reducer_items(session, settings))
        config.pluginmanager.register(_ReducerReports(), "pytest_loky_reducers")
    needed = settings.mode != "off"
    for item in items:
        mode = _marker_mode(item)
        if mode is not None:
            item.stash[_item_mode_key] = mode
            needed = needed or mode != "off"
    if needed and settings.checker is None:
        settings.checker = _Checker(config, settings)
        config.pluginmanager.register(settings.checker, "pytest_loky_checker")


# ---------------------------------------------------------------- checking calls


class _TestFindings:
    """Findings of the pool calls made while one test runs."""

    def __init__(self, nodeid: str, rootdir: str):
        import threading

        self.nodeid = nodeid
        self.rootdir = rootdir
        self.lock = threading.Lock()
        self.findings: list[dict[str, Any]] = []
        self.errors: list[dict[str, Any]] = []
        self.calls = 0
        self.seen: set[tuple] = set()
        self.reported = (
            0,
            0,
            0,
        )  # (findings, errors, calls) already attached to a report

    def call_site(self, filename: str, lineno: int) -> str:
        try:
            relative = os.path.relpath(filename, self.rootdir)
        except ValueError:  # another drive (Windows)
            relative = filename
        if relative.startswith(os.pardir):
            relative = filename
        return f"{relative.replace(os.sep, '/')}:{lineno}"

    def record(self, call) -> None:
        """The recorder handed to :func:`pytest_loky.intercept.set_recorder`."""
        call_site = self.call_site(call.filename, call.lineno)
        context = {
            "test": self.nodeid,
            "call_site": call_site,
            "function": call.function_name,
            "pool": call.pool,
            "method": call.method,
        }
        try:
            findings = _check_pool_call(call, call_site)
        except Exception as exc:  # the check must never change the test itself
            with self.lock:
                self.calls += 1
                self.errors.append({**context, "error": f"{type(exc).__name__}: {exc}"})
            return
        with self.lock:
            self.calls += 1
            for finding in findings:
                key = (
                    call_site,
                    finding.argument,
                    finding.path,
                    finding.category,
                    finding.stage,
                )
                if key in self.seen:
                    continue
                self.seen.add(key)
                self.findings.append(
                    {**finding.to_dict(), **context, "summary": finding.summary}
                )

    def take_new(self) -> dict[str, Any] | None:
        """What was recorded since the previous report (None when nothing)."""
        with self.lock:
            n_findings, n_errors, n_calls = self.reported
            if (n_findings, n_errors, n_calls) == (
                len(self.findings),
                len(self.errors),
                self.calls,
            ):
                return None
            new = {
                "findings": self.findings[n_findings:],
                "errors": self.errors[n_errors:],
                "calls": self.calls - n_calls,
            }
            self.reported = (len(self.findings), len(self.errors), self.calls)
            return new


def _check_pool_call(call, call_site: str) -> list:
    """The engine's findings for every task of ``call``, with every pickler."""
    import dataclasses

    from loky_check import check_call

    findings = []
    target = f"{call_site} {call.method}({call.function_name})"
    for args, kwargs in _tasks_to_check(call.calls):
        for pickler in call.picklers:
            report = check_call(call.fn, args, kwargs, pickler=pickler, target=target)
            findings.extend(report.findings)
    if "loky" not in call.picklers:
        # The engine rates severity against loky's pickler; this pool sends
        # everything with standard pickle, so what it cannot carry will fail.
        findings = [
            dataclasses.replace(f, severity="error")
            if f.severity == "warning" and not f.carried_by.get("pickle", True)
            else f
            for f in findings
        ]
    return findings


def _tasks_to_check(calls: list[tuple[tuple, dict]]) -> list[tuple[tuple, dict]]:
    """All tasks of a call, or only the first one when the others are plain data.

    A ``map`` over many items repeats the same function: when the arguments of
    the other tasks pickle in one go with the C pickler and reference nothing
    in ``__main__``, they add nothing the engine's check of the first task does
    not already say, and checking them one by one would cost a diagnosis each.
    """
    if len(calls) <= 1:
        return calls
    import pickle

    try:
        data = pickle.dumps(calls[1:], protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:
        return calls
    return calls if b"__main__" in data else calls[:1]


class _Checker:
    """Runtime hooks, registered only when some test has a check mode on."""

    def __init__(self, config: pytest.Config, settings: _Settings):
        from . import intercept

        self.config = config
        self.settings = settings
        self.intercept = intercept
        self.current: _TestFindings | None = None
        intercept.install()
        config.add_cleanup(intercept.uninstall)

    def mode_of(self, item: pytest.Item) -> str:
        return item.stash.get(_item_mode_key, None) or self.settings.mode

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_protocol(self, item: pytest.Item, nextitem):
        if self.mode_of(item) == "off" or isinstance(item, ReducerItem):
            return (yield)
        self.current = _TestFindings(item.nodeid, str(self.config.rootpath))
        previous = self.intercept.set_recorder(self.current.record)
        try:
            return (yield)
        finally:
            self.intercept.set_recorder(previous)
            self.current = None

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(self, item: pytest.Item, call):
        report = yield
        collected = self.current
        if collected is None or collected.nodeid != item.nodeid:
            return report
        new = collected.take_new()
        if new is None:
            return report
        setattr(report, _REPORT_ATTRIBUTE, new)
        failing = [f for f in new["findings"] if f["severity"] in _FINDING_SEVERITIES]
        if failing and self.mode_of(item) == "strict":
            text = _render_failure(failing, color=False)
            if report.passed:
                report.outcome = "failed"
                report.longrepr = text
            elif report.failed:
                report.sections.append((_SECTION, text))
        return report


# ---------------------------------------------------------------- reporting


class _Reporter:
    """Gathers what the test reports carry (from this process or, under
    pytest-xdist, from every worker) into the summary and the JSON file."""

    def __init__(self, config: pytest.Config, settings: _Settings):
        self.config = config
        self.settings = settings

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        data = getattr(report, _REPORT_ATTRIBUTE, None)
        if not data:
            return
        settings = self.settings
        settings.findings.extend(data.get("findings", ()))
        settings.errors.extend(data.get("errors", ()))
        settings.reducers.extend(data.get("reducers", ()))
        settings.calls += data.get("calls", 0)

    def pytest_terminal_summary(self, terminalreporter) -> None:
        if not _is_xdist_worker(self.config):
            _write_summary(terminalreporter, self.config, self.settings)

    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        settings = self.settings
        if settings.reducer_executor is not None:
            executor, settings.reducer_executor = settings.reducer_executor, None
            executor.shutdown(wait=True)
        if settings.json_path and not _is_xdist_worker(self.config):
            _write_json(settings)


def _finding_block(entry: dict[str, Any], color: bool) -> str:
    from loky_check.report import FINDING_KEYS, Finding

    finding = Finding(
        **{key: entry.get(key) for key in FINDING_KEYS},
        summary=entry.get("summary", ""),
    )
    return finding.render(color=color)


def _counts(findings: list[dict[str, Any]]) -> str:
    parts = []
    for severity in ("error", "warning", "info"):
        n = sum(1 for f in findings if f["severity"] == severity)
        if n:
            parts.append(
                f"{n} {severity}{'s' if n != 1 and severity != 'info' else ''}"
            )
    return ", ".join(parts) or "no findings"


def _render_findings(findings: list[dict[str, Any]], color: bool) -> list[str]:
    """Lines for findings grouped by test, then call site."""
    lines: list[str] = []
    by_test: dict[str, dict[tuple, list]] = {}
    for entry in findings:
        site = (
            entry["call_site"],
            entry.get("pool", ""),
            entry.get("method", ""),
            entry.get("function", ""),
        )
        by_test.setdefault(entry["test"], {}).setdefault(site, []).append(entry)
    for test, sites in by_test.items():
        if lines:
            lines.append("")
        lines.append(test)
        for (call_site, pool, method, function), entries in sites.items():
            lines.append(
                f"call site: {call_site}   {pool} {method}   function: {function}"
            )
            for entry in entries:
                lines.append("")
                lines.append(_finding_block(entry, color))
    return lines


def _render_failure(findings: list[dict[str, Any]], color: bool) -> str:
    header = (
        f"loky picklecheck (strict): {_counts(findings)} in the calls this test sent "
        "to process pools"
    )
    return "\n".join([header, "", *_render_findings(findings, color)])


def _write_summary(
    terminalreporter, config: pytest.Config, settings: _Settings
) -> None:
    if not (settings.findings or settings.errors or settings.reducers):
        if settings.calls and config.getoption("verbose") > 0:
            terminalreporter.write_line(
                f"loky picklecheck: {settings.calls} pool call(s) checked, no findings"
            )
        return
    tests = len({f["test"] for f in settings.findings})
    terminalreporter.write_sep("=", _SECTION)
    color = getattr(terminalreporter, "hasmarkup", False) or bool(
        getattr(getattr(terminalreporter, "_tw", None), "hasmarkup", False)
    )
    if settings.findings:
        terminalreporter.write_line(
            f"{_counts(settings.findings)} in {tests} test{'s' if tests != 1 else ''} "
            f"({settings.calls} pool call{'s' if settings.calls != 1 else ''} checked)"
        )
        terminalreporter.write_line("")
        for line in _render_findings(settings.findings, color):
            terminalreporter.write_line(line)
    if settings.reducers:
        held = sum(1 for r in settings.reducers if r.get("ok"))
        if settings.findings:
            terminalreporter.write_line("")
        terminalreporter.write_line(
            f"reducers: {held} of {len(settings.reducers)} hold"
        )
        for result in settings.reducers:
            terminalreporter.write_line("")
            terminalreporter.write_line(result.get("block") or result["type"])
    for error in settings.errors:
        terminalreporter.write_line(
            f"{error['test']}  call site: {error['call_site']}: the check could not run: "
            f"{error['error']}",
            red=True,
        )
    if settings.json_path:
        terminalreporter.write_line(
            f"loky picklecheck: JSON report written to {settings.json_path}"
        )


def _write_json(settings: _Settings) -> None:
    import json

    from loky_check.report import FINDING_KEYS, SCHEMA

    findings = [
        {
            **{key: entry.get(key) for key in FINDING_KEYS},
            "test": entry["test"],
            "call_site": entry["call_site"],
        }
        for entry in settings.findings
    ]
    data = {
        "schema": SCHEMA,
        "target": "pytest",
        "pickler": "pickle",
        "ok": not any(f["severity"] in _FINDING_SEVERITIES for f in findings)
        and all(r.get("ok", True) for r in settings.reducers),
        "findings": findings,
        "reducers": [
            {key: value for key, value in result.items() if key != "block"}
            for result in settings.reducers
        ],
    }
    path = os.path.abspath(settings.json_path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as stream:
        json.dump(data, stream, indent=2)
        stream.write("\n")


# ---------------------------------------------------------------- reducer items


class ReducerCheckFailed(Exception):
    """A registered reducer does not round-trip."""


def _import_reducer_module(name: str, rootdir: str):
    import importlib

    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name and name.startswith(exc.name) and rootdir not in sys.path:
            sys.path.insert(0, rootdir)  # as `python -m pytest` would from the rootdir
            try:
                return importlib.import_module(name)
            except Exception:
                pass
        raise pytest.UsageError(
            f"--loky-reducers: cannot import {name!r}: {exc}"
        ) from None
    except Exception as exc:
        raise pytest.UsageError(
            f"--loky-reducers: importing {name!r} raised {type(exc).__name__}: {exc}"
        ) from None


def _reducer_items(session: pytest.Session, settings: _Settings) -> list[pytest.Item]:
    """One item per registered reducer, reported like a collected module."""
    from loky_check.reducers import discover_reducers

    for name in dict.fromkeys(settings.reducer_modules):
        _import_reducer_module(name, str(session.config.rootpath))
    collector = _ReducerCollector.from_parent(
        session, name="loky-reducers", nodeid="loky-reducers"
    )
    collector.reducer_types = {}
    for entry in discover_reducers():  # the latest registration of a name wins
        type_ = entry.cls
        collector.reducer_types[f"{type_.__module__}.{type_.__qualname__}"] = type_
    ihook = session.ihook
    ihook.pytest_collectstart(collector=collector)
    report = ihook.pytest_make_collect_report(collector=collector)
    ihook.pytest_collectreport(report=report)
    return list(report.result) if report.passed else []


class _ReducerCollector(pytest.Collector):
    reducer_types: dict[str, type]

    def collect(self) -> list[pytest.Item]:
        items = []
        for type_name, type_ in self.reducer_types.items():
            name = f"reducer[{type_name}]"
            module = sys.modules.get(type_.__module__)
            path = getattr(module, "__file__", None)
            items.append(
                ReducerItem.from_parent(
                    self,
                    name=name,
                    nodeid=name,
                    path=Path(path) if path else self.path,
                    reducer_type=type_,
                )
            )
        return items


class ReducerItem(pytest.Item):
    """Property-tests one registered reducer through a real loky worker."""

    def __init__(self, *, reducer_type: type, **kwargs):
        super().__init__(**kwargs)
        self.reducer_type = reducer_type
        self.results: list = []

    def runtest(self) -> None:
        from loky_check import check_reducers

        settings = _settings(self.config)
        self.results = check_reducers(
            types=[self.reducer_type], executor=_reducer_executor(settings)
        )
        failed = [r for r in self.results if not r.ok]
        if failed:
            raise ReducerCheckFailed("\n\n".join(str(r) for r in failed))

    def repr_failure(self, excinfo, style=None):
        if isinstance(excinfo.value, ReducerCheckFailed):
            return str(excinfo.value)
        return super().repr_failure(excinfo, style=style)

    def reportinfo(self):
        return self.path, None, self.name


def _reducer_executor(settings: _Settings | None):
    """One small loky pool shared by the reducer items, shut down at session end."""
    if settings is None:
        return None
    if settings.reducer_executor is None:
        from loky import ProcessPoolExecutor

        settings.reducer_executor = ProcessPoolExecutor(max_workers=1)
    return settings.reducer_executor


class _ReducerReports:
    """Attaches reducer results to the reports (registered with --loky-reducers)."""

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(self, item: pytest.Item, call):
        report = yield
        if isinstance(item, ReducerItem) and call.when == "call" and item.results:
            data = getattr(report, _REPORT_ATTRIBUTE, None) or {}
            data["reducers"] = [
                {**r.to_dict(), "test": item.nodeid, "block": str(r)}
                for r in item.results
            ]
            setattr(report, _REPORT_ATTRIBUTE, data)
        return report


# ---------------------------------------------------------------- fixtures


@pytest.fixture
def assert_picklable():
    """``assert_picklable(obj)`` or ``assert_picklable(fn, *args, **kwargs)``:
    fail the test with the engine's report unless the object (or the call)
    pickles with standard pickle; returns the report otherwise."""

    def check(obj_or_fn, *args, **kwargs):
        from loky_check import check_call, check_object

        __tracebackhide__ = True
        if args or kwargs:
            report = check_call(obj_or_fn, args, kwargs, pickler="pickle")
        else:
            report = check_object(obj_or_fn, name="obj", pickler="pickle")
        if not report.ok:
            pytest.fail(str(report), pytrace=False)
        return report

    return check


def _live_workers(pids: set[int]) -> list:
    import psutil

    alive = []
    for pid in pids:
        try:
            process = psutil.Process(pid)
            if process.status() != psutil.STATUS_ZOMBIE:
                alive.append(process)
        except psutil.Error:
            continue
    return alive


@pytest.fixture
def loky_executor():
    """A reusable loky executor with ``pickle_check="error"``; after the test it
    is shut down and the test fails if a worker process or a semaphore is left."""
    import time

    from loky import get_reusable_executor

    from .leaks import (
        SHM_DIR,
        child_processes,
        loky_semaphore_names,
        new_loky_semaphores,
    )

    children_before = {p.pid for p in child_processes()}
    semaphores_before = loky_semaphore_names()
    executor = get_reusable_executor(max_workers=2, pickle_check="error")
    try:
        yield executor
    finally:
        worker_pids = {
            p.pid for p in list(getattr(executor, "_processes", {}).values())
        }
        worker_pids |= {p.pid for p in child_processes()} - children_before
        executor.shutdown(wait=True)
        deadline = time.monotonic() + 3.0
        while True:  # workers and semaphores go away asynchronously after shutdown
            workers = _live_workers(worker_pids)
            semaphores = new_loky_semaphores(semaphores_before)
            if not (workers or semaphores) or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        for process in workers:
            try:
                process.kill()
            except Exception:
                pass
        problems = [f"worker process {p.pid}" for p in workers]
        problems += [f"semaphore {SHM_DIR}/{name}" for name in sorted(semaphores)]
        if problems:
            pytest.fail(
                "loky_executor: left behind after the test and the executor's shutdown: "
                + ", ".join(problems),
                pytrace=False,
            )
