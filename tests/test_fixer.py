"""The libcst source fixer behind ``loky-check --fix`` / ``--diff`` (in process).

End-to-end runs of ``--fix`` on copies of real files are in test_cli.py and
test_examples_project.py; here the rewrite itself is pinned down.
"""

from __future__ import annotations

import importlib.util
import os
import pickle
import stat
import sys
import textwrap

import pytest

from loky_check.fixer import (
    DECORATOR,
    IMPORT_LINE,
    DefinitionSite,
    FixError,
    add_wrap_decorators,
    apply_plan,
    plan_fixes,
)
from loky_check.report import Finding

SOURCE = textwrap.dedent(
    '''\
    """Jobs module."""

    from __future__ import annotations

    import os  # needed for paths


    # A factory of rules.
    def make_rule(percent):
        """Docstring kept."""

        # the nested rule
        def rule(order):  # trailing comment
            return order * percent / 100

        return rule


    @staticmethod
    # between decorators
    @property
    def decorated():
        return 1


    def make_local_class():
        class Local:
            pass

        return Local


    CALLBACK = lambda x: x  # noqa: E731
    '''
)


def _finding(culprit, *, remedy="wrap", category="local_function", location=None):
    return Finding(
        severity="warning",
        stage="dump",
        argument="args[0]",
        parameter="rule",
        path="rule",
        type="builtins.function",
        category=category,
        remedy=remedy,
        message="",
        fix="",
        carried_by={"pickle": False, "cloudpickle": True, "loky": True},
        wrap_fixes=remedy == "wrap",
        location=location,
        culprit=culprit,
    )


@pytest.fixture
def load_module():
    """Import a file as a module for the test (and forget it afterwards)."""
    names = []

    def load(path, name):
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        names.append(name)
        spec.loader.exec_module(module)
        return module

    yield load
    for name in names:
        sys.modules.pop(name, None)


@pytest.fixture
def jobs(tmp_path, load_module):
    path = tmp_path / "jobs_fixture.py"
    path.write_text(SOURCE)
    return path, load_module(path, "jobs_fixture")


def test_nested_def_gets_decorator_and_import_comments_kept():
    new = add_wrap_decorators(
        SOURCE, [DefinitionSite("x.py", "make_rule.<locals>.rule", 13, "def")]
    ).new
    expected = SOURCE.replace(
        "import os  # needed for paths\n",
        f"import os  # needed for paths\n{IMPORT_LINE}\n",
    ).replace(
        "    # the nested rule\n    def rule(order):  # trailing comment\n",
        f"    # the nested rule\n    @{DECORATOR}\n    def rule(order):  # trailing comment\n",
    )
    assert new == expected


def test_decorator_goes_outermost_and_keeps_comments_between_decorators():
    result = add_wrap_decorators(
        SOURCE, [DefinitionSite("x.py", "decorated", 19, "def")]
    )
    assert (
        f"@{DECORATOR}\n@staticmethod\n# between decorators\n@property\ndef decorated"
        in (result.new)
    )
    assert result.added == [(22, "def decorated")]


def test_local_class_is_decorated_by_qualname():
    result = add_wrap_decorators(
        SOURCE,
        [DefinitionSite("x.py", "make_local_class.<locals>.Local", None, "class")],
    )
    assert f"    @{DECORATOR}\n    class Local:" in result.new
    assert result.added == [(27, "class make_local_class.<locals>.Local")]


def test_rewrite_is_idempotent():
    sites = [DefinitionSite("x.py", "make_rule.<locals>.rule", 13, "def")]
    once = add_wrap_decorators(SOURCE, sites).new
    # After the rewrite the code object starts at the new decorator line.
    again = add_wrap_decorators(
        once, [DefinitionSite("x.py", "make_rule.<locals>.rule", 14, "def")]
    )
    assert again.new == once
    assert again.added == []
    assert again.already == ["def make_rule.<locals>.rule"]
    assert once.count(IMPORT_LINE) == 1


def test_existing_loky_import_is_extended_not_duplicated():
    source = "from loky import get_reusable_executor\n\n\ndef outer():\n    def f():\n        pass\n    return f\n"
    new = add_wrap_decorators(
        source, [DefinitionSite("x.py", "outer.<locals>.f", 5, "def")]
    ).new
    assert new.count("from loky import") == 1
    assert DECORATOR in new.splitlines()[0]
    assert "get_reusable_executor" in new.splitlines()[0]


def test_definition_under_main_guard_is_found():
    source = 'import os\n\nif __name__ == "__main__":\n    def report(x):\n        return x\n'
    new = add_wrap_decorators(source, [DefinitionSite("x.py", "report", 4, "def")]).new
    assert f'if __name__ == "__main__":\n    @{DECORATOR}\n    def report(x):' in new


def test_plan_from_real_culprit_fixes_file_and_lambda_is_manual(jobs, load_module):
    path, module = jobs
    rule = module.make_rule(10)
    findings = [
        _finding(rule),
        _finding(module.CALLBACK, category="lambda"),
        _finding(rule, remedy="create_in_worker"),  # not a wrap remedy: left alone
    ]
    plan = plan_fixes(findings)
    assert [r.path for r in plan.changed] == [str(path)]
    assert plan.fixed == [findings[0]]
    [manual] = plan.manual
    assert manual.location.endswith("jobs_fixture.py:33")
    assert (
        "`lambda x: x`" in manual.advice
        and f"`{DECORATOR}(lambda x: x)`" in manual.advice
    )
    diff = plan.diff()
    assert diff.startswith(f"--- {path}\n+++ {path}\n") and f"+{IMPORT_LINE}" in diff
    assert f"+    @{DECORATOR}\n     def rule(order):" in diff
    # Planning wrote nothing.
    assert path.read_text() == SOURCE
    apply_plan(plan)
    fixed = path.read_text()
    assert fixed == plan.changed[0].new
    # The fixed rule is wrapped: it now survives standard pickle.
    fixed_rule = load_module(path, "jobs_fixture_fixed").make_rule(10)
    assert pickle.loads(pickle.dumps(fixed_rule))(50) == 5.0


def test_instance_of_local_class_decorates_the_class(jobs):
    path, module = jobs
    instance = module.make_local_class()()
    plan = plan_fixes([_finding(instance, category="local_class")])
    [rewrite] = plan.changed
    assert f"    @{DECORATOR}\n    class Local:" in rewrite.new


def test_location_only_finding_is_fixed_by_line(jobs):
    path, _module = jobs
    plan = plan_fixes([_finding(None, location=f"{path}:13")])
    [rewrite] = plan.changed
    assert rewrite.added == [(13, "def make_rule.<locals>.rule")]


def test_library_definitions_are_never_rewritten():
    import json

    plan = plan_fixes([_finding(json.dumps)])
    assert plan.changed == []
    assert "installed library" in plan.manual[0].advice


def test_read_only_file_is_refused_and_untouched(jobs):
    path, module = jobs
    plan = plan_fixes([_finding(module.make_rule(1))])
    os.chmod(path, stat.S_IRUSR | stat.S_IRGRP)
    try:
        with pytest.raises(FixError, match=r"jobs_fixture\.py: the file is read-only$"):
            apply_plan(plan)
    finally:
        os.chmod(path, stat.S_IRUSR | stat.S_IWUSR)
    assert path.read_text() == SOURCE


def test_vanished_file_is_refused(jobs):
    path, module = jobs
    rule = module.make_rule(1)
    plan = plan_fixes([_finding(rule)])
    path.unlink()
    with pytest.raises(FixError, match="the file no longer exists"):
        apply_plan(plan)
    with pytest.raises(FixError, match="the file no longer exists"):
        plan_fixes([_finding(rule)])


def test_nothing_written_when_one_of_two_files_is_read_only(tmp_path, load_module):
    first, second = tmp_path / "fix_a.py", tmp_path / "fix_b.py"
    first.write_text(SOURCE)
    second.write_text(SOURCE)
    rule_a = load_module(first, "fix_a").make_rule(1)
    rule_b = load_module(second, "fix_b").make_rule(1)
    plan = plan_fixes([_finding(rule_a), _finding(rule_b)])
    assert len(plan.changed) == 2
    os.chmod(second, stat.S_IRUSR)
    try:
        with pytest.raises(FixError, match="read-only"):
            apply_plan(plan)
    finally:
        os.chmod(second, stat.S_IRUSR | stat.S_IWUSR)
    assert first.read_text() == SOURCE and second.read_text() == SOURCE


def test_file_mode_is_kept(jobs):
    path, module = jobs
    os.chmod(path, 0o640)
    apply_plan(plan_fixes([_finding(module.make_rule(1))]))
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o640
    assert DECORATOR in path.read_text()


def test_import_joins_the_third_party_group_before_first_party_imports():
    source = (
        "import os\n\nimport numpy\n\nfrom shop.models import Order\nfrom .x import y\n\n\n"
        "def outer():\n    def f():\n        pass\n    return f\n"
    )
    new = add_wrap_decorators(
        source,
        [DefinitionSite("x.py", "outer.<locals>.f", 10, "def")],
        local_names=frozenset({"shop"}),
    ).new
    assert new.startswith(
        f"import os\n\nimport numpy\n\n{IMPORT_LINE}\n\nfrom shop.models import Order\n"
    )
    # Without first-party imports it goes after the last import.
    plain = add_wrap_decorators(
        "import os\n\n\ndef outer():\n    def f():\n        pass\n    return f\n",
        [DefinitionSite("x.py", "outer.<locals>.f", 5, "def")],
    ).new
    assert plain.startswith(f"import os\n{IMPORT_LINE}\n")
