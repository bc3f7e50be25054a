"""One row per taxonomy category, each culprit in five nesting positions.

Every case asserts argument, parameter, path, type, category, severity and
remedy exactly (spec toolkit.md §2 taxonomy table and §10 clarifications).
"""

from __future__ import annotations

import hashlib
import mmap
import queue
import socket
import sqlite3
import sys
import tempfile
import threading
import types
import weakref

import pytest
from _helpers import POSITIONS, Holder, finding_fields, too_deep_to_pickle

from loky_check import check_call
from loky_check.taxonomy import CATEGORIES, REMEDIES


def target(a, b=None, *, kw=None):
    """The callable every call is checked against."""


# ---------------------------------------------------------------------------
# culprit factories (each returns a fresh culprit; resources are closed by the
# `resources` fixture)


def make_local_function():
    offset = 1

    def add(x):
        return x + offset

    return add


class _LocalFactory:
    @staticmethod
    def make():
        class Local:
            pass

        return Local()


LOCAL_CLASS_TYPE = f"{__name__}._LocalFactory.make.<locals>.Local"


def renamed_function():
    """A module-level function pickle cannot find under its recorded name."""

    def moved(x):
        return x

    moved.__qualname__ = "moved_away"
    moved.__module__ = __name__
    return moved


class BadReduce:
    def __reduce__(self):
        raise ValueError("refuse to pickle")


class Opaque:
    # Neither hook usable: the pickler gives up without any user code raising.
    __reduce_ex__ = None
    __reduce__ = None


def deep_tuple(depth=too_deep_to_pickle(3)):
    value = ()
    for _ in range(depth):
        value = (value,)
    return value


_REFERENT = Holder(0)


@pytest.fixture
def resources(tmp_path, monkeypatch):
    """Factories needing cleanup or a __main__ namespace."""
    opened = []

    def track(obj):
        opened.append(obj)
        return obj

    def main_function():
        namespace = {"__name__": "__main__"}
        exec("def main_job(x):\n    return x\n", namespace)
        fn = namespace["main_job"]
        monkeypatch.setattr(sys.modules["__main__"], "main_job", fn, raising=False)
        return fn

    text_path = tmp_path / "data.txt"
    text_path.write_text("hello\n")

    def mapped():
        f = track(open(text_path, "r+b"))
        return track(mmap.mmap(f.fileno(), 0))

    factories = {
        "main_function": main_function,
        "binary_writer": lambda: track(open(tmp_path / "out.bin", "wb")),
        "text_reader": lambda: track(open(text_path)),
        "temporary_file": lambda: track(tempfile.TemporaryFile()),
        "mmap": mapped,
        "socket": lambda: track(socket.socket()),
        "sqlite": lambda: track(sqlite3.connect(":memory:")),
    }
    yield factories
    for obj in reversed(opened):
        obj.close()


def _generator():
    yield 1


# row id -> (factory name or callable, type, category, severity, remedy)
ROWS = {
    "lambda": (lambda r: lambda x: x, "builtins.function", "lambda", "warning", "wrap"),
    "local_function": (
        lambda r: make_local_function(),
        "builtins.function",
        "local_function",
        "warning",
        "wrap",
    ),
    "local_class": (
        lambda r: _LocalFactory.make(),
        LOCAL_CLASS_TYPE,
        "local_class",
        "warning",
        "wrap",
    ),
    "main_module": (
        lambda r: r["main_function"](),
        "builtins.function",
        "main_module",
        "warning",
        "wrap",
    ),
    "not_importable": (
        lambda r: renamed_function(),
        "builtins.function",
        "not_importable",
        "warning",
        "move_to_module",
    ),
    "sync_lock": (
        lambda r: threading.Lock(),
        "_thread.lock",
        "sync_primitive",
        "error",
        "create_in_worker",
    ),
    "sync_condition": (
        lambda r: threading.Condition(),
        "threading.Condition",
        "sync_primitive",
        "error",
        "create_in_worker",
    ),
    "sync_event": (
        lambda r: threading.Event(),
        "threading.Event",
        "sync_primitive",
        "error",
        "create_in_worker",
    ),
    "sync_semaphore": (
        lambda r: threading.Semaphore(),
        "threading.Semaphore",
        "sync_primitive",
        "error",
        "create_in_worker",
    ),
    "sync_queue": (
        lambda r: queue.Queue(),
        "queue.Queue",
        "sync_primitive",
        "error",
        "create_in_worker",
    ),
    "file_binary_writer": (
        lambda r: r["binary_writer"](),
        "_io.BufferedWriter",
        "file_handle",
        "error",
        "create_in_worker",
    ),
    "file_text_reader": (
        lambda r: r["text_reader"](),
        "_io.TextIOWrapper",
        "file_handle",
        "warning",
        "create_in_worker",
    ),
    "file_temporary": (
        lambda r: r["temporary_file"](),
        "_io.BufferedRandom",
        "file_handle",
        "error",
        "create_in_worker",
    ),
    "file_mmap": (
        lambda r: r["mmap"](),
        "mmap.mmap",
        "file_handle",
        "error",
        "create_in_worker",
    ),
    "connection_socket": (
        lambda r: r["socket"](),
        "socket.socket",
        "connection",
        "warning",
        "create_in_worker",
    ),
    "connection_sqlite": (
        lambda r: r["sqlite"](),
        "sqlite3.Connection",
        "connection",
        "error",
        "create_in_worker",
    ),
    "generator": (
        lambda r: _generator(),
        "builtins.generator",
        "generator",
        "error",
        "materialize",
    ),
    "module": (lambda r: types, "builtins.module", "module", "warning", "wrap"),
    "weakref": (
        lambda r: weakref.ref(_REFERENT),
        "weakref.ReferenceType",
        "weakref",
        "error",
        "implement_reduce",
    ),
    "c_extension_hash": (
        lambda r: hashlib.sha256(),
        "_hashlib.HASH",
        "c_extension",
        "error",
        "implement_reduce",
    ),
    "c_extension_thread_local": (
        lambda r: threading.local(),
        "_thread._local",
        "c_extension",
        "error",
        "create_in_worker",
    ),
    "reduce_error": (
        lambda r: BadReduce(),
        f"{__name__}.BadReduce",
        "reduce_error",
        "error",
        "fix_reducer",
    ),
    "recursion": (
        lambda r: deep_tuple(),
        "builtins.tuple",
        "recursion",
        "error",
        "restructure",
    ),
    "other": (lambda r: Opaque(), f"{__name__}.Opaque", "other", "error", "none_known"),
}


@pytest.mark.parametrize("position", list(POSITIONS))
@pytest.mark.parametrize("row", list(ROWS))
def test_taxonomy_row(row, position, resources):
    make, type_, category, severity, remedy = ROWS[row]
    build, argument, parameter, path = POSITIONS[position]
    culprit = make(resources)
    args, kwargs = build(culprit)

    report = check_call(target, args, kwargs)

    assert not report.ok
    assert len(report.findings) == 1, str(report)
    finding = report.findings[0]
    got = finding_fields(finding)[:-1]  # all but the stage, checked below
    assert got == (argument, parameter, path, type_, category, severity, remedy), str(
        report
    )
    assert finding.remedy in REMEDIES[finding.category]
    assert finding.stage == ("load" if category == "main_module" else "dump")


def test_every_dump_side_category_has_a_row():
    # unpickle_error and fidelity need a load (tests/test_worker_probe.py)
    covered = {row[2] for row in ROWS.values()}
    assert covered == set(CATEGORIES) - {"unpickle_error", "fidelity"}


def test_wrap_is_recommended_only_when_verified(resources):
    lock = threading.Lock()

    def closes_over_lock():
        return lock

    report = check_call(target, (closes_over_lock,))
    # loky's pickler takes the closure by value and fails on the lock: one
    # finding, at the cell, and no wrap advice anywhere.
    [finding] = report.findings
    assert finding.path == "a.<closure lock>"
    assert finding.remedy == "create_in_worker"
    assert finding.wrap_fixes is False


def test_wrap_verdict_is_recorded():
    report = check_call(target, (lambda x: x,))
    [finding] = report.findings
    assert finding.wrap_fixes is True
    assert "checked: the wrapped copy round-trips" in finding.fix
    assert finding.carried_by == {"pickle": False, "cloudpickle": True, "loky": True}
