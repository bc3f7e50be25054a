"""Audit of the front ends (loky-check, check mode, reducer tests, pytest
plugin): regressions for what a user could hit that the other suites missed."""

from __future__ import annotations

import dataclasses
import decimal
import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import _helpers
import pytest


def run_cli(
    *argv: str, cwd: Path, env: dict | None = None
) -> subprocess.CompletedProcess:
    return _helpers.run_cli(*argv, cwd=cwd, env=env, timeout=90)


def assert_one_line_exit_2(result: subprocess.CompletedProcess, *fragments: str):
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    [line] = result.stderr.splitlines()
    assert line.startswith("loky-check: error: "), line
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
    for fragment in fragments:
        assert fragment in line, (fragment, line)


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("audit_frontends")
    files = {
        "app/__init__.py": "",
        "app/work.py": """
            import sys

            def work(x):
                return x

            def leaves(x):
                sys.exit(4)

            def crashes(x):
                import os
                os._exit(1)
            """,
        "app/shapes.py": """
            import functools
            from typing import Callable, Hashable, Optional

            class Job:
                def __init__(self, n: int, name: str = "job"):
                    self.n = n

            class Scaler:
                def __call__(self, x: int) -> int:
                    return x * 2

            scale = Scaler()

            def add(a: int, b: int) -> int:
                return a + b

            add_one = functools.partial(add, 1)

            def apply(fn: Callable[[int], int], x: int) -> int:
                return fn(x)

            def maybe(fn: Optional[Callable[[], None]] = None, *, hooks: list[Callable]):
                pass

            def keyed(key: Hashable) -> None:
                pass
            """,
        "app/noreducers.py": """
            SETTING = 1
            """,
        "app/georeg.py": """
            import dataclasses

            from loky.backend.reduction import register

            @dataclasses.dataclass
            class Spot:
                x: int

            def reduce_spot(spot):
                return Spot, (spot.x,)

            register(Spot, reduce_spot)
            """,
        "app/calls.py": """
            def with_lambda():
                return [((1,), {}), ((lambda v: v,), {})]

            def endless():
                while True:
                    yield ((1,), {})

            def one():
                return ((1,), {})

            def two_args():
                return ((1, 2), {})
            """,
    }
    return _helpers.write_files(root, files)


def test_endless_factory_is_refused_instead_of_hanging(project):
    result = run_cli("app.work:work", "--args-from", "app.calls:endless", cwd=project)
    assert_one_line_exit_2(
        result, "factory 'app.calls:endless' produced more than", "endless iterator"
    )


def test_sys_exit_in_the_called_function_under_run_is_one_line_exit_2(project):
    result = run_cli(
        "app.work:leaves", "--args-from", "app.calls:one", "--run", cwd=project
    )
    # not the call's own exit status (4) with no report
    assert_one_line_exit_2(
        result, "--run: the call from app.calls:one called sys.exit(4) in the worker"
    )


def test_a_call_that_kills_its_worker_under_run_is_one_line_exit_2(project):
    result = run_cli(
        "app.work:crashes", "--args-from", "app.calls:one", "--run", cwd=project
    )
    assert_one_line_exit_2(
        result,
        "--run: the call from app.calls:one crashed the worker that ran it",
        "EXIT(1)",
    )


def test_a_pickler_loky_refuses_is_one_line_exit_2(project):
    result = run_cli("app.work:work", cwd=project, env={"LOKY_PICKLER": "nosuch_pkl"})
    assert_one_line_exit_2(
        result, "LOKY_PICKLER='nosuch_pkl' cannot be used", "No module named"
    )


@pytest.mark.parametrize("mode", ["error", "warn", "bogus"])
def test_loky_pickle_check_in_the_shell_does_not_touch_the_probes(project, mode):
    """The CLI's own probe executors run unchecked: no LokyPicklingWarning
    about their internal calls, no PicklingCheckError stopping them, no
    'internal error' for a value only loky's executors would refuse."""
    result = run_cli(
        "app.work:work",
        "--args-from",
        "app.calls:with_lambda",
        "--run",
        cwd=project,
        env={"LOKY_PICKLE_CHECK": mode},
    )
    assert result.returncode == 0, (result.stdout, result.stderr)
    assert "LokyPicklingWarning" not in result.stderr
    assert "internal error" not in result.stderr
    assert "[lambda]" in result.stdout  # the argument's own finding is reported


def test_single_pair_factory_is_named_as_the_call_in_messages(project):
    result = run_cli("app.work:work", "--args-from", "app.calls:two_args", cwd=project)
    assert_one_line_exit_2(
        result, "the call from app.calls:two_args does not fit app.work:work(x)"
    )


@pytest.mark.parametrize(
    "target", ["app.shapes:Job", "app.shapes:scale", "app.shapes:add_one"]
)
def test_examples_read_hints_of_init_call_and_partial(project, target):
    """A class's hints are on its __init__, a callable instance's on its
    __call__ and a partial's on its function: typing.get_type_hints refuses
    the last two outright."""
    result = run_cli(target, "--examples", "3", "--run", cwd=project)
    assert result.returncode == 0, (result.stdout, result.stderr)
    assert "fn and 3 calls" in result.stdout


LATIN_SOURCE = (
    "# -*- coding: latin-1 -*-\n"
    "# caf\xe9 (a comment in the file's own encoding)\n"
    "import os  # kept\n"
    "\n"
    "\n"
    "def make():\n"
    "    def inner(v):  # inner\n"
    "        return v\n"
    "    return inner\n"
    "\n"
    "\n"
    "def apply(fn, v):\n"
    "    return fn(v)\n"
)


@pytest.mark.parametrize(
    "encoding, prefix", [("latin-1", b""), ("utf-8", b"\xef\xbb\xbf")]
)
def test_fix_keeps_the_source_encoding(tmp_path, encoding, prefix):
    """A PEP 263 coding cookie (or a BOM) is honoured: the file is read and
    written back in its own encoding instead of being refused."""
    source = LATIN_SOURCE if prefix == b"" else LATIN_SOURCE.split("\n", 1)[1]
    (tmp_path / "enc").mkdir()
    (tmp_path / "enc" / "__init__.py").write_text("")
    path = tmp_path / "enc" / "mod.py"
    path.write_bytes(prefix + source.encode(encoding))
    (tmp_path / "enc" / "calls.py").write_text(
        "from enc.mod import make\n\ndef calls():\n    return ((make(), 1), {})\n"
    )
    argv = ("enc.mod:apply", "--args-from", "enc.calls:calls")
    diff = run_cli(*argv, "--diff", cwd=tmp_path)
    assert diff.returncode == 0, diff.stderr
    assert "+    @wrap_non_picklable_objects" in diff.stdout
    assert path.read_bytes() == prefix + source.encode(encoding)

    fixed = run_cli(*argv, "--fix", cwd=tmp_path)
    assert fixed.returncode == 0, fixed.stderr
    data = path.read_bytes()
    assert data.startswith(prefix)
    text = data[len(prefix) :].decode(encoding)
    assert "# caf\xe9 (a comment" in text and "import os  # kept" in text
    assert "    @wrap_non_picklable_objects\n    def inner(v):  # inner" in text
    assert "from loky import wrap_non_picklable_objects" in text

    again = run_cli(*argv, "--fix", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert path.read_bytes() == data


@pytest.mark.parametrize(
    "target, parameter",
    [
        ("app.shapes:apply", "'fn' (Callable[[int], int])"),
        ("app.shapes:maybe", "'hooks'"),
    ],
)
def test_examples_refuse_to_invent_callables(project, target, parameter):
    """hypothesis' invented functions close over hypothesis internals (weakrefs):
    checking them blamed hypothesis, not the user's code."""
    result = run_cli(target, "--examples", "3", cwd=project)
    assert_one_line_exit_2(
        result,
        f"cannot build examples for parameter {parameter}",
        "use --args-from with the real callables",
    )


def test_examples_blame_no_hypothesis_internal_object(project):
    """For a Hashable hint hypothesis builds its own ArtificialRandom, which
    does not load in a worker: that is hypothesis', not a user finding."""
    result = run_cli("app.shapes:keyed", "--examples", "10", cwd=project)
    if result.returncode == 0:
        pytest.skip("this hypothesis version built no internal object")
    assert_one_line_exit_2(
        result,
        "--examples: hypothesis built a hypothesis.",
        "for key of app.shapes:keyed",
    )


@pytest.mark.parametrize(
    "argv",
    [
        ["--reducers", "app.noreducers", "app.georeg"],
        ["--reducers", "app.noreducers", "app.georeg", "app.work:work"],
        ["app.work:work", "--reducers", "app.noreducers", "app.georeg"],
        ["--reducers", "app.noreducers", "--reducers", "app.georeg"],
    ],
    ids=["modules", "modules-then-target", "target-then-modules", "repeated"],
)
def test_reducers_takes_several_modules(project, argv):
    """The synopsis is `--reducers MODULE ...`: one flag, several modules; a
    target written after them is still the target."""
    result = run_cli(*argv, "--json", cwd=project)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert [r["type"] for r in report["reducers"]] == ["app.georeg.Spot"]
    expected = "app.work:work" if "app.work:work" in argv else "reducers: "
    assert report["target"].startswith(expected)


def test_reducers_with_two_targets_is_a_usage_error(project):
    result = run_cli(
        "app.work:work", "--reducers", "app.georeg", "app.work:leaves", cwd=project
    )
    assert_one_line_exit_2(result, "unrecognized arguments: app.work:leaves")


def test_reducers_module_that_registers_nothing_says_so(project):
    human = run_cli("--reducers", "app.noreducers", cwd=project)
    assert human.returncode == 0, human.stderr
    assert "no user reducer is registered after importing app.noreducers" in (
        human.stdout
    )
    data = run_cli("--reducers", "app.noreducers", "--json", cwd=project)
    assert data.returncode == 0, data.stderr
    report = json.loads(data.stdout)
    assert report["schema"] == "loky-check/1"
    assert report["reducers"] == []  # asked for: present, even when empty


def test_fix_of_run_findings_decorates_a_local_class_but_never_an_exception(tmp_path):
    """Result findings carry only a location (the culprit stays in the
    worker): the class on that line is decorated; a local exception class is
    left for a hand fix, since a wrapped exception comes back as a
    non-exception."""
    root = _helpers.write_files(
        tmp_path,
        {
            "job/__init__.py": "",
            "job/tasks.py": """
                def fails(x: int):
                    class LocalError(Exception):
                        pass
                    raise LocalError(f"bad {x}")


                def boxed(x: int):
                    class Box:  # the result's type
                        def __init__(self, v):
                            self.v = v
                    return Box(x)
                """,
            "job/calls.py": """
                def one():
                    return ((1,), {})
                """,
        },
    )
    path = root / "job" / "tasks.py"
    before = path.read_text()
    failing = run_cli(
        "job.tasks:fails", "--args-from", "job.calls:one", "--run", "--fix", cwd=root
    )
    assert failing.returncode == 0, failing.stderr
    assert "an exception class cannot take @wrap_non_picklable_objects" in (
        failing.stdout
    )
    assert "job/tasks.py:2" in failing.stdout
    assert path.read_text() == before

    boxed = run_cli(
        "job.tasks:boxed", "--args-from", "job.calls:one", "--run", "--fix", cwd=root
    )
    assert boxed.returncode == 0, boxed.stderr
    assert "added @wrap_non_picklable_objects to class boxed.<locals>.Box" in (
        boxed.stdout
    )
    assert (
        "    @wrap_non_picklable_objects\n    class Box:  # the result's type"
        in path.read_text()
    )


# -- reducer round-trip tests ------------------------------------------------------


class PlainCounter:
    """No __repr__ of its own: the counterexample must still show its values."""

    def __init__(self, count: int, name: str):
        self.count = count
        self.name = name


class SlottedCounter:
    __slots__ = ("count",)

    def __init__(self, count: int):
        self.count = count


def _reduce_plain_dropping_count(obj):
    return PlainCounter, (0, obj.name)


def _reduce_slotted_dropping_count(obj):
    return SlottedCounter, (0,)


def test_counterexample_of_a_class_without_repr_shows_its_state():
    from loky import ProcessPoolExecutor
    from loky_check import check_reducers

    reducers = {
        PlainCounter: _reduce_plain_dropping_count,
        SlottedCounter: _reduce_slotted_dropping_count,
    }
    with ProcessPoolExecutor(max_workers=1, job_reducers=reducers) as pool:
        plain, slotted = check_reducers(
            [PlainCounter, SlottedCounter], max_examples=20, executor=pool
        )
    assert not plain.ok and not slotted.ok
    # hypothesis shrinks to the smallest count the reducer loses
    assert plain.counterexample == "PlainCounter(count=1, name='')"
    assert plain.difference == ".count: 1 != 0"
    assert slotted.counterexample == "SlottedCounter(count=1)"
    assert " object at 0x" not in str(plain)


# -- check mode: a result that reaches the parent but does not load there ----------


def _refuse_to_rebuild(value):
    raise ValueError(f"cannot rebuild {value}")


class RebuildsBadly:
    def __init__(self, value):
        self.value = value

    def __reduce__(self):
        return _refuse_to_rebuild, (self.value,)


class TwoArgumentError(Exception):
    def __init__(self, message, code):
        super().__init__(message)  # `code` is not in args: it cannot be rebuilt
        self.code = code


class RefusesState:
    def __init__(self):
        self.value = 1

    def __setstate__(self, state):
        raise ValueError("no state")


def _result_item(exception=None, result=None):
    from loky.process_executor import _ExceptionWithTraceback, _ResultItem

    if exception is not None:
        exception = _ExceptionWithTraceback(exception)
    return _ResultItem(7, exception, result)


@pytest.mark.parametrize(
    "item, argument, path, summary",
    [
        (
            _result_item(result={"k": [RebuildsBadly(3)]}),
            "result",
            "result['k'][0]",
            f"{__name__}._refuse_to_rebuild raised",
        ),
        (
            _result_item(exception=TwoArgumentError("boom", 2)),
            "exception",
            "exception",
            f"{__name__}.TwoArgumentError raised",
        ),
        (
            _result_item(result=[1, RefusesState()]),
            "result",
            "result[1]",
            f"{__name__}.RefusesState.__setstate__ raised",
        ),
        ((7, None, (RebuildsBadly(1),)), "result", "result[0]", None),
    ],
    ids=["reconstructor", "exception-init", "setstate", "plain-tuple-item"],
)
def test_result_that_does_not_load_in_the_parent_is_diagnosed(
    item, argument, path, summary
):
    import pickle

    from loky_check.runtime import annotate_result_load_failure

    payload = pickle.dumps(item)
    with pytest.raises(Exception):  # noqa: B017 - each fails its own way
        pickle.loads(payload)
    error = RuntimeError("A result has failed to un-serialize.")
    annotate_result_load_failure(error, payload)
    [note] = error.__notes__
    assert note.startswith(
        f"loky pickle_check: the task's {argument} cannot be loaded back in the parent."
    )
    from loky_check.runtime import diagnose_result_load_failure

    [finding] = diagnose_result_load_failure(payload).findings
    assert (finding.argument, finding.path, finding.stage) == (argument, path, "load")
    assert finding.category == "unpickle_error" and finding.severity == "error"
    if summary is not None:
        assert finding.summary == summary


def test_result_load_diagnosis_never_raises_on_garbage():
    from loky_check.runtime import annotate_result_load_failure

    error = RuntimeError("x")
    annotate_result_load_failure(error, b"not a pickle")
    assert not getattr(error, "__notes__", None)


@dataclasses.dataclass
class ForgetfulCache:
    """Listed explicitly, no reducer: its own __getstate__ loses a field."""

    key: str
    hits: int = 0

    def __getstate__(self):
        return {"key": self.key}


def test_explicit_type_without_reducer_reads_as_default_pickling():
    from loky import ProcessPoolExecutor
    from loky_check import check_reducers

    with ProcessPoolExecutor(max_workers=1) as pool:
        [result] = check_reducers([ForgetfulCache], max_examples=20, executor=pool)
    assert not result.ok
    assert result.reducer == "default pickling"
    assert result.difference == ".hits: 1 != 0"
    text = str(result)
    assert "reducer from listed explicitly" not in text
    assert "type listed explicitly, pickled its default way" in text
    assert (
        "fix: make ForgetfulCache's __getstate__ / __reduce__ keep every field" in text
    )


@dataclasses.dataclass
class Price:
    amount: decimal.Decimal


def _reduce_price(price):
    return Price, (price.amount,)


def test_decimal_nan_round_trips_as_equal():
    """hypothesis draws Decimal NaNs; a faithful reducer keeps them, and
    Decimal('NaN') != Decimal('NaN') must not read as a loss."""
    from loky import ProcessPoolExecutor
    from loky_check import check_reducers
    from loky_check.equality import difference

    nan = decimal.Decimal("NaN")
    assert difference(nan, decimal.Decimal("NaN")) is None
    assert difference(decimal.Decimal("sNaN"), decimal.Decimal("sNaN")) is None
    assert difference(nan, decimal.Decimal("-NaN")) is not None
    assert difference(nan, decimal.Decimal("1")) is not None
    assert difference(decimal.Decimal("1"), decimal.Decimal("2")) is not None

    with ProcessPoolExecutor(
        max_workers=1, job_reducers={Price: _reduce_price}
    ) as pool:
        [result] = check_reducers([Price], max_examples=100, executor=pool)
    assert result.ok, str(result)


def test_numpy_nat_scalars_compare_equal():
    np = pytest.importorskip("numpy")
    from loky_check.equality import difference

    assert difference(np.datetime64("NaT"), np.datetime64("NaT")) is None
    assert difference(np.timedelta64("NaT"), np.timedelta64("NaT")) is None
    assert difference(np.datetime64("NaT", "s"), np.datetime64("NaT", "ms")) is not None
    assert difference(np.datetime64("NaT"), np.datetime64(1, "s")) is not None


def test_fix_through_a_symlink_rewrites_the_target_and_keeps_the_link(tmp_path):
    real = tmp_path / "shared" / "tasks_impl.py"
    real.parent.mkdir()
    real.write_text(
        "def make():\n    def inner(v):\n        return v\n    return inner\n\n\n"
        "def apply(fn, v):\n    return fn(v)\n"
    )
    _helpers.write_files(
        tmp_path,
        {
            "lnk/__init__.py": "",
            "lnk/calls.py": """
                from lnk.tasks import make

                def calls():
                    return ((make(), 1), {})
                """,
        },
    )
    link = tmp_path / "lnk" / "tasks.py"
    try:
        link.symlink_to(real)
    except OSError:
        pytest.skip("no symlinks here")
    result = run_cli(
        "lnk.tasks:apply", "--args-from", "lnk.calls:calls", "--fix", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert link.is_symlink()
    assert "    @wrap_non_picklable_objects\n    def inner(v):" in real.read_text()


def test_result_naming_a_module_the_parent_cannot_import_is_diagnosed():
    from loky_check.runtime import diagnose_result_load_failure

    # (7, None, {'k': nosuch_module_for_audit.Thing()}) in protocol 0
    payload = b"(I7\nN(dp0\nVk\ncnosuch_module_for_audit\nThing\n)Rst."
    [finding] = diagnose_result_load_failure(payload).findings
    assert (finding.argument, finding.path) == ("result", "result['k']")
    assert finding.type == "nosuch_module_for_audit.Thing"
    assert finding.category == "not_importable"
    assert "in the parent" in finding.message


def _increment(v: int) -> int:
    return v + 1


@dataclasses.dataclass
class Hooked:
    name: str
    hook: Callable[[int], int]


def _reduce_hooked(obj):
    return Hooked, (obj.name, obj.hook)


def test_reducer_of_a_type_with_a_callable_field_needs_a_strategy():
    """Not a false 'reduce_error' blaming hypothesis' own weakrefs: the type
    asks for a strategy; with one registered, the faithful reducer holds."""
    from hypothesis import strategies as st

    from loky import ProcessPoolExecutor
    from loky_check import check_reducers, register_strategy
    from loky_check.strategies import _STRATEGY_REGISTRY

    with ProcessPoolExecutor(
        max_workers=1, job_reducers={Hooked: _reduce_hooked}
    ) as pool:
        [result] = check_reducers([Hooked], max_examples=10, executor=pool)
        assert not result.ok
        assert "parameter 'hook' of Hooked() is a Callable" in result.difference
        assert "loky_check.register_strategy(Hooked" in result.difference
        register_strategy(
            Hooked, st.builds(Hooked, name=st.text(), hook=st.just(_increment))
        )
        try:
            [result] = check_reducers([Hooked], max_examples=10, executor=pool)
        finally:
            _STRATEGY_REGISTRY.pop(Hooked, None)
    assert result.ok, str(result)


WRAPPABLE_OR_NOT = """\
import dataclasses


def make():
    class Plain:
        def __init__(self, v):
            self.v = v

    class Scaler:  # used as a callable
        def __call__(self, v):
            return v * 2

    @dataclasses.dataclass
    class Row:
        v: int

    return Plain(1), Scaler(), Row(1)
"""


def test_fix_leaves_alone_classes_a_wrapper_would_break():
    """A wrapped class makes wrapper instances that delegate attributes and
    methods only: a class used through __call__ (or ==, len, ...) or a
    dataclass would change behaviour, so it is a manual fix."""
    from loky_check.fixer import DefinitionSite, add_wrap_decorators

    sites = [
        DefinitionSite("m.py", f"make.<locals>.{name}", None, "class")
        for name in ("Plain", "Scaler", "Row")
    ]
    result = add_wrap_decorators(WRAPPABLE_OR_NOT, sites)
    assert result.added == [(5, "class make.<locals>.Plain")]
    assert "    @wrap_non_picklable_objects\n    class Plain:" in result.new
    assert "    class Scaler:  # used as a callable" in result.new
    assert "@wrap_non_picklable_objects\n    class Scaler" not in result.new
    assert "@wrap_non_picklable_objects\n    @dataclasses.dataclass" not in result.new
    reasons = {qualname: why for _site, _line, qualname, why in result.unsafe}
    assert reasons["class make.<locals>.Scaler"].startswith("it defines __call__")
    assert reasons["class make.<locals>.Row"].startswith("it is a dataclass")


METHODS_SOURCE = """\
class Runner:
    def method(self, x):
        return x

    @staticmethod
    def helper(x):
        return x


class Plain:
    def __init__(self, v):
        self.v = v
"""


def test_fix_never_wraps_a_method_nor_the_class_of_a_method_it_sends():
    """A wrapped method loses its self binding; a wrapped class no longer has
    the method sent on its own. Both become manual fixes; an unrelated class
    is still decorated."""
    from loky_check.fixer import DefinitionSite, add_wrap_decorators

    sites = [
        DefinitionSite("m.py", "Runner.method", 2, "def"),
        DefinitionSite("m.py", "Runner.helper", None, "def"),
        DefinitionSite("m.py", "Runner", None, "class"),
        DefinitionSite("m.py", "Plain", None, "class"),
    ]
    result = add_wrap_decorators(METHODS_SOURCE, sites)
    assert result.added == [(10, "class Plain")]
    reasons = {what: why for _site, _line, what, why in result.unsafe}
    assert reasons["def Runner.method"].startswith("it is a method")
    assert reasons["def Runner.helper"].startswith("it is a method")
    assert reasons["class Runner"].startswith("its method Runner.method is sent")
    assert "@wrap_non_picklable_objects\nclass Runner" not in result.new
    assert "@wrap_non_picklable_objects\nclass Plain" in result.new
