"""Apply ``wrap_non_picklable_objects`` in the user's source (``--fix``/``--diff``).

For every finding whose remedy is ``wrap`` and whose culprit is a function or
class defined by a ``def``/``class`` statement in a source file, the rewrite
adds ``@wrap_non_picklable_objects`` as the outermost decorator and the import
``from loky import wrap_non_picklable_objects``. It works on a concrete syntax
tree (libcst), so comments and formatting are kept, and it is idempotent: a
definition that already carries the decorator is left alone.

What cannot be rewritten (a lambda inline in an expression, a definition whose
source cannot be found) becomes a :class:`ManualFix`: ``file:line`` and the
change to make by hand.
"""

from __future__ import annotations

import difflib
import os
import stat
import sys
import sysconfig
import tempfile
import types
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import libcst as cst
import libcst.helpers
from libcst.codemod import CodemodContext
from libcst.codemod.visitors import AddImportsVisitor
from libcst.metadata import MetadataWrapper, PositionProvider

from .report import display_path as _display_path
from .targets import TargetError

__all__ = [
    "DECORATOR",
    "DefinitionSite",
    "FixError",
    "FixPlan",
    "ManualFix",
    "add_wrap_decorators",
    "apply_plan",
    "plan_fixes",
]

DECORATOR = "wrap_non_picklable_objects"
IMPORT_LINE = f"from loky import {DECORATOR}"


class FixError(TargetError):
    """The rewrite cannot be applied; ``str()`` is the one-line reason.

    A :class:`~loky_check.targets.TargetError`, so the CLI reports it (exit 2)
    without importing libcst when no fix was asked for."""


@dataclass(frozen=True)
class DefinitionSite:
    """A ``def``/``class`` to decorate: its file, qualified name and first line.

    ``line`` is the code object's first line (the first decorator's line for a
    decorated function) or None when unknown (classes); ``qualname`` is None
    when only the line is known.
    """

    path: str
    qualname: str | None
    line: int | None
    kind: str  # "def", "class", or "definition" (either: only the line is known)

    @property
    def name(self) -> str:
        return (self.qualname or "?").rpartition(".")[2]


@dataclass(frozen=True)
class ManualFix:
    """A culprit the rewrite cannot reach: where it is and what to do."""

    location: str
    advice: str

    def __str__(self) -> str:
        return f"{self.location}  {self.advice}"


@dataclass
class FileRewrite:
    path: str
    old: str
    new: str
    # (line, "def name") of each decorator added, for the summary.
    added: list[tuple[int, str]] = field(default_factory=list)
    # The file's source encoding (PEP 263 cookie or BOM): written back in it.
    encoding: str = "utf-8"


def _read_source(path: str) -> tuple[str, str]:
    """The text of ``path`` decoded as Python does (coding cookie, BOM), with
    its newlines untouched; and that encoding."""
    import io
    import tokenize

    with open(path, "rb") as f:
        data = f.read()
    try:
        encoding, _ = tokenize.detect_encoding(io.BytesIO(data).readline)
    except SyntaxError as exc:  # an unknown coding cookie
        raise UnicodeError(str(exc)) from None
    return data.decode(encoding), encoding


@dataclass
class FixPlan:
    """Everything ``--fix`` would change, computed without writing anything."""

    rewrites: list[FileRewrite] = field(default_factory=list)
    manual: list[ManualFix] = field(default_factory=list)
    # Definitions that already carry the decorator (nothing to do).
    already: list[str] = field(default_factory=list)
    # The findings the rewrite takes care of (decorated now or already).
    fixed: list[Any] = field(default_factory=list)

    @property
    def changed(self) -> list[FileRewrite]:
        return [r for r in self.rewrites if r.new != r.old]

    def diff(self) -> str:
        """The unified diff of every change, paths relative to the current folder."""
        chunks = []
        for rewrite in self.changed:
            shown = _display_path(rewrite.path)
            # git-style a/ b/ prefixes for paths below the current folder.
            old_name, new_name = (
                (shown, shown) if os.path.isabs(shown) else (f"a/{shown}", f"b/{shown}")
            )
            chunks.extend(
                difflib.unified_diff(
                    rewrite.old.splitlines(keepends=True),
                    rewrite.new.splitlines(keepends=True),
                    fromfile=old_name,
                    tofile=new_name,
                )
            )
        text = "".join(chunks)
        if text and not text.endswith("\n"):
            text += "\n"
        return text

    def summary_lines(self, *, applied: bool) -> list[str]:
        verb = "added" if applied else "would add"
        lines = []
        for rewrite in self.changed:
            for line, what in rewrite.added:
                lines.append(
                    f"{_display_path(rewrite.path)}:{line}  {verb} @{DECORATOR} to {what}"
                )
        lines.extend(f"{item}" for item in self.manual)
        return lines


# -- locating the definition behind a finding --------------------------------


def _library_roots() -> list[str]:
    paths = sysconfig.get_paths()
    roots = {paths.get(key) for key in ("stdlib", "platstdlib", "purelib", "platlib")}
    return [os.path.realpath(r) + os.sep for r in roots if r]


def _is_library_file(path: str) -> bool:
    real = os.path.realpath(path)
    return any(real.startswith(root) for root in _library_roots())


def _unwrap_definition(obj: Any) -> Any:
    """The function or class behind a culprit, or None."""
    if isinstance(obj, (types.MethodType,)):
        obj = obj.__func__
    if isinstance(obj, (staticmethod, classmethod)):
        obj = obj.__func__
    if isinstance(obj, (types.FunctionType, type)):
        return obj
    kind = type(obj)
    # An instance of a local or __main__ class: decorating the class fixes it.
    if kind.__module__ == "__main__" or "<locals>" in kind.__qualname__:
        return kind
    return None


def _source_file_of_class(cls: type) -> str | None:
    """The file defining ``cls``: its module's, else its methods' code's."""
    module = sys.modules.get(cls.__module__)
    path = getattr(module, "__file__", None)
    if path and path.endswith(".py"):
        return path
    for value in vars(cls).values():
        function = getattr(value, "__func__", value)
        code = getattr(function, "__code__", None)
        if code is not None and code.co_filename.endswith(".py"):
            return code.co_filename
    return None


def _parse_location(location: str | None) -> tuple[str, int] | None:
    if not location:
        return None
    path, _, line = location.rpartition(":")
    if not path or not line.isdigit():
        return None
    return path, int(line)


def _site_for(finding: Any) -> DefinitionSite | ManualFix | None:
    """Where to put the decorator for ``finding``, or the manual advice."""
    definition = _unwrap_definition(getattr(finding, "culprit", None))
    location = _parse_location(getattr(finding, "location", None))
    is_exception = (
        isinstance(definition, type) and issubclass(definition, BaseException)
    ) or (
        definition is None
        and getattr(finding, "argument", None) == "exception"
        and getattr(finding, "path", None) == "exception"
    )
    if is_exception:
        # A wrapped exception class raises wrapper objects that come back to
        # the caller as a non-exception ("exceptions must derive from
        # BaseException"): the class must be importable instead.
        if location is not None:
            where = f"{_display_path(location[0])}:{location[1]}"
        elif isinstance(definition, type):
            where = _display_path(_source_file_of_class(definition) or "?")
        else:
            where = getattr(finding, "path", "?")
        return ManualFix(
            where,
            f"{_what(finding)}: an exception class cannot take @{DECORATOR} (what it "
            "raises would not come back as an exception); move the class to module level",
        )
    if isinstance(definition, types.FunctionType):
        code = definition.__code__
        where = f"{_display_path(code.co_filename)}:{code.co_firstlineno}"
        if definition.__name__ == "<lambda>":
            return ManualFix(
                where, _lambda_advice(code.co_filename, code.co_firstlineno, finding)
            )
        if code.co_filename.startswith("<"):  # <string>, <stdin>: no file to rewrite
            return ManualFix(
                where, f"{_what(finding)}: no source file to rewrite; {_hand_advice()}"
            )
        return DefinitionSite(
            code.co_filename, definition.__qualname__, code.co_firstlineno, "def"
        )
    if isinstance(definition, type):
        path = _source_file_of_class(definition)
        if path is not None:
            return DefinitionSite(path, definition.__qualname__, None, "class")
    if location is not None:
        path, line = location
        return DefinitionSite(path, None, line, "definition")
    return ManualFix(
        getattr(finding, "path", "?"),
        f"{_what(finding)}: no def or class to decorate; {_hand_advice()}",
    )


def _what(finding: Any) -> str:
    return f"{getattr(finding, 'path', '?')} ({getattr(finding, 'category', '?')})"


def _hand_advice() -> str:
    return f"wrap the object by hand with loky.{DECORATOR}(...) where it is created"


def _lambda_advice(path: str, line: int, finding: Any) -> str:
    code = _lambda_source(path, line)
    if code:
        return (
            f"{_what(finding)}: an inline lambda cannot take a decorator; change "
            f"`{code}` to `{DECORATOR}({code})` (and import it from loky), or make it a module-level def"
        )
    return (
        f"{_what(finding)}: an inline lambda cannot take a decorator; wrap it in "
        f"{DECORATOR}(...) (from loky) by hand, or make it a module-level def"
    )


def _lambda_source(path: str, line: int) -> str | None:
    """The text of the only lambda starting on ``line`` of ``path``, or None."""
    try:
        module = cst.parse_module(_read_source(path)[0])
    except (OSError, UnicodeError, cst.ParserSyntaxError):
        return None
    wrapper = MetadataWrapper(module)
    positions = wrapper.resolve(PositionProvider)
    found = [
        node
        for node, pos in positions.items()
        if isinstance(node, cst.Lambda) and pos.start.line == line
    ]
    if len(found) != 1:
        return None
    text = " ".join(module.code_for_node(found[0]).split())
    return text if len(text) <= 80 else None


# -- the rewrite ---------------------------------------------------------------


def _is_wrap_decorator(decorator: cst.Decorator) -> bool:
    node = decorator.decorator
    if isinstance(node, cst.Call):
        node = node.func
    if isinstance(node, cst.Name):
        return node.value == DECORATOR
    if isinstance(node, cst.Attribute):
        return node.attr.value == DECORATOR
    return False


class _Finder(cst.CSTVisitor):
    """Collect every def/class with its qualified name and its first lines."""

    METADATA_DEPENDENCIES = (PositionProvider,)

    def __init__(self) -> None:
        self.scope: list[str] = []
        self.found: list[tuple[cst.CSTNode, str, set[int], int]] = []
        self.kinds: list[str] = []  # "class" / "def" of each enclosing definition
        self.methods: set[cst.CSTNode] = set()  # defs directly in a class body
        self.owners: dict[cst.CSTNode, cst.ClassDef] = {}  # method -> its class
        self.classes: list[cst.ClassDef] = []

    def _record(self, node: cst.FunctionDef | cst.ClassDef) -> None:
        qualname = ".".join([*self.scope, node.name.value])
        def_line = self.get_metadata(PositionProvider, node).start.line
        lines = {def_line}
        lines.update(
            self.get_metadata(PositionProvider, d).start.line for d in node.decorators
        )
        self.found.append((node, qualname, lines, def_line))

    def visit_FunctionDef(self, node: cst.FunctionDef) -> None:
        self._record(node)
        if self.kinds and self.kinds[-1] == "class":
            self.methods.add(node)
            self.owners[node] = self.classes[-1]
        self.scope.extend([node.name.value, "<locals>"])
        self.kinds.append("def")

    def leave_FunctionDef(self, original_node: cst.FunctionDef) -> None:
        del self.scope[-2:]
        self.kinds.pop()

    def visit_ClassDef(self, node: cst.ClassDef) -> None:
        self._record(node)
        self.scope.append(node.name.value)
        self.kinds.append("class")
        self.classes.append(node)

    def leave_ClassDef(self, original_node: cst.ClassDef) -> None:
        self.scope.pop()
        self.kinds.pop()
        self.classes.pop()


class _Decorate(cst.CSTTransformer):
    def __init__(self, targets: set[cst.CSTNode]) -> None:
        self.targets = targets

    def _decorate(self, original: cst.CSTNode, updated: Any) -> Any:
        if original not in self.targets:
            return updated
        # Outermost decorator: it wraps what the other decorators produced. The
        # def's own leading lines (comments above it) render before all
        # decorators, so they stay where they were.
        decorator = cst.Decorator(decorator=cst.Name(DECORATOR))
        return updated.with_changes(decorators=[decorator, *updated.decorators])

    def leave_FunctionDef(
        self, original_node: cst.FunctionDef, updated_node: cst.FunctionDef
    ):
        return self._decorate(original_node, updated_node)

    def leave_ClassDef(self, original_node: cst.ClassDef, updated_node: cst.ClassDef):
        return self._decorate(original_node, updated_node)


@dataclass
class _SourceResult:
    new: str
    added: list[tuple[int, str]]
    already: list[str]
    missing: list[DefinitionSite]
    # Left alone: (site, line, "class X" / "def X", why decorating would break it).
    unsafe: list[tuple[DefinitionSite, int, str, str]] = field(default_factory=list)


# Special methods a wrapped class keeps working with: a wrapped class builds
# wrapper instances that delegate attributes and methods, but no other special
# method (calling, ==, len, iteration, operators, with...).
_SAFE_DUNDERS = frozenset(
    {
        "__init__",
        "__new__",
        "__post_init__",
        "__getstate__",
        "__setstate__",
        "__reduce__",
        "__reduce_ex__",
        "__getnewargs__",
        "__getnewargs_ex__",
        "__repr__",
        "__str__",
        "__format__",
        "__init_subclass__",
        "__class_getitem__",
        "__set_name__",
        "__del__",
        "__getattr__",
    }
)


def _wrap_breaks_class(node: cst.ClassDef) -> str | None:
    """Why ``@wrap_non_picklable_objects`` would change what the class's
    instances do, or None."""
    for decorator in node.decorators:
        expr = decorator.decorator
        if isinstance(expr, cst.Call):
            expr = expr.func
        name = expr.attr.value if isinstance(expr, cst.Attribute) else None
        if isinstance(expr, cst.Name):
            name = expr.value
        if name == "dataclass":
            return "it is a dataclass: its instances would lose == (and every generated method but __init__)"
    body = node.body.body if isinstance(node.body, cst.IndentedBlock) else ()
    for statement in body:
        if isinstance(statement, cst.FunctionDef):
            name = statement.name.value
            if (
                name.startswith("__")
                and name.endswith("__")
                and name not in _SAFE_DUNDERS
            ):
                what = "callable" if name == "__call__" else f"usable through {name}"
                return f"it defines {name}: its instances would stop being {what}"
    return None


def add_wrap_decorators(
    source: str,
    sites: Sequence[DefinitionSite],
    *,
    local_names: frozenset[str] = frozenset(),
) -> _SourceResult:
    """Decorate the definitions ``sites`` name in ``source``; idempotent.

    A site matches a def/class by qualified name, disambiguated by line when
    several share the name; a site without qualname matches the definition
    starting on its line. Raises ``cst.ParserSyntaxError`` on invalid source.
    """
    module = cst.parse_module(source)
    wrapper = MetadataWrapper(module)
    finder = _Finder()
    wrapper.visit(finder)
    targets: set[cst.CSTNode] = set()
    added: list[tuple[int, str]] = []
    already: list[str] = []
    missing: list[DefinitionSite] = []
    unsafe: list[tuple[DefinitionSite, int, str, str]] = []

    def match(site: DefinitionSite) -> list:
        candidates = [
            entry
            for entry in finder.found
            if (site.qualname is None or entry[1] == site.qualname)
            and (
                site.kind == "definition"
                or (site.kind == "class") == isinstance(entry[0], cst.ClassDef)
            )
        ]
        if site.line is not None:
            return [entry for entry in candidates if site.line in entry[2]]
        # Redefinitions: the last one is the one bound at the end of the module.
        return candidates[-1:]

    # A class one of whose methods is itself sent to workers: a wrapped class
    # would no longer have that method (the wrapper class holds only __init__).
    sent_methods: dict[cst.CSTNode, str] = {}
    for site in sites:
        for entry in match(site):
            if entry[0] in finder.methods:
                sent_methods.setdefault(finder.owners[entry[0]], entry[1])
    for site in sites:
        candidates = match(site)
        if len(candidates) != 1:
            missing.append(site)
            continue
        node, qualname, _lines, def_line = candidates[0]
        kind = "class" if isinstance(node, cst.ClassDef) else "def"
        if any(_is_wrap_decorator(d) for d in node.decorators):
            already.append(f"{kind} {qualname}")
            continue
        why = _wrap_breaks_class(node) if isinstance(node, cst.ClassDef) else None
        if node in sent_methods:
            why = (
                f"its method {sent_methods[node]} is sent to workers and a wrapped "
                "class no longer has it"
            )
        if node in finder.methods:
            why = (
                "it is a method: wrapped, it would lose its binding to the instance "
                "(or its staticmethod/classmethod descriptor)"
            )
        if why is not None:
            unsafe.append((site, def_line, f"{kind} {qualname}", why))
            continue
        if node not in targets:
            targets.add(node)
            added.append((def_line, f"{kind} {qualname}"))
    if not targets:
        return _SourceResult(source, [], already, missing, unsafe)
    # The wrapper's module is the tree the metadata (and so `targets`) refers to.
    new_module = wrapper.module.visit(_Decorate(targets))
    new_module = _add_import(new_module, local_names)
    return _SourceResult(new_module.code, sorted(added), already, missing, unsafe)


def _imports_loky(statement: cst.CSTNode) -> bool:
    if not isinstance(statement, cst.SimpleStatementLine):
        return False
    for small in statement.body:
        if isinstance(small, cst.ImportFrom) and not small.relative:
            if (
                small.module is not None
                and cst.helpers.get_full_name_for_node(small.module) == "loky"
            ):
                return True
        if isinstance(small, cst.Import) and any(
            cst.helpers.get_full_name_for_node(alias.name) == "loky"
            for alias in small.names
        ):
            return True
    return False


def _is_local_import(statement: cst.CSTNode, local_names: frozenset[str]) -> bool:
    """A relative import, or one of a module living next to the file (first party)."""
    if not isinstance(statement, cst.SimpleStatementLine):
        return False
    for small in statement.body:
        if isinstance(small, cst.ImportFrom):
            if small.relative:
                return True
            name = (
                cst.helpers.get_full_name_for_node(small.module) if small.module else ""
            )
            if name and name.split(".")[0] in local_names:
                return True
        if isinstance(small, cst.Import):
            for alias in small.names:
                name = cst.helpers.get_full_name_for_node(alias.name) or ""
                if name.split(".")[0] in local_names:
                    return True
    return False


def _add_import(module: cst.Module, local_names: frozenset[str]) -> cst.Module:
    """Add ``from loky import wrap_non_picklable_objects`` where isort would.

    Merged into an existing ``from loky import`` when there is one; else as its
    own group just before the first-party imports (third-party code comes
    before the project's own), else after the last import.
    """
    body = list(module.body)
    has_loky = any(_imports_loky(statement) for statement in body)
    first_local = next(
        (
            i
            for i, statement in enumerate(body)
            if _is_local_import(statement, local_names)
        ),
        None,
    )
    if has_loky or not first_local:
        context = CodemodContext()
        AddImportsVisitor.add_needed_import(context, "loky", DECORATOR)
        return AddImportsVisitor(context).transform_module(module)
    local = body[first_local]
    new_import = cst.parse_statement(IMPORT_LINE + "\n").with_changes(
        leading_lines=local.leading_lines
    )
    # The new group takes the blank line(s) that opened the first-party group,
    # and the first-party import keeps its own: one blank line on each side.
    body.insert(first_local, new_import)
    return module.with_changes(body=body)


def local_module_names(path: str) -> frozenset[str]:
    """Top-level names importable from the folder ``path``'s code is run from:
    the package root for a file in a package, else the file's own folder."""
    folder = os.path.dirname(os.path.abspath(path))
    while os.path.exists(os.path.join(folder, "__init__.py")):
        folder = os.path.dirname(folder)
    try:
        entries = os.listdir(folder)
    except OSError:
        return frozenset()
    names = set()
    for entry in entries:
        if entry.endswith(".py"):
            names.add(entry[:-3])
        elif os.path.exists(os.path.join(folder, entry, "__init__.py")):
            names.add(entry)
    return frozenset(names)


def plan_fixes(findings: Iterable[Any]) -> FixPlan:
    """Compute the rewrite for the ``wrap`` findings of a report; writes nothing."""
    plan = FixPlan()
    by_file: dict[str, list[DefinitionSite]] = {}
    findings_at: dict[DefinitionSite, list[Any]] = {}
    seen_manual: set[str] = set()

    def manual(item: ManualFix) -> None:
        if str(item) not in seen_manual:
            seen_manual.add(str(item))
            plan.manual.append(item)

    for finding in findings:
        remedy = getattr(finding, "remedy", None)
        # move_to_module although the wrapped copy round-trips: an exception
        # class, for which the plan says why it takes no decorator.
        if remedy != "wrap" and not (
            remedy == "move_to_module" and getattr(finding, "wrap_fixes", False)
        ):
            continue
        site = _site_for(finding)
        if isinstance(site, ManualFix):
            manual(site)
            continue
        if site is None:
            continue
        if _is_library_file(site.path):
            manual(
                ManualFix(
                    f"{_display_path(site.path)}:{site.line or '?'}",
                    f"{_what(finding)}: defined in an installed library; {_hand_advice()}",
                )
            )
            continue
        site = DefinitionSite(
            os.path.abspath(site.path), site.qualname, site.line, site.kind
        )
        sites = by_file.setdefault(site.path, [])
        if site not in sites:
            sites.append(site)
        findings_at.setdefault(site, []).append(finding)

    for path, sites in by_file.items():
        try:
            old, encoding = _read_source(path)
        except FileNotFoundError:
            raise FixError(
                f"cannot fix {_display_path(path)}: the file no longer exists"
            ) from None
        except (OSError, UnicodeError) as exc:
            raise FixError(
                f"cannot fix {_display_path(path)}: cannot read it ({exc})"
            ) from None
        try:
            result = add_wrap_decorators(
                old, sites, local_names=local_module_names(path)
            )
        except cst.ParserSyntaxError as exc:
            raise FixError(
                f"cannot fix {_display_path(path)}: it no longer parses "
                f"(line {exc.raw_line}: {exc.message})"
            ) from None
        plan.already.extend(f"{_display_path(path)}: {what}" for what in result.already)
        for site in result.missing:
            line = f":{site.line}" if site.line else ""
            manual(
                ManualFix(
                    f"{_display_path(path)}{line}",
                    f"{site.kind} {site.qualname or '?'}: not found in the current source "
                    f"(edited since it was loaded?); add @{DECORATOR} by hand",
                )
            )
        left_alone = {id(entry[0]) for entry in result.unsafe}
        for _site, line, what, why in result.unsafe:
            if what.startswith("def "):
                advice = (
                    f"wrap the bound method where it is passed (loky.{DECORATOR}"
                    "(obj.method)) or move the class to an importable module"
                )
            else:
                advice = (
                    f"wrap the instance where it is passed (loky.{DECORATOR}(obj)) "
                    "or move the class to module level"
                )
            manual(
                ManualFix(
                    f"{_display_path(path)}:{line}",
                    f"{what}: not decorated, {why}; {advice}",
                )
            )
        plan.rewrites.append(FileRewrite(path, old, result.new, result.added, encoding))
        for site in sites:
            if site not in result.missing and id(site) not in left_alone:
                plan.fixed.extend(findings_at[site])
    return plan


def _check_writable(path: str) -> None:
    shown = _display_path(path)
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise FixError(f"cannot fix {shown}: the file no longer exists") from None
    except OSError as exc:
        raise FixError(f"cannot fix {shown}: {exc.strerror or exc}") from None
    # The permission bits are honoured even for root, who could write anyway:
    # a read-only file is a statement by its owner.
    if not stat.S_ISREG(mode):
        raise FixError(f"cannot fix {shown}: not a regular file")
    if not mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH) or not os.access(
        path, os.W_OK
    ):
        raise FixError(f"cannot fix {shown}: the file is read-only")
    if not os.access(os.path.dirname(path) or ".", os.W_OK):
        raise FixError(f"cannot fix {shown}: its folder is not writable")


def apply_plan(plan: FixPlan) -> None:
    """Write every changed file, or none: all files are checked first."""
    changed = plan.changed
    for rewrite in changed:
        _check_writable(rewrite.path)
        try:
            current = _read_source(rewrite.path)[0]
        except (OSError, UnicodeError):
            current = None
        if current != rewrite.old:
            raise FixError(
                f"cannot fix {_display_path(rewrite.path)}: it changed while loky-check ran"
            )
    for rewrite in changed:
        # Through a symlink: rewrite its target, keep the link a link.
        _atomic_write(os.path.realpath(rewrite.path), rewrite.new, rewrite.encoding)


def _atomic_write(path: str, text: str, encoding: str = "utf-8") -> None:
    """Replace ``path`` by ``text`` in one step, keeping its permission bits."""
    folder = os.path.dirname(path) or "."
    mode = stat.S_IMODE(os.stat(path).st_mode)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".loky-check-", suffix=".py.tmp")
    try:
        with os.fdopen(fd, "w", encoding=encoding, newline="") as f:
            f.write(text)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
