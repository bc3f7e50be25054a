"""Helpers shared by several test files: running ``loky-check`` or a Python
snippet in a fresh interpreter, stopping the reusable executor, texts."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path


def cli_env(extra: dict | None = None) -> dict:
    """This environment without the variables that change the CLI's output
    (colour, debug tracebacks), plus ``extra``."""
    base = {
        k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "LOKY_CHECK_DEBUG")
    }
    return {**base, **(extra or {})}


def run_cli(
    *argv: str, cwd: Path, env: dict | None = None, timeout: float = 90
) -> subprocess.CompletedProcess:
    """``python -m loky_check *argv`` in ``cwd``, output captured as text."""
    return subprocess.run(
        [sys.executable, "-m", "loky_check", *argv],
        cwd=cwd,
        env=cli_env(env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def write_files(root: Path, files: dict[str, str]) -> Path:
    """Write ``{relative path: dedented text}`` below ``root``; return ``root``."""
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip())
    return root


def run_python(code: str, **env: str) -> subprocess.CompletedProcess:
    """``python -c code`` (dedented) with ``env`` added to this environment."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=60,
    )


def too_deep_to_pickle(factor: int = 3) -> int:
    """A nesting depth the C pickler refuses on this Python.

    Before 3.12 the pickler counts nesting against ``sys.getrecursionlimit()``,
    so ``factor`` times it overflows. From 3.12 on it counts against the
    interpreter's fixed C recursion limit instead (1500 levels on 3.12.1, 10000
    on 3.13; ``sys.setrecursionlimit`` does not move it): a few thousand levels
    pickle fine there, so go well past every such limit.
    """
    if sys.version_info < (3, 12):
        return sys.getrecursionlimit() * factor
    return 100_000


class Holder:
    def __init__(self, x):
        self.x = x


class SlotHolder:
    __slots__ = ("x",)

    def __init__(self, x):
        self.x = x


# Where a culprit sits in a call of ``target(a, b=None, *, kw=None)``:
# position id -> (build the call from the culprit, argument, parameter, path)
POSITIONS = {
    "top": (lambda c: ((c,), {}), "args[0]", "a", "a"),
    "list_in_dict": (lambda c: (({"k": [0, c]},), {}), "args[0]", "a", "a['k'][1]"),
    "attribute": (lambda c: ((Holder(c),), {}), "args[0]", "a", "a.x"),
    "slot": (lambda c: ((SlotHolder(c),), {}), "args[0]", "a", "a.x"),
    "keyword": (lambda c: ((0,), {"kw": c}), "kwargs['kw']", "kw", "kw"),
}


# What set_loky_pickler adds to the error of a pickler it cannot set.
PICKLER_ERROR_SUFFIX = (
    "\nThis error occurred while setting loky_pickler to '{}', as required by the "
    "env variable LOKY_PICKLER or the function set_loky_pickler."
)


def shutdown_reusable_executor() -> None:
    """Shut down this thread's reusable executor, if loky made one."""
    module = sys.modules.get("loky.reusable_executor")
    executor = getattr(getattr(module, "_executor_storage", None), "executor", None)
    if executor is not None:
        executor.shutdown(wait=True, kill_workers=True)


FINDING_FIELDS = (
    "argument",
    "parameter",
    "path",
    "type",
    "category",
    "severity",
    "remedy",
    "stage",
)


def finding_fields(finding, *names: str) -> tuple:
    """The finding's fields named (all of FINDING_FIELDS by default), in order:
    one tuple to compare with the expected row."""
    return tuple(getattr(finding, name) for name in names or FINDING_FIELDS)
