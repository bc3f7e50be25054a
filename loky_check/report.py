"""Findings and reports: the one data model every front end renders.

A ``Finding`` is one culprit (one object that will not cross the process
boundary), a ``Report`` the findings for one call or object. The human text
(``str(report)``) and the JSON dict (``report.to_dict()``, schema
``loky-check/1``) are produced here and nowhere else: the CLI, the runtime
warnings and the pytest plugin all print these.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable
from typing import Any

SCHEMA = "loky-check/1"

SEVERITIES = ("error", "warning", "info")
_SEVERITY_RANK = {name: rank for rank, name in enumerate(SEVERITIES)}

# Keys of one finding in the JSON report, in schema order.
FINDING_KEYS = (
    "severity",
    "stage",
    "argument",
    "parameter",
    "path",
    "type",
    "category",
    "remedy",
    "message",
    "fix",
    "carried_by",
    "wrap_fixes",
    "location",
)


def display_path(path: str) -> str:
    """``path`` relative to the current directory when it is below it."""
    try:
        relative = os.path.relpath(path)
    except ValueError:  # another drive on Windows
        return path
    return path if relative.startswith(os.pardir) else relative


_ANSI = {"error": "\x1b[31;1m", "warning": "\x1b[33;1m", "info": "\x1b[36m"}
_ANSI_RESET = "\x1b[0m"
_BLOCK_INDENT = " " * 9


@dataclasses.dataclass
class Finding:
    """One object that cannot (or can only partly) cross a process boundary.

    The first thirteen fields are the JSON report's; ``summary`` is the short
    description printed on the second line of the human block (for example
    ``function <lambda> at app/jobs.py:41``) and ``culprit`` keeps the object
    itself for in-process consumers (the check mode wraps it); neither is
    serialised.
    """

    severity: str
    stage: str
    argument: str
    parameter: str | None
    path: str
    type: str
    category: str
    remedy: str
    message: str
    fix: str
    carried_by: dict[str, bool]
    wrap_fixes: bool = False
    location: str | None = None
    summary: str = ""
    culprit: Any = dataclasses.field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        return {key: _jsonable(getattr(self, key)) for key in FINDING_KEYS}

    @property
    def label(self) -> str:
        """``cfg  (args[1])`` or just ``args[1]`` when no parameter is bound."""
        if self.parameter and self.parameter != self.argument:
            return f"{self.parameter}  ({self.argument})"
        return self.argument

    def render(self, color: bool = False) -> str:
        """The block of the human report for this finding."""
        severity = f"{self.severity:<9}"
        if color:
            severity = (
                f"{_ANSI.get(self.severity, '')}{self.severity}{_ANSI_RESET}"
                + " " * (9 - len(self.severity))
            )
        lines = [f"{severity}{self.label}   {self.path}"]
        lines.append(f"{_BLOCK_INDENT}{self.summary or self.type}  [{self.category}]")
        if self.stage == "load":
            where = (
                "in the parent"
                if self.argument in ("result", "exception")
                else "in the worker"
            )
            if self.category == "fidelity":
                lines.append(
                    f"{_BLOCK_INDENT}(loads, but the copy differs from the original)"
                )
            else:
                lines.append(f"{_BLOCK_INDENT}(fails when loaded {where})")
        if self.message:
            lines.extend(_BLOCK_INDENT + line for line in self.message.splitlines())
        if self.fix:
            lines.append(f"{_BLOCK_INDENT}fix: {self.fix}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.render()


@dataclasses.dataclass
class Report:
    """The findings for one call or object, most useful first."""

    target: str
    pickler: str = "pickle"
    findings: list[Finding] = dataclasses.field(default_factory=list)
    # Reducer round-trip results (objects with ``ok``, ``to_dict()`` and ``__str__``).
    reducers: list[Any] = dataclasses.field(default_factory=list)

    def __post_init__(self) -> None:
        if self.findings:
            self.findings = sort_findings(self.findings)
        elif not isinstance(self.findings, list):
            self.findings = []

    @property
    def ok(self) -> bool:
        """True when no finding is an error or a warning and every reducer held."""
        return not any(
            f.severity in ("error", "warning") for f in self.findings
        ) and all(getattr(r, "ok", True) for r in self.reducers)

    def count(self, severity: str) -> int:
        return sum(1 for f in self.findings if f.severity == severity)

    def headline(self) -> str:
        parts = []
        for severity in SEVERITIES:
            n = self.count(severity)
            if n:
                parts.append(
                    f"{n} {severity}{'' if n == 1 or severity == 'info' else 's'}"
                )
        failed = sum(1 for r in self.reducers if not getattr(r, "ok", True))
        if self.reducers:
            parts.append(
                f"{len(self.reducers) - failed}/{len(self.reducers)} reducers hold"
            )
        return ", ".join(parts) if parts else "ok"

    def render(self, color: bool = False) -> str:
        lines = [
            f"loky-check  {self.target}   pickler: {self.pickler}   {self.headline()}"
        ]
        for finding in self.findings:
            lines.append("")
            lines.append(finding.render(color=color))
        for result in self.reducers:
            lines.append("")
            lines.append(str(result))
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.render()

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "schema": SCHEMA,
            "target": self.target,
            "pickler": self.pickler,
            "ok": self.ok,
            "findings": [f.to_dict() for f in self.findings],
            # Always present (the schema's key set is fixed): empty when no
            # reducer was checked.
            "reducers": [r.to_dict() for r in self.reducers],
        }
        return data

    def merge(self, other: Report) -> Report:
        """A new report holding the findings and reducer results of both."""
        return Report(
            target=self.target,
            pickler=self.pickler,
            findings=dedupe_findings([*self.findings, *other.findings]),
            reducers=[*self.reducers, *other.reducers],
        )


def sort_findings(findings: Iterable[Finding]) -> list[Finding]:
    """Errors first, then warnings, then notes; stable within a severity."""
    return sorted(
        findings, key=lambda f: _SEVERITY_RANK.get(f.severity, len(SEVERITIES))
    )


def dedupe_findings(findings: Iterable[Finding]) -> list[Finding]:
    """Drop findings naming the same argument, path and category twice."""
    seen = set()
    unique = []
    for finding in findings:
        key = (finding.argument, finding.path, finding.category, finding.stage)
        if key not in seen:
            seen.add(key)
            unique.append(finding)
    return unique


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value
