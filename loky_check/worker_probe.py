"""Load pickled calls and check return values in a real loky worker."""

from __future__ import annotations

from typing import Any

from .report import Report


def load_in_worker(arguments: list, ctx: Any, target: str, findings: list) -> Report:
    return Report(target=target, pickler=ctx.pickler)
