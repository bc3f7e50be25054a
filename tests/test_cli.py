"""``loky-check`` end to end: every option as a real subprocess (exit codes,
stdout, stderr), on a small throwaway project written to a temporary folder."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import psutil
import pytest
from _helpers import cli_env, run_cli, write_files

from loky_check.report import FINDING_KEYS

FILES = {
    "app/__init__.py": "",
    "app/work.py": """
        import threading

        import loky_check
        from hypothesis import strategies as st


        class Handle:
            \"\"\"A connection-like object that holds a lock.\"\"\"

            def __init__(self, name: str):
                self.name = name
                self.lock = threading.Lock()


        loky_check.register_strategy(Handle, st.builds(Handle, st.text(max_size=3)))


        def total(values: list[int], scale: int) -> int:
            return sum(values) * scale


        def use(handle: Handle) -> str:
            return handle.name


        def numbers(n: int):
            return (i for i in range(n))


        def make_rule(k):
            # the rule is built per campaign
            def rule(v):
                return v * k

            return rule


        def apply(rule, values):
            return [rule(v) for v in values]


        class Shop:
            def __init__(self, n: int):
                self.n = n

            def price(self, qty: int) -> int:
                return self.n * qty
        """,
    "app/calls.py": """
        from app.work import make_rule


        def good():
            return [(([1, 2], 3), {}), (([4], 1), {})]


        def rules():
            return ((make_rule(2), [1, 2]), {})
        """,
    "app/geo.py": """
        import copyreg


        class Point:
            def __init__(self, x: float, y: float):
                self.x, self.y = x, y

            def __eq__(self, other):
                return isinstance(other, Point) and (self.x, self.y) == (other.x, other.y)


        def reduce_point(p):
            return Point, (p.x, 0.0)  # drops y: a lossy reducer


        copyreg.pickle(Point, reduce_point)
        """,
    "app/money.py": """
        import copyreg


        class Money:
            def __init__(self, cents: int):
                self.cents = cents

            def __eq__(self, other):
                return isinstance(other, Money) and self.cents == other.cents


        def reduce_money(m):
            return Money, (m.cents,)


        copyreg.pickle(Money, reduce_money)
        """,
    "app/noisy.py": """
        print("connecting to the warehouse...")


        def work(x: int) -> int:
            return x
        """,
    "script.py": """
        def work(x):
            return x
        """,
}


# Line of `def rule(v):` in app/work.py, where findings and fixes point.
RULE_LINE = (
    textwrap.dedent(FILES["app/work.py"])
    .lstrip()
    .splitlines()
    .index("    def rule(v):")
    + 1
)


def run_many(
    *argvs: list[str], cwd: Path, timeout: float = 90, env: dict | None = None
) -> list:
    """Run several ``python -m loky_check`` at once (they are independent, and
    most of their time is spent starting interpreters and workers)."""
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "loky_check", *argv],
            cwd=cwd,
            env=cli_env(env),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for argv in argvs
    ]
    results = []
    try:
        for proc, argv in zip(procs, argvs, strict=True):
            stdout, stderr = proc.communicate(timeout=timeout)
            results.append(
                subprocess.CompletedProcess(argv, proc.returncode, stdout, stderr)
            )
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return results


def _write(root: Path) -> Path:
    return write_files(root, FILES)


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    return _write(tmp_path_factory.mktemp("cli"))


def test_callable_alone_is_ok_with_console_script(project):
    script = Path(sys.executable).parent / "loky-check"
    assert script.exists(), "the console script is declared in pyproject.toml"
    result = subprocess.run(
        [str(script), "app.work:total"],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "loky-check  app.work:total   pickler: pickle   ok"
    assert lines[-1] == "ok: 0 errors, 0 warnings in fn (pickler: pickle)"
    assert "\x1b[" not in result.stdout  # not a terminal: no colour
    assert result.stderr == ""


def test_method_and_file_targets(project):
    targets = ["app.work:Shop.price", "app/work.py:total"]
    *plain, method_examples = run_many(
        *([t] for t in targets), ["app.work:Shop.price", "--examples", "2"], cwd=project
    )
    for target, result in zip(targets, plain, strict=True):
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith(
            f"loky-check  {target}   pickler: pickle   ok\n"
        )
    # --examples builds `self` of a method as an instance of its class.
    assert method_examples.returncode == 0, method_examples.stderr
    assert method_examples.stdout.splitlines()[-1] == (
        "ok: 0 errors, 0 warnings in fn and 2 calls (pickler: pickle)"
    )


def test_args_from_checks_every_call(project):
    result = run_cli("app.work:total", "--args-from", "app.calls:good", cwd=project)
    assert result.returncode == 0, result.stderr
    assert (
        result.stdout.splitlines()[-1]
        == "ok: 0 errors, 0 warnings in fn and 2 calls (pickler: pickle)"
    )


def test_warning_passes_but_fails_with_strict(project):
    argv = ["app.work:apply", "--args-from", "app.calls:rules"]
    result, strict, exit_zero = run_many(
        argv, [*argv, "--strict"], [*argv, "--strict", "--exit-zero"], cwd=project
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "1 warning" in out.splitlines()[0]
    assert "warning  rule  (args[0])   rule\n" in out
    assert "[local_function]" in out and "wrap_non_picklable_objects(rule)" in out
    assert out.splitlines()[-1].endswith("(warnings do not fail without --strict)")
    assert strict.returncode == 1
    assert strict.stdout.splitlines()[-1].startswith("FAIL: 0 errors, 1 warning")
    # --exit-zero: the same report, but findings do not fail the command
    assert exit_zero.returncode == 0, exit_zero.stderr
    assert exit_zero.stdout == strict.stdout


def test_script_target_is_main_module(project):
    result = run_cli("script.py:work", cwd=project)
    assert result.returncode == 0, result.stderr
    # A script's top-level def lives in __main__, which a loky worker does not
    # re-run: standard pickle's by-name reference cannot be loaded there.
    assert (
        "warning  fn   fn\n         function work at script.py:1  [main_module]"
        in result.stdout
    )


def test_json_report(project):
    result = run_cli(
        "app.work:apply", "--args-from", "app.calls:rules", "--json", cwd=project
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["schema"] == "loky-check/1"
    assert report["target"] == "app.work:apply"
    assert report["pickler"] == "pickle"
    assert report["ok"] is False
    [finding] = report["findings"]
    assert tuple(finding) == FINDING_KEYS
    assert finding["severity"] == "warning"
    assert (finding["argument"], finding["parameter"], finding["path"]) == (
        "args[0]",
        "rule",
        "rule",
    )
    assert (finding["category"], finding["remedy"]) == ("local_function", "wrap")
    assert finding["carried_by"] == {"pickle": False, "cloudpickle": True, "loky": True}
    assert finding["wrap_fixes"] is True
    assert finding["location"].endswith(f"app/work.py:{RULE_LINE}")


def test_pickler_option(project):
    # cloudpickle (and loky's default pickler) carry a nested function by value.
    picklers = ["cloudpickle", "loky"]
    argv = ["app.work:apply", "--args-from", "app.calls:rules", "--strict", "--pickler"]
    results = run_many(*([*argv, p] for p in picklers), cwd=project)
    for pickler, result in zip(picklers, results, strict=True):
        assert result.returncode == 0, result.stdout + result.stderr
        assert result.stdout.startswith(
            f"loky-check  app.work:apply   pickler: {pickler}   ok\n"
        )


def test_examples_use_registered_strategies(project):
    result, plain = run_many(
        ["app.work:use", "--examples", "3"],
        ["app.work:total", "--examples", "5", "--json"],
        cwd=project,
    )
    assert result.returncode == 1, result.stderr
    assert "error    handle  (args[0])   handle.lock\n" in result.stdout
    assert "[sync_primitive]" in result.stdout
    assert (
        result.stdout.splitlines()[-1]
        == "FAIL: 1 error, 0 warnings in fn and 3 calls (pickler: pickle)"
    )
    assert plain.returncode == 0, plain.stderr
    assert json.loads(plain.stdout)["findings"] == []


def test_run_checks_return_values_in_a_worker(project):
    sent_only, result, fine = run_many(
        ["app.work:numbers", "--examples", "2"],
        ["app.work:numbers", "--examples", "2", "--run", "--json"],
        ["app.work:total", "--args-from", "app.calls:good", "--run"],
        cwd=project,
    )
    # The arguments travel fine; only running the call shows the result cannot.
    assert sent_only.returncode == 0, sent_only.stderr
    assert result.returncode == 1, result.stderr
    [finding] = json.loads(result.stdout)["findings"]
    assert (finding["argument"], finding["category"]) == ("result", "generator")
    assert finding["type"] == "builtins.generator"
    assert fine.returncode == 0, fine.stdout + fine.stderr


def _processes_marked(marker: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get("LOKY_CHECK_TEST_MARKER") == marker:
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def test_no_worker_outlives_the_command(project):
    # Workers inherit the environment: any process still carrying the marker
    # after the commands exited is a worker they left behind.
    marker = uuid.uuid4().hex
    results = run_many(
        ["app.work:numbers", "--examples", "2", "--run"],
        ["--reducers", "app.money", "--examples", "5"],
        cwd=project,
        env={"LOKY_CHECK_TEST_MARKER": marker},
    )
    assert [r.returncode for r in results] == [1, 0], [r.stderr for r in results]
    left = _processes_marked(marker)
    for proc in left:
        proc.kill()
    assert left == []


def test_reducers_with_and_without_target(project):
    lossy, as_json, with_target = run_many(
        ["--reducers", "app.geo"],
        ["--reducers", "app.geo", "--examples", "20", "--json"],
        ["app.work:total", "--reducers", "app.money"],
        cwd=project,
    )
    assert lossy.returncode == 1, lossy.stderr
    assert lossy.stdout.startswith(
        "loky-check  reducers: app.geo   pickler: pickle   0/1 reducers hold"
    )
    assert "app.geo.reduce_point" in lossy.stdout and ".y: " in lossy.stdout
    assert as_json.returncode == 1
    [reducer] = json.loads(as_json.stdout)["reducers"]
    assert (reducer["type"], reducer["ok"]) == ("app.geo.Point", False)
    assert lossy.stdout.splitlines()[-1] == (
        "FAIL: 0/1 reducers hold in the registered reducers (pickler: pickle)"
    )
    assert with_target.returncode == 0, with_target.stdout + with_target.stderr
    assert "1/1 reducers hold" in with_target.stdout.splitlines()[0]
    assert with_target.stdout.splitlines()[-1] == (
        "ok: 0 errors, 0 warnings, 1/1 reducers hold in fn + the registered"
        " reducers (pickler: pickle)"
    )


def test_user_output_does_not_break_json(project):
    result = run_cli("app.noisy:work", "--json", cwd=project)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["ok"] is True
    assert "connecting to the warehouse" in result.stderr


def test_diff_then_fix_then_clean(tmp_path):
    root = _write(tmp_path)
    work = root / "app" / "work.py"
    original = work.read_text()
    argv = ["app.work:apply", "--args-from", "app.calls:rules", "--strict"]

    diff = run_cli(*argv, "--diff", cwd=root)
    assert diff.returncode == 1, diff.stderr
    assert diff.stdout.startswith("--- a/app/work.py\n+++ b/app/work.py\n")
    assert "+from loky import wrap_non_picklable_objects\n" in diff.stdout
    assert (
        "     # the rule is built per campaign\n"
        "+    @wrap_non_picklable_objects\n"
        "     def rule(v):\n"
    ) in diff.stdout
    assert (
        f"app/work.py:{RULE_LINE}  would add @wrap_non_picklable_objects to def make_rule.<locals>.rule"
        in diff.stderr
    )
    assert work.read_text() == original  # --diff writes nothing

    fixed = run_cli(*argv, "--fix", cwd=root)
    # Every warning was fixed, so even --strict passes.
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    assert (
        f"  app/work.py:{RULE_LINE}  added @wrap_non_picklable_objects to def make_rule.<locals>.rule"
        in fixed.stdout
    )
    assert fixed.stdout.splitlines()[-1].endswith("; fixed 1 definition in 1 file")
    after_fix = work.read_text()
    # The applied change is exactly the diff that was shown.
    applied = subprocess.run(
        [
            "diff",
            "-u",
            "--label",
            "a/app/work.py",
            "--label",
            "b/app/work.py",
            "-",
            str(work),
        ],
        input=original,
        capture_output=True,
        text=True,
    ).stdout
    assert applied == diff.stdout

    clean = run_cli(*argv, cwd=root)
    assert clean.returncode == 0, clean.stdout
    assert clean.stdout.startswith(
        "loky-check  app.work:apply   pickler: pickle   ok\n"
    )

    again = run_cli(*argv, "--fix", cwd=root)
    assert again.returncode == 0
    assert work.read_text() == after_fix  # idempotent
    assert again.stdout.splitlines()[-1].endswith("; fixed 0 definitions in 0 files")


def _run_on_terminal(argv: list[str], cwd: Path, env: dict) -> str:
    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "loky_check", *argv],
            cwd=cwd,
            env=env,
            stdout=slave,
            stderr=subprocess.DEVNULL,
        )
    finally:
        os.close(slave)
    chunks = []
    try:
        while True:
            try:
                data = os.read(master, 4096)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
    finally:
        os.close(master)
        proc.wait(timeout=90)
    assert proc.returncode == 1
    return b"".join(chunks).decode()


def test_colour_only_on_a_terminal_and_no_color_respected(project):
    env = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "TERM")}
    env["TERM"] = "xterm"
    argv = ["app.work:use", "--examples", "1"]
    coloured = _run_on_terminal(argv, project, env)
    assert "\x1b[31;1merror\x1b[0m" in coloured
    plain = _run_on_terminal(argv, project, {**env, "NO_COLOR": "1"})
    assert "\x1b[" not in plain and "error    handle" in plain


def test_help_lists_every_option(project):
    result = run_cli("--help", cwd=project)
    assert result.returncode == 0
    for option in (
        "--args-from",
        "--examples",
        "--run",
        "--pickler",
        "--reducers",
        "--fix",
        "--diff",
        "--json",
        "--strict",
    ):
        assert option in result.stdout


def test_main_in_process_returns_the_exit_status(capsys):
    from loky_check.cli import main

    assert main(["nosuchmodule_xyz:f"]) == 2
    captured = capsys.readouterr()
    assert captured.err == (
        "loky-check: error: no module named 'nosuchmodule_xyz' (target 'nosuchmodule_xyz:f')\n"
    )
    assert captured.out == ""
    assert main(["--help"]) == 0
    assert "--args-from" in capsys.readouterr().out
