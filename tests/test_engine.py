"""check_call / check_object: fast path, binding, §10 clarifications, reports."""

from __future__ import annotations

import array
import collections
import dataclasses
import datetime
import decimal
import enum
import fractions
import functools
import io
import json
import mmap
import operator
import pathlib
import queue
import re
import socket
import sys
import tempfile
import threading
import types
import uuid

import numpy as np
import pytest

import loky_check
from loky_check import Finding, Report, check_call, check_object
from loky_check.report import FINDING_KEYS, SCHEMA
from loky_check.taxonomy import CATEGORIES, REMEDIES

LOCK = threading.Lock()


class Cfg:
    def __init__(self, hooks):
        self.hooks = hooks


def work(data, cfg, callback=None):
    """The function of the spec's example report (§4)."""


def variadic(first, *rest, flag=False, **opts):
    pass


def module_function(x):
    return x


class Plain:
    def __init__(self, value):
        self.value = value

    def method(self):
        return self.value


class WithReducer:
    def __init__(self, value):
        self.value = value

    def __reduce__(self):
        return (WithReducer, (self.value,))


@dataclasses.dataclass
class Record:
    name: str
    values: list


class Color(enum.Enum):
    RED = 1


Pair = collections.namedtuple("Pair", "left right")


# ---------------------------------------------------------------------------
# the fast path


def test_picklable_call_is_ok_with_no_findings():
    report = check_call(work, (1, Cfg([1, 2])), {"callback": module_function})
    assert report.ok
    assert report.findings == []
    assert report.target == f"{__name__}:work"
    assert str(report).splitlines()[0].endswith("ok")


def test_main_reference_is_a_load_finding_even_though_dumps_succeeds(monkeypatch):
    namespace = {"__name__": "__main__"}
    exec("def script_job(x):\n    return x\n", namespace)
    monkeypatch.setattr(
        sys.modules["__main__"], "script_job", namespace["script_job"], raising=False
    )
    report = check_call(namespace["script_job"], (1,))
    [finding] = report.findings
    assert (finding.argument, finding.path, finding.category, finding.stage) == (
        "fn",
        "fn",
        "main_module",
        "load",
    )
    assert finding.severity == "warning"
    assert finding.carried_by == {"pickle": False, "cloudpickle": True, "loky": True}
    # cloudpickle and loky's pickler take __main__ functions by value
    assert check_call(namespace["script_job"], (1,), pickler="cloudpickle").ok
    assert check_call(namespace["script_job"], (1,), pickler="loky").ok


def test_a_main_string_in_the_data_is_not_a_finding():
    assert check_object({"__main__": "__main__"}).findings == []


# ---------------------------------------------------------------------------
# binding (spec §2 and §10)


def test_arguments_bound_to_parameter_names():
    report = check_call(work, (1, LOCK), {"callback": threading.Event()})
    got = [(f.argument, f.parameter, f.path) for f in report.findings]
    assert got == [
        ("args[1]", "cfg", "cfg"),
        ("kwargs['callback']", "callback", "callback"),
    ]


def test_star_args_and_star_kwargs_are_bound():
    report = check_call(
        variadic, (0, 1, LOCK), {"flag": threading.Event(), "extra": threading.RLock()}
    )
    got = [(f.argument, f.parameter, f.path) for f in report.findings]
    assert got == [
        ("args[2]", "rest", "rest[1]"),
        ("kwargs['flag']", "flag", "flag"),
        ("kwargs['extra']", "opts", "opts['extra']"),
    ]


def test_unbindable_call_uses_positional_labels():
    report = check_call(module_function, (1, LOCK), {"nope": LOCK})
    got = [(f.argument, f.parameter, f.path) for f in report.findings]
    # the same LOCK in two arguments: each argument reports it
    assert got == [
        ("args[1]", None, "args[1]"),
        ("kwargs['nope']", None, "kwargs['nope']"),
    ]


def test_callable_without_signature():
    report = check_call(min, (LOCK,))
    assert [(f.argument, f.parameter, f.path) for f in report.findings] == [
        ("args[0]", None, "args[0]")
    ]


def test_defaults_are_not_checked():
    def with_default(x, y=LOCK):  # noqa: B008
        return x

    # the default is part of the function: reported on fn (by value), not as an argument
    report = check_call(with_default, (1,))
    assert [f.argument for f in report.findings] == ["fn"]
    assert [f.path for f in report.findings] == ["fn.__defaults__[0]"]


# ---------------------------------------------------------------------------
# §10 clarifications, one test each


def test_severity_follows_lokys_pickler(tmp_path):
    text = tmp_path / "t.txt"
    text.write_text("x")
    sock = socket.socket()
    reader = open(text)
    writer = open(tmp_path / "w.txt", "w")
    binary = open(text, "rb")
    temp = tempfile.NamedTemporaryFile()
    raw = open(text, "r+b")
    mapped = mmap.mmap(raw.fileno(), 0)
    try:
        cases = {
            "sock": (sock, "warning"),
            "reader": (reader, "warning"),
            "writer": (writer, "error"),
            "binary": (binary, "error"),
            "temp": (temp, "error"),
            "mapped": (mapped, "error"),
        }
        for name, (obj, severity) in cases.items():
            [finding] = check_object(obj, name=name).findings
            assert (finding.category, finding.severity) == (
                "connection" if name == "sock" else "file_handle",
                severity,
            ), name
    finally:
        for obj in (sock, reader, writer, binary, temp, mapped, raw):
            obj.close()


def test_cloudpickle_and_loky_report_only_their_own_failures():
    sock = socket.socket()
    try:
        args = (lambda x: x, {"sock": sock, "lock": LOCK})
        std = check_call(work, args)
        cloud = check_call(work, args, pickler="cloudpickle")
        loky = check_call(work, args, pickler="loky")
    finally:
        sock.close()
    assert sorted(f.path for f in std.findings) == [
        "cfg['lock']",
        "cfg['sock']",
        "data",
    ]
    assert sorted(f.path for f in cloud.findings) == ["cfg['lock']", "cfg['sock']"]
    assert [f.path for f in loky.findings] == ["cfg['lock']"]
    assert cloud.pickler == "cloudpickle" and loky.pickler == "loky"


@pytest.mark.parametrize(
    "factory, type_",
    [
        (threading.Condition, "threading.Condition"),
        (threading.Event, "threading.Event"),
        (threading.Semaphore, "threading.Semaphore"),
        (queue.Queue, "queue.Queue"),
    ],
)
def test_container_of_an_inner_lock_is_reported_as_the_container(factory, type_):
    [finding] = check_object({"x": factory()}, name="d").findings
    assert (finding.path, finding.type, finding.category) == (
        "d['x']",
        type_,
        "sync_primitive",
    )


def test_local_class_instance_reported_at_the_instance():
    def make():
        class Local:
            def __init__(self):
                self.value = 1

        return Local()

    [finding] = check_object([make()], name="items").findings
    assert finding.path == "items[0]"
    assert finding.type.endswith("make.<locals>.Local")
    assert finding.category == "local_class"
    assert finding.location.startswith("tests/test_engine.py:")


def test_by_value_function_with_bad_cell_gets_one_finding():
    event = threading.Event()

    def closure():
        return event

    def reads_global():
        return LOCK

    for fn, path in (
        (closure, "fn.<closure event>"),
        (reads_global, "fn.<global LOCK>"),
    ):
        report = check_call(fn)
        assert [f.path for f in report.findings] == [path]
        assert report.findings[0].severity == "error"


def test_readable_paths_for_namedtuple_and_partial():
    assert [f.path for f in check_object(Pair(1, LOCK), name="p").findings] == [
        "p.right"
    ]
    p = functools.partial(module_function, LOCK, key=threading.Event())
    assert [f.path for f in check_object(p, name="p").findings] == [
        "p.args[0]",
        "p.keywords['key']",
    ]
    p = functools.partial(lambda x: x)
    assert [f.path for f in check_object(p, name="p").findings] == ["p.func"]


# ---------------------------------------------------------------------------
# no false positives


def _corpus():
    big = list(range(100_000))
    return [
        None,
        True,
        1,
        2.5,
        complex(1, 2),
        "text",
        b"bytes",
        bytearray(b"ba"),
        (1, 2),
        [1, [2, [3]]],
        {"a": {"b": 1}},
        {1, 2},
        frozenset({3}),
        np.arange(1000.0),
        np.zeros((3, 3), dtype=np.int32),
        np.float64(1.5),
        np.dtype("f8"),
        np.ma.masked_array([1, 2], mask=[0, 1]),
        Record("r", [1, 2]),
        Pair(1, 2),
        Plain(3),
        WithReducer([1]),
        Color.RED,
        module_function,
        Plain,
        Plain(4).method,
        len,
        operator.add,
        str.upper,
        [].append,
        functools.partial(module_function, 1),
        operator.itemgetter(1),
        operator.methodcaller("upper"),
        datetime.datetime(2020, 1, 1),
        datetime.timezone.utc,
        decimal.Decimal("1.1"),
        fractions.Fraction(1, 3),
        uuid.UUID(int=0),
        pathlib.PurePosixPath("/a/b"),
        re.compile("a+"),
        range(10),
        slice(1, 2),
        collections.OrderedDict(a=1),
        collections.defaultdict(list, a=[1]),
        collections.Counter("aab"),
        collections.deque([1, 2]),
        array.array("i", [1, 2]),
        ValueError("boom"),
        io.BytesIO(b"x"),
        types.SimpleNamespace(a=1),
        int,
        type(None),
        big,
        {i: str(i) for i in range(10_000)},
        Ellipsis,
        NotImplemented,
    ]


def test_no_false_positives_on_a_corpus_of_picklable_objects():
    corpus = _corpus()
    assert len(corpus) >= 40
    for pickler in ("pickle", "cloudpickle", "loky"):
        for obj in corpus:
            report = check_object(obj, pickler=pickler)
            assert report.findings == [], (pickler, str(report))
        assert check_call(work, tuple(corpus), pickler=pickler).ok


# ---------------------------------------------------------------------------
# reports


def _example_report():
    callback = lambda x: x  # noqa: E731 - the spec's example is a lambda
    cfg = Cfg([None, {"on_done": threading.Lock()}])
    return check_call(
        work, (1, cfg), {"callback": callback}, target="app.jobs:work"
    ), callback


def test_human_report_matches_the_spec_layout():
    report, callback = _example_report()
    line = callback.__code__.co_firstlineno
    expected = f"""\
loky-check  app.jobs:work   pickler: pickle   1 error, 1 warning

error    cfg  (args[1])   cfg.hooks[1]['on_done']
         _thread.lock  [sync_primitive]
         A lock belongs to one process; no pickler can send it.
         fix: create it in the worker (initializer=...), or drop it in __getstate__.

warning  callback  (kwargs['callback'])   callback
         function <lambda> at tests/test_engine.py:{line}  [lambda]
         Standard pickle stores functions by name and a lambda has none; cloudpickle carries it.
         fix: loky.wrap_non_picklable_objects(callback)   (checked: the wrapped copy round-trips)"""
    assert str(report) == expected


def test_json_report_schema():
    report, callback = _example_report()
    data = json.loads(json.dumps(report.to_dict()))
    assert list(data) == ["schema", "target", "pickler", "ok", "findings", "reducers"]
    assert data["reducers"] == []
    assert data["schema"] == SCHEMA == "loky-check/1"
    assert (data["target"], data["pickler"], data["ok"]) == (
        "app.jobs:work",
        "pickle",
        False,
    )
    first, second = data["findings"]
    assert list(first) == list(FINDING_KEYS)
    assert first == {
        "severity": "error",
        "stage": "dump",
        "argument": "args[1]",
        "parameter": "cfg",
        "path": "cfg.hooks[1]['on_done']",
        "type": "_thread.lock",
        "category": "sync_primitive",
        "remedy": "create_in_worker",
        "message": "A lock belongs to one process; no pickler can send it.",
        "fix": "create it in the worker (initializer=...), or drop it in __getstate__.",
        "carried_by": {"pickle": False, "cloudpickle": False, "loky": False},
        "wrap_fixes": False,
        "location": None,
    }
    assert (
        second["location"] == f"tests/test_engine.py:{callback.__code__.co_firstlineno}"
    )
    assert second["wrap_fixes"] is True and second["remedy"] == "wrap"
    for finding in data["findings"]:
        assert finding["category"] in CATEGORIES
        assert finding["remedy"] in REMEDIES[finding["category"]]
        assert finding["severity"] in ("error", "warning", "info")
        assert finding["stage"] in ("dump", "load")


def test_findings_keep_the_culprit_for_in_process_use():
    lock = threading.Lock()
    [finding] = check_object([lock]).findings
    assert isinstance(finding, Finding)
    assert finding.culprit is lock


def test_report_is_a_report_and_exports_are_lazy():
    assert isinstance(check_object(1), Report)
    assert loky_check.check_call is check_call
    assert "check_object" in dir(loky_check)


def test_bad_input_gets_one_line_errors():
    with pytest.raises(
        ValueError,
        match="pickler must be one of 'pickle', 'cloudpickle', 'loky', got 'dill'",
    ):
        check_object(1, pickler="dill")
    with pytest.raises(TypeError, match="kwargs must be a dict"):
        check_call(work, (), [1])
    with pytest.raises(TypeError, match="args must be a tuple, got int"):
        check_call(work, 5)


def test_main_function_whose_global_loky_cannot_carry(monkeypatch):
    namespace = {"__name__": "__main__", "DB": threading.Lock()}
    exec("def uses_db(x):\n    return DB, x\n", namespace)
    monkeypatch.setattr(
        sys.modules["__main__"], "uses_db", namespace["uses_db"], raising=False
    )
    report = check_call(namespace["uses_db"], (1,))
    # standard pickle stores it by name (a load failure), loky's pickler takes it
    # by value and fails on the global: one finding, at the global
    [finding] = report.findings
    assert (finding.argument, finding.path, finding.category, finding.severity) == (
        "fn",
        "fn.<global DB>",
        "sync_primitive",
        "error",
    )


def test_severity_under_loky_pickler_env_pickle():
    import subprocess

    code = (
        "import json\n"
        "from loky_check import check_object\n"
        "def job():\n    pass\n"
        "r = check_object([lambda: 0, job], name='x')\n"
        "print(json.dumps([(f.path, f.category, f.severity, f.carried_by['loky']) for f in r.findings]))\n"
    )
    env = {**__import__("os").environ, "LOKY_PICKLER": "pickle"}
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    # loky's pickler is standard pickle now: what it cannot carry is an error
    assert json.loads(out.stdout) == [
        ["x[0]", "lambda", "error", False],
        ["x[1]", "main_module", "error", False],
    ]


def test_diagnose_pickling_failure_for_results_and_loads():
    from loky_check import diagnose_pickling_failure

    report = diagnose_pickling_failure({"handle": LOCK}, name="result")
    assert report.pickler == "loky"
    assert [(f.argument, f.path, f.category, f.stage) for f in report.findings] == [
        ("result", "result['handle']", "sync_primitive", "dump")
    ]
    report = diagnose_pickling_failure(
        [LOCK], name="payload", stage="load", pickler="pickle"
    )
    assert [(f.path, f.stage) for f in report.findings] == [("payload[0]", "load")]
    assert diagnose_pickling_failure([1, 2], name="result").findings == []


def test_in_worker_without_a_working_executor_is_a_one_line_error(monkeypatch):
    from loky_check import worker_probe

    def broken(executor=None):
        raise OSError("no processes left")

    monkeypatch.setattr(worker_probe, "probe_executor", broken)
    with pytest.raises(
        RuntimeError, match="in_worker=True could not run the check in a loky worker"
    ):
        check_call(work, (1, 2), in_worker=True)
