"""``loky-check`` on bad input: each case a real subprocess that must exit 2
with ONE line on stderr naming the problem, no traceback, nothing on stdout,
and no file modified."""

from __future__ import annotations

import stat
import subprocess
from pathlib import Path

import _helpers
import pytest

REPO = Path(__file__).resolve().parent.parent
SHOP = REPO / "examples" / "shop"


def run_cli(*argv: str, cwd: Path) -> subprocess.CompletedProcess:
    return _helpers.run_cli(*argv, cwd=cwd, timeout=60)


def assert_usage_error(result: subprocess.CompletedProcess, *fragments: str) -> str:
    """Exit 2, exactly one stderr line with every fragment, no traceback."""
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    [line] = lines
    assert line.startswith("loky-check: error: "), line
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
    for fragment in fragments:
        assert fragment in line, (fragment, line)
    return line


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A small package whose modules go wrong in every documented way."""
    root = tmp_path_factory.mktemp("badinput")
    files = {
        "app/__init__.py": "",
        "app/work.py": """
            import threading

            RATE = 0.2

            def total(values: list[int], scale: int) -> int:
                return sum(values) * scale

            def needs(values):
                return values

            def make_rule(k):
                def rule(v):
                    return v * k
                return rule

            def apply(rule, values):
                return [rule(v) for v in values]

            def takes_lock(lock: threading.Lock) -> None:
                pass
            """,
        "app/calls.py": """
            import os
            from app import rules

            def boom():
                config = {}
                return ((config["db"],), {})

            def number():
                return 42

            def triple():
                return [((1,), {}, "extra")]

            def bad_kwargs():
                return [((1,), ["not", "a", "dict"])]

            def empty():
                return []

            def number_pairs():
                return [(([1], 2), {}), (([1],), {})]

            def rule_calls():
                return ((rules.make_rule(2), [1, 2]), {})

            def vanishing_rule_calls():
                rule = rules.make_rule(2)
                os.remove(rules.__file__)
                return ((rule, [1, 2]), {})
            """,
        "app/rules.py": """
            def make_rule(k):
                def rule(v):
                    return v * k
                return rule
            """,
        "app/guarded.py": """
            def work(x):
                return x

            if __name__ == "__main__":
                def guarded(x):
                    return x
            """,
        "app/fails_on_import.py": """
            raise RuntimeError("no database configured")
            """,
        "app/broken.py": """
            def f(:
                pass
            """,
        "broken_script.py": """
            def f(x):
                return x +
            """,
        "script.py": """
            def work(x):
                return x

            if __name__ == "__main__":
                def guarded(x):
                    return x
                raise SystemExit("the job must not run during a check")
            """,
    }
    return _helpers.write_files(root, files)


@pytest.mark.parametrize(
    "argv, fragments",
    [
        (["nosuchmodule_xyz:f"], ["no module named 'nosuchmodule_xyz'", "target"]),
        (["app.nosuch:f"], ["no module named 'app.nosuch'"]),
        (["app/nosuch.py:f"], ["no such file: app/nosuch.py"]),
        (["app.work:totl"], ["has no attribute 'totl'", "did you mean 'total'?"]),
        (
            ["app.work:total.nope"],
            ["'total' in module 'app.work' has no attribute 'nope'"],
        ),
        (
            ["app.guarded:guarded"],
            ["no attribute 'guarded'", "__main__", "move it to module level"],
        ),
        (["app.work:RATE"], ["target 'app.work:RATE' is not callable (it is a float)"]),
        (["app.work"], ["malformed target 'app.work'", "package.module:func"]),
        (["app.work:"], ["malformed target 'app.work:'"]),
        (
            ["app.work:1total"],
            ["malformed target", "'1total' is not a (dotted) Python name"],
        ),
        (["app work:total"], ["malformed target", "is not a module name"]),
        (["app/work.txt:total"], ["malformed target", "must name a .py file"]),
        (
            ["app.broken:f"],
            ["cannot load 'app.broken'", "SyntaxError", "app/broken.py:1"],
        ),
        (["broken_script.py:f"], ["cannot load broken_script.py", "SyntaxError", ":2"]),
        (
            ["app.fails_on_import:f"],
            ["importing 'app.fails_on_import'", "RuntimeError: no database configured"],
        ),
        (
            ["app.work:needs", "--args-from", "app.calls:boom"],
            ["factory 'app.calls:boom' raised KeyError: 'db'", "app/calls.py:6"],
        ),
        (
            ["app.work:needs", "--args-from", "app.calls:number"],
            [
                "factory 'app.calls:number' must return an (args, kwargs) pair",
                "got a int",
            ],
        ),
        (
            ["app.work:needs", "--args-from", "app.calls:triple"],
            ["item 0 is a tuple of 3 items, not an (args, kwargs) pair"],
        ),
        (
            ["app.work:needs", "--args-from", "app.calls:bad_kwargs"],
            ["kwargs of item 0 must be a dict, got list"],
        ),
        (["app.work:needs", "--args-from", "app.calls:empty"], ["returned no calls"]),
        (
            ["app.work:total", "--args-from", "app.calls:number_pairs"],
            [
                "call 1 from app.calls:number_pairs does not fit app.work:total"
                "(values: list[int], scale: int): missing a required argument: 'scale'"
            ],
        ),
        (
            ["app.work:needs", "--args-from", "app.calls"],
            ["malformed factory 'app.calls'"],
        ),
        (
            ["app.work:needs", "--args-from", "app.calls:nope"],
            ["has no attribute 'nope' (factory 'app.calls:nope')"],
        ),
        (
            ["app.work:needs", "--examples", "3"],
            ["parameter 'values'", "has no type hint", "--args-from"],
        ),
        (
            ["app.work:takes_lock", "--examples", "3"],
            [
                "cannot build examples for parameter 'lock'",
                "loky_check.register_strategy(",
            ],
        ),
        (
            ["app.work:total", "--examples", "0"],
            ["--examples", "expected a positive integer"],
        ),
        (
            ["app.work:total", "--examples", "many"],
            ["expected a positive integer, got 'many'"],
        ),
        (
            ["app.work:total", "--fix", "--diff"],
            ["--diff: not allowed with argument --fix"],
        ),
        (
            ["app.work:total", "--fix", "--json"],
            ["--fix cannot be combined with --json"],
        ),
        (
            ["app.work:total", "--diff", "--json"],
            ["--diff cannot be combined with --json"],
        ),
        (["app.work:total", "--pickler", "dill"], ["invalid choice: 'dill'"]),
        (["app.work:total", "--bogus"], ["unrecognized arguments: --bogus"]),
        ([], ["give a TARGET to check, or --reducers MODULE"]),
        (["--run", "--reducers", "json"], ["--run needs a TARGET"]),
        (
            ["app.work:needs", "--run"],
            ["--run needs calls to run", "--args-from or --examples"],
        ),
        (["--reducers", "nosuchmodule_xyz"], ["no module named 'nosuchmodule_xyz'"]),
    ],
    ids=lambda value: " ".join(value) if isinstance(value, list) else None,
)
def test_bad_input_is_one_line_exit_2(project, argv, fragments):
    assert_usage_error(run_cli(*argv, cwd=project), *fragments)


def test_script_guard_body_never_runs(project):
    # Loading script.py for a check must not run its __main__ guard body
    # (which would exit with its own message, not a check report).
    result = run_cli("script.py:work", "--json", cwd=project)
    assert result.returncode in (0, 1), result.stderr
    assert "the job must not run" not in result.stderr + result.stdout


def test_unbuildable_hint_on_the_examples_project():
    # ShopConfig's `rates_lock: threading.Lock` hint: hypothesis cannot build it.
    line = assert_usage_error(
        run_cli(
            "examples/shop/shop/jobs.py:settle_orders", "--examples", "2", cwd=REPO
        ),
        "parameter 'config' (shop.config.ShopConfig)",
        "register_strategy(ShopConfig, <strategy>)",
    )
    assert len(line) < 400


def _copy_rules(project: Path, tmp_path: Path) -> Path:
    """A private copy of the package, so that breaking its files is harmless."""
    import shutil

    copy = tmp_path / "proj"
    shutil.copytree(project, copy)
    return copy


def test_fix_on_read_only_file_changes_nothing(project, tmp_path):
    copy = _copy_rules(project, tmp_path)
    rules = copy / "app" / "rules.py"
    before = rules.read_text()
    rules.chmod(stat.S_IRUSR | stat.S_IRGRP)
    try:
        result = run_cli(
            "app.work:apply", "--args-from", "app.calls:rule_calls", "--fix", cwd=copy
        )
        assert_usage_error(result, "cannot fix app/rules.py: the file is read-only")
    finally:
        rules.chmod(stat.S_IRUSR | stat.S_IWUSR)
    assert rules.read_text() == before
    leftovers = [
        p.name for p in (copy / "app").iterdir() if p.name.startswith(".loky-check")
    ]
    assert leftovers == []


def test_fix_on_vanished_file(project, tmp_path):
    copy = _copy_rules(project, tmp_path)
    work_before = (copy / "app" / "work.py").read_text()
    result = run_cli(
        "app.work:apply",
        "--args-from",
        "app.calls:vanishing_rule_calls",
        "--fix",
        cwd=copy,
    )
    assert_usage_error(result, "cannot fix app/rules.py: the file no longer exists")
    assert not (copy / "app" / "rules.py").exists()
    assert (copy / "app" / "work.py").read_text() == work_before
