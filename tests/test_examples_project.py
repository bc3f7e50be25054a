"""The README's main command on examples/shop, and ``--fix`` on a copy of it.

examples/shop carries five real pickling mistakes (a lock inside the config
dataclass, an open file, a lambda callback, a nested function, a definition
under the ``__main__`` guard); loky-check must name each one exactly, and the
fixer must remove the two it can rewrite without touching the others.
"""

from __future__ import annotations

import difflib
import json
import shutil
import subprocess
from pathlib import Path

import _helpers
import pytest

REPO = Path(__file__).resolve().parent.parent
SHOP = REPO / "examples" / "shop"
TARGET = "examples/shop/shop/jobs.py:settle_orders"
FACTORY = "examples/shop/nightly.py:nightly_calls"

# (severity, argument, parameter, path, category, stage) of every mistake.
EXPECTED = {
    ("error", "args[1]", "config", "config.rates_lock", "sync_primitive", "dump"),
    ("error", "kwargs['audit_log']", "audit_log", "audit_log", "file_handle", "dump"),
    ("warning", "kwargs['discount']", "discount", "discount", "local_function", "dump"),
    (
        "warning",
        "kwargs['on_progress']",
        "on_progress",
        "on_progress",
        "lambda",
        "dump",
    ),
    ("warning", "kwargs['receipt']", "receipt", "receipt", "main_module", "load"),
}
WRAP_FIXABLE = {"local_function", "main_module"}


def run_cli(*argv: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return _helpers.run_cli(*argv, cwd=cwd, timeout=120)


def _keys(report: dict) -> set[tuple]:
    return {
        (
            f["severity"],
            f["argument"],
            f["parameter"],
            f["path"],
            f["category"],
            f["stage"],
        )
        for f in report["findings"]
    }


def _line_of(path: Path, text: str) -> int:
    return path.read_text().splitlines().index(text) + 1


def test_readme_command_reports_every_mistake():
    before = _snapshot(SHOP)
    result = run_cli(TARGET, "--args-from", FACTORY)
    # Exit 1: the example has error-level findings; the report is still printed.
    assert result.returncode == 1, result.stderr
    out = result.stdout
    assert (
        out.splitlines()[0]
        == f"loky-check  {TARGET}   pickler: pickle   2 errors, 3 warnings"
    )
    assert (
        out.splitlines()[-1]
        == "FAIL: 2 errors, 3 warnings in fn and 2 calls (pickler: pickle)"
    )
    assert (
        "error    config  (args[1])   config.rates_lock\n         _thread.lock  [sync_primitive]"
        in out
    )
    discounts = SHOP / "shop" / "discounts.py"
    rule_line = _line_of(discounts, "    def rule(order: Order) -> float:")
    assert (
        "function make_discount_rule.<locals>.rule at "
        f"examples/shop/shop/discounts.py:{rule_line}  [local_function]"
    ) in out
    receipt_line = _line_of(
        SHOP / "nightly.py",
        "    def format_receipt(order: Order, total: float) -> str:",
    )
    assert (
        f"function format_receipt at examples/shop/nightly.py:{receipt_line}  [main_module]"
        in out
    )
    # Running the check wrote nothing into the example.
    assert _snapshot(SHOP) == before


def test_readme_command_as_json():
    result = run_cli(TARGET, "--args-from", FACTORY, "--json")
    assert result.returncode == 1, result.stderr
    report = json.loads(result.stdout)
    assert _keys(report) == EXPECTED
    by_category = {f["category"]: f for f in report["findings"]}
    for category in WRAP_FIXABLE | {"lambda"}:
        assert by_category[category]["remedy"] == "wrap"
        assert by_category[category]["wrap_fixes"] is True
    assert by_category["file_handle"]["remedy"] == "create_in_worker"


@pytest.fixture
def shop_copy(tmp_path) -> Path:
    copy = tmp_path / "shop"
    shutil.copytree(SHOP, copy, ignore=shutil.ignore_patterns("__pycache__"))
    return copy


def _snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): p.read_text() for p in sorted(root.rglob("*.py"))}


def test_fix_on_a_copy_removes_the_wrap_fixable_findings(shop_copy):
    argv = ["shop/jobs.py:settle_orders", "--args-from", "nightly.py:nightly_calls"]
    before = _snapshot(shop_copy)

    diff = run_cli(*argv, "--diff", cwd=shop_copy)
    assert diff.returncode == 1, diff.stderr
    assert _snapshot(shop_copy) == before
    assert (
        diff.stdout.count("+@wrap_non_picklable_objects") == 0
    )  # both are indented defs
    assert diff.stdout.count("+    @wrap_non_picklable_objects\n") == 2
    assert diff.stdout.count("+from loky import wrap_non_picklable_objects\n") == 2
    lambda_line = _line_of(
        shop_copy / "nightly.py",
        '                "on_progress": lambda done: print(f"settled {done} orders"),',
    )
    assert (
        f"nightly.py:{lambda_line}  on_progress (lambda): an inline lambda"
        in diff.stderr
    )

    fixed = run_cli(*argv, "--fix", cwd=shop_copy)
    assert fixed.returncode == 1, fixed.stderr  # the lock and the file remain errors
    assert fixed.stdout.splitlines()[-1].endswith(
        "; fixed 2 definitions in 2 files, 1 to change by hand"
    )
    after = _snapshot(shop_copy)
    assert {name for name in after if after[name] != before[name]} == {
        "nightly.py",
        "shop/discounts.py",
    }
    # Comments and formatting kept: the only changes are inserted lines, the
    # import as its own group before the project's imports (as isort would).
    for name in ("nightly.py", "shop/discounts.py"):
        old_lines, new_lines = before[name].splitlines(), after[name].splitlines()
        matcher = difflib.SequenceMatcher(a=old_lines, b=new_lines, autojunk=False)
        inserted = []
        for tag, i1, i2, j1, j2 in matcher.get_opcodes():
            assert tag in ("equal", "insert"), (name, tag, old_lines[i1:i2])
            if tag == "insert":
                inserted.extend(new_lines[j1:j2])
        assert sorted(inserted) == sorted(
            [
                "",
                "from loky import wrap_non_picklable_objects",
                "    @wrap_non_picklable_objects",
            ]
        )
        import_at = new_lines.index("from loky import wrap_non_picklable_objects")
        assert new_lines[import_at - 1] == new_lines[import_at + 1] == ""

    check = run_cli(*argv, "--json", cwd=shop_copy)
    assert check.returncode == 1
    remaining = _keys(json.loads(check.stdout))
    assert {key[4] for key in remaining} == {"sync_primitive", "file_handle", "lambda"}

    again = run_cli(*argv, "--fix", cwd=shop_copy)
    assert again.returncode == 1
    assert _snapshot(shop_copy) == after  # a second --fix changes nothing


def test_run_catches_a_generator_result():
    result = run_cli(
        "examples/shop/shop/jobs.py:receipts_by_customer",
        "--examples",
        "3",
        "--run",
        "--json",
    )
    assert result.returncode == 1, result.stderr
    findings = json.loads(result.stdout)["findings"]
    results = [f for f in findings if f["argument"] == "result"]
    assert [(f["category"], f["severity"], f["type"]) for f in results] == [
        ("generator", "error", "builtins.generator")
    ]
