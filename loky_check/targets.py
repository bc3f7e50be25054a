"""Resolve what the user names on the ``loky-check`` command line.

A *reference* is ``package.module:attr.path`` or ``path/to/file.py:attr.path``.
It names the callable under test (``TARGET``), an argument factory
(``--args-from``) and, without the ``:``, a module to import (``--reducers``).

Loading rules, chosen to match how the code runs in production:

* ``package.module`` is imported normally (the current directory is on
  ``sys.path``, as with ``python -m``).
* A file inside a package (its folder has ``__init__.py``) is imported under
  its dotted name, with the package's root folder put on ``sys.path``.
* A file outside any package is a *script*: it is loaded as ``__main__``, the
  way ``python path/to/file.py`` runs it, except that the body of its
  ``if __name__ == "__main__":`` guard is not run. Only the functions, classes
  and imports written under the guard are executed, so that a definition made
  there exists (in ``__main__``, where no worker can import it) without the
  script's job starting.

Every failure is a :class:`TargetError` whose message is one line.
"""

from __future__ import annotations

import ast
import contextlib
import difflib
import importlib
import importlib.util
import keyword
import os
import sys
import traceback
import types
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from . import taxonomy
from .report import display_path as _display_path

__all__ = [
    "Call",
    "Reference",
    "TargetError",
    "check_calls_fit",
    "describe_exception",
    "ensure_cwd_on_path",
    "example_calls",
    "import_module_ref",
    "load_calls",
    "method_owner",
    "parse_reference",
    "resolve",
    "resolve_callable",
    "restore_main",
]

_USAGE_FORMS = (
    "'package.module:func', 'package.module:Class.method' or 'path/to/file.py:func'"
)

# The interpreter's own __main__, put back by restore_main() after a script
# target was loaded in its place.
_ORIGINAL_MAIN = sys.modules.get("__main__")
# Scripts already loaded, by absolute path: a TARGET and a factory in the same
# script must share one module.
_LOADED_SCRIPTS: dict[str, types.ModuleType] = {}


class TargetError(Exception):
    """A reference that cannot be resolved; ``str()`` is the one-line reason."""


@dataclass(frozen=True)
class Reference:
    """A parsed ``module:attr.path`` or ``file.py:attr.path``."""

    text: str
    module: str | None  # dotted module name, when given that way
    path: str | None  # file path, when given that way
    attrs: tuple[str, ...]

    @property
    def attr_text(self) -> str:
        return ".".join(self.attrs)


@dataclass
class Call:
    """One ``fn(*args, **kwargs)`` to check; ``label`` says where it came from."""

    args: tuple
    kwargs: dict[str, Any]
    label: str


def _is_dotted_name(text: str) -> bool:
    parts = text.split(".")
    return all(part.isidentifier() and not keyword.iskeyword(part) for part in parts)


def _looks_like_path(text: str) -> bool:
    return text.endswith(".py") or "/" in text or os.sep in text


def parse_reference(text: str, *, what: str = "target") -> Reference:
    """Split ``text`` into module-or-file and attribute path; no import happens."""
    if not isinstance(text, str) or ":" not in text:
        raise TargetError(f"malformed {what} {text!r}: expected {_USAGE_FORMS}")
    # rpartition: a Windows drive letter ("C:\\x.py:f") keeps its colon.
    left, _, right = text.rpartition(":")
    if not left or not right:
        raise TargetError(f"malformed {what} {text!r}: expected {_USAGE_FORMS}")
    attrs = tuple(right.split("."))
    if not _is_dotted_name(right):
        raise TargetError(
            f"malformed {what} {text!r}: {right!r} is not a (dotted) Python name; "
            f"expected {_USAGE_FORMS}"
        )
    if _looks_like_path(left):
        if not left.endswith(".py"):
            raise TargetError(
                f"malformed {what} {text!r}: a file target must name a .py file; "
                f"expected {_USAGE_FORMS}"
            )
        return Reference(text, None, left, attrs)
    if not _is_dotted_name(left):
        raise TargetError(
            f"malformed {what} {text!r}: {left!r} is not a module name; expected {_USAGE_FORMS}"
        )
    return Reference(text, left, None, attrs)


def _ensure_on_path(folder: str) -> None:
    if folder not in sys.path:
        sys.path.insert(0, folder)


def ensure_cwd_on_path() -> None:
    """Like ``python -m``: modules of the current directory are importable."""
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)


def _user_frame(exc: BaseException) -> str:
    """``file:line`` of the innermost traceback frame outside importlib, or ''."""
    frames = traceback.extract_tb(exc.__traceback__)
    for frame in reversed(frames):
        filename = frame.filename
        if "importlib" in filename or filename.startswith("<frozen"):
            continue
        if os.path.abspath(filename) == os.path.abspath(__file__):
            continue
        return f"{_display_path(filename)}:{frame.lineno}"
    return ""


def describe_exception(exc: BaseException, *, limit: int = 160) -> str:
    """``ValueError: boom (at app/x.py:3)`` on one line, bounded."""
    if isinstance(exc, SyntaxError):
        where = (
            f"{_display_path(exc.filename or '?')}:{exc.lineno}" if exc.lineno else ""
        )
        text = f"SyntaxError: {exc.msg}"
        return f"{text} (at {where})" if where else text
    text = taxonomy.describe_exception(exc, limit=limit)
    where = _user_frame(exc)
    return f"{text} (at {where})" if where else text


def _main_guard_tests(node: ast.stmt) -> bool:
    """Whether ``node`` is ``if __name__ == "__main__":`` (either operand order)."""
    if not isinstance(node, ast.If) or not isinstance(node.test, ast.Compare):
        return False
    test = node.test
    if len(test.ops) != 1 or not isinstance(test.ops[0], ast.Eq):
        return False
    operands = [test.left, test.comparators[0]]
    names = [o for o in operands if isinstance(o, ast.Name) and o.id == "__name__"]
    consts = [
        o for o in operands if isinstance(o, ast.Constant) and o.value == "__main__"
    ]
    return len(names) == 1 and len(consts) == 1


_KEPT_UNDER_GUARD = (
    ast.FunctionDef,
    ast.AsyncFunctionDef,
    ast.ClassDef,
    ast.Import,
    ast.ImportFrom,
)


def _defined_under_main_guard(source: str, name: str) -> bool:
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return False
    for node in tree.body:
        if _main_guard_tests(node):
            for stmt in ast.walk(node):
                if isinstance(
                    stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
                ):
                    if stmt.name == name:
                        return True
    return False


def _read_source(path: str, what: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except FileNotFoundError:
        raise TargetError(f"no such file: {path} ({what})") from None
    except IsADirectoryError:
        raise TargetError(f"{path} is a directory, not a .py file ({what})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise TargetError(
            f"cannot read {path} ({what}): {describe_exception(exc)}"
        ) from None


def _load_script(path: str, what: str) -> types.ModuleType:
    """Run a script as ``__main__`` without the body of its ``__main__`` guard."""
    absolute = os.path.abspath(path)
    if absolute in _LOADED_SCRIPTS:
        return _LOADED_SCRIPTS[absolute]
    source = _read_source(path, what)
    try:
        tree = ast.parse(source, filename=path)
    except SyntaxError as exc:
        raise TargetError(
            f"cannot load {path} ({what}): {describe_exception(exc)}"
        ) from None
    for node in tree.body:
        if _main_guard_tests(node):
            kept = [stmt for stmt in node.body if isinstance(stmt, _KEPT_UNDER_GUARD)]
            node.body = kept or [ast.copy_location(ast.Pass(), node)]
            node.orelse = []
    code = compile(tree, absolute, "exec")
    module = types.ModuleType("__main__")
    module.__file__ = absolute
    module.__spec__ = None
    module.__builtins__ = __builtins__
    # As for `python path/to/file.py`: the script's folder comes first on sys.path.
    _ensure_on_path(os.path.dirname(absolute))
    sys.modules["__main__"] = module
    try:
        exec(code, module.__dict__)
    except SystemExit as exc:
        raise TargetError(
            f"loading {path} ({what}) called sys.exit({exc.code!r})"
        ) from None
    except Exception as exc:
        raise TargetError(
            f"loading {path} ({what}) raised {describe_exception(exc)}"
        ) from None
    _LOADED_SCRIPTS[absolute] = module
    return module


def restore_main() -> None:
    """Put the interpreter's own ``__main__`` back after a script was loaded."""
    if _ORIGINAL_MAIN is not None:
        sys.modules["__main__"] = _ORIGINAL_MAIN
    _LOADED_SCRIPTS.clear()


def _package_module_name(path: str) -> tuple[str, str] | None:
    """``(root folder, dotted name)`` when ``path`` sits inside a package."""
    folder, filename = os.path.split(os.path.abspath(path))
    if not os.path.exists(os.path.join(folder, "__init__.py")):
        return None
    stem = filename[: -len(".py")]
    parts = [] if stem == "__init__" else [stem]
    while os.path.exists(os.path.join(folder, "__init__.py")):
        folder, package = os.path.split(folder)
        parts.insert(0, package)
    if not all(_is_dotted_name(p) for p in parts):
        return None
    return folder, ".".join(parts)


def _import(name: str, what: str) -> types.ModuleType:
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if missing == name or name.startswith(missing + "."):
            raise TargetError(f"no module named {missing!r} ({what})") from None
        raise TargetError(
            f"importing {name!r} ({what}) failed: {describe_exception(exc)}"
        ) from None
    except SyntaxError as exc:
        raise TargetError(
            f"cannot load {name!r} ({what}): {describe_exception(exc)}"
        ) from None
    except SystemExit as exc:
        raise TargetError(
            f"importing {name!r} ({what}) called sys.exit({exc.code!r})"
        ) from None
    except Exception as exc:
        raise TargetError(
            f"importing {name!r} ({what}) raised {describe_exception(exc)}"
        ) from None


def _load_file(path: str, what: str) -> types.ModuleType:
    if not os.path.exists(path):
        raise TargetError(f"no such file: {path} ({what})")
    if os.path.isdir(path):
        raise TargetError(f"{path} is a directory, not a .py file ({what})")
    package = _package_module_name(path)
    if package is None:
        return _load_script(path, what)
    root, name = package
    _ensure_on_path(root)
    module = _import(name, what)
    loaded = getattr(module, "__file__", None)
    if loaded and os.path.realpath(loaded) != os.path.realpath(path):
        raise TargetError(
            f"{path} ({what}) is module {name!r}, but that name imports "
            f"{_display_path(loaded)}; another {name.split('.')[0]!r} comes first on sys.path"
        )
    return module


def import_module_ref(text: str, *, what: str = "module") -> types.ModuleType:
    """Import ``package.module`` or load ``path/to/file.py`` (``--reducers``)."""
    if _looks_like_path(text):
        if not text.endswith(".py"):
            raise TargetError(
                f"malformed {what} {text!r}: expected a module name or a .py file"
            )
        return _load_file(text, what)
    if not _is_dotted_name(text):
        raise TargetError(
            f"malformed {what} {text!r}: expected a module name or a .py file"
        )
    return _import(text, what)


def _module_label(ref: Reference) -> str:
    return ref.path if ref.path is not None else f"module {ref.module!r}"


def resolve(ref: Reference, *, what: str = "target") -> Any:
    """Load the module or file of ``ref`` and walk its attribute path."""
    if ref.path is not None:
        module = _load_file(ref.path, what)
    else:
        assert ref.module is not None
        module = _import(ref.module, f"{what} {ref.text!r}")
    obj: Any = module
    walked: list[str] = []
    for attr in ref.attrs:
        try:
            # getattr on a module or class: what `from m import x` would do too.
            obj = getattr(obj, attr)
        except AttributeError:
            raise TargetError(
                _missing_attribute_message(ref, module, obj, walked, attr, what)
            ) from None
        except Exception as exc:
            raise TargetError(
                f"reading {'.'.join([*walked, attr])!r} of {_module_label(ref)} ({what}) "
                f"raised {describe_exception(exc)}"
            ) from None
        walked.append(attr)
    return obj


def _missing_attribute_message(
    ref: Reference,
    module: types.ModuleType,
    owner: Any,
    walked: list[str],
    attr: str,
    what: str,
) -> str:
    if walked:
        owner_text = f"{'.'.join(walked)!r} in {_module_label(ref)}"
    else:
        owner_text = _module_label(ref)
    message = f"{owner_text} has no attribute {attr!r} ({what} {ref.text!r})"
    if not walked:
        source_file = getattr(module, "__file__", None)
        source = None
        if source_file and source_file.endswith(".py") and os.path.exists(source_file):
            try:
                with open(source_file, encoding="utf-8") as f:
                    source = f.read()
            except (OSError, UnicodeDecodeError):
                source = None
        if source and _defined_under_main_guard(source, attr):
            return (
                message
                + ': it is defined under `if __name__ == "__main__":`, which does '
                "not run on import; move it to module level"
            )
    try:
        candidates = [name for name in dir(owner) if not name.startswith("__")]
    except Exception:
        candidates = []
    close = difflib.get_close_matches(attr, candidates, n=1)
    if close:
        message += f"; did you mean {close[0]!r}?"
    return message


def describe_type(obj: Any) -> str:
    return describe_type_name(type(obj))


def resolve_callable(text: str) -> tuple[Reference, Any]:
    """Parse and resolve ``TARGET``; it must be callable."""
    ref = parse_reference(text, what="target")
    obj = resolve(ref, what="target")
    if not callable(obj):
        raise TargetError(
            f"target {text!r} is not callable (it is a {describe_type(obj)})"
        )
    return ref, obj


# -- argument factories (--args-from) ---------------------------------------

_SHAPE = "an (args, kwargs) pair or an iterable of such pairs"
# More calls than this from one factory is almost surely an endless iterator:
# refuse it rather than hang (a real deployment's calls can be sampled).
MAX_CALLS = 10_000


def _is_pair(value: Any) -> bool:
    return (
        isinstance(value, (tuple, list))
        and len(value) == 2
        and isinstance(value[0], (tuple, list))
        and isinstance(value[1], Mapping)
    )


def _as_call(value: Any, label: str, factory: str) -> Call:
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise TargetError(
            f"factory {factory!r} must return {_SHAPE}; {label} is "
            f"{_shape_of(value)}, not an (args, kwargs) pair"
        )
    args, kwargs = value
    if not isinstance(args, (tuple, list)):
        raise TargetError(
            f"factory {factory!r}: args of {label} must be a tuple or list, got {describe_type(args)}"
        )
    if not isinstance(kwargs, Mapping):
        raise TargetError(
            f"factory {factory!r}: kwargs of {label} must be a dict, got {describe_type(kwargs)}"
        )
    bad_keys = [k for k in kwargs if not isinstance(k, str)]
    if bad_keys:
        raise TargetError(
            f"factory {factory!r}: kwargs of {label} must have string keys, got {bad_keys[0]!r}"
        )
    return Call(tuple(args), dict(kwargs), label)


def _shape_of(value: Any) -> str:
    if isinstance(value, (tuple, list)):
        return f"a {type(value).__name__} of {len(value)} items"
    return f"a {describe_type(value)}"


def load_calls(text: str) -> list[Call]:
    """Resolve ``--args-from`` and call the factory; its calls, validated."""
    ref = parse_reference(text, what="factory")
    factory = resolve(ref, what="factory")
    if not callable(factory):
        raise TargetError(
            f"factory {text!r} is not callable (it is a {describe_type(factory)})"
        )
    try:
        produced = factory()
        if _is_pair(produced):
            call = _as_call(produced, "its result", text)
            call.label = f"the call from {text}"
            return [call]
        if isinstance(produced, (str, bytes, Mapping)) or not isinstance(
            produced, Iterable
        ):
            raise TargetError(
                f"factory {text!r} must return {_SHAPE}; got {_shape_of(produced)}"
            )
        calls = []
        for index, item in enumerate(produced):
            if index == MAX_CALLS:
                raise TargetError(
                    f"factory {text!r} produced more than {MAX_CALLS} calls (an endless "
                    "iterator?); return a finite sample of the deployment's calls"
                )
            calls.append(_as_call(item, f"item {index}", text))
    except TargetError:
        raise
    except SystemExit as exc:
        raise TargetError(f"factory {text!r} called sys.exit({exc.code!r})") from None
    except Exception as exc:
        raise TargetError(
            f"factory {text!r} raised {describe_exception(exc)}"
        ) from None
    if not calls:
        raise TargetError(
            f"factory {text!r} returned no calls; it must return {_SHAPE}"
        )
    for index, call in enumerate(calls):
        call.label = (
            f"call {index} from {text}" if len(calls) > 1 else f"call from {text}"
        )
    return calls


# -- generated arguments (--examples) -----------------------------------------


def method_owner(ref: Reference) -> type | None:
    """The class of ``Class.method`` when the method takes ``self``, else None."""
    if len(ref.attrs) < 2:
        return None
    owner = resolve(Reference(ref.text, ref.module, ref.path, ref.attrs[:-1]))
    if not isinstance(owner, type):
        return None
    import inspect

    raw = inspect.getattr_static(owner, ref.attrs[-1], None)
    return owner if isinstance(raw, types.FunctionType) else None


def _hint_text(hint: Any) -> str:
    if isinstance(hint, type):
        return describe_type_name(hint)
    return " ".join(repr(hint).replace("typing.", "").split())


def describe_type_name(kind: type) -> str:
    return (
        kind.__name__
        if kind.__module__ == "builtins"
        else f"{kind.__module__}.{kind.__qualname__}"
    )


def _registered(hint: Any) -> Any:
    """A strategy registered with ``loky_check.register_strategy``, or None."""
    try:
        from . import strategies
    except ImportError:
        return None
    lookup = getattr(strategies, "registered_strategy", None)
    return lookup(hint) if lookup is not None and isinstance(hint, type) else None


def _unbuildable(target: str, name: str, hint: Any, reason: str) -> TargetError:
    type_name = hint.__name__ if isinstance(hint, type) else "T"
    return TargetError(
        f"cannot build examples for parameter {name!r} ({_hint_text(hint)}) of {target}: "
        f"{reason}; register one with loky_check.register_strategy({type_name}, <strategy>) "
        "or use --args-from"
    )


def _draw_one(strategy: Any) -> BaseException | None:
    """The exception hypothesis raises when drawing from ``strategy``, or None."""
    from hypothesis import HealthCheck, Phase, given, settings

    failure: list[BaseException] = []

    @settings(
        max_examples=1,
        database=None,
        derandomize=True,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(strategy)
    def draw(value: Any) -> None:
        pass

    try:
        draw()
    except Exception as exc:
        failure.append(exc)
    return failure[0] if failure else None


def _refuse_lock(thing: Any) -> Any:
    raise TypeError(
        "a threading.Lock belongs to one process: hypothesis must not invent one"
    )


def _refuse_locks_as_before_313() -> None:
    """Keep ``threading.Lock`` hints unbuildable, as they are before Python 3.13.

    Until 3.13 ``threading.Lock`` is a factory function, which hypothesis cannot
    resolve; from 3.13 on it is the lock type itself, which hypothesis builds by
    calling it. An invented lock says nothing about the values the deployment
    passes, so the hint stays a usage error (naming the parameter and asking for
    a strategy) on every version. A strategy the project registered for the
    lock type is kept.
    """
    import threading

    from hypothesis import strategies as st

    if not isinstance(threading.Lock, type):
        return
    try:
        from hypothesis.strategies._internal import types as hypothesis_types
    except ImportError:  # private layout changed: register unconditionally
        registered = {}
    else:
        registered = getattr(hypothesis_types, "_global_type_lookup", {})
    if threading.Lock not in registered:
        st.register_type_strategy(threading.Lock, _refuse_lock)


def _reason(exc: BaseException) -> str:
    return f"hypothesis cannot build it ({taxonomy.describe_exception(exc, limit=120)})"


def _mentions_callable(hint: Any, depth: int = 0) -> bool:
    """Whether ``hint`` is or holds ``Callable`` (``Optional[Callable[..]]``,
    ``list[Callable]``...)."""
    import collections.abc
    import typing

    if depth > 20:
        return False
    if hint is collections.abc.Callable or hint is typing.Callable:
        return True
    if typing.get_origin(hint) is collections.abc.Callable:
        return True
    return any(_mentions_callable(arg, depth + 1) for arg in typing.get_args(hint))


def _type_hints(fn: Any) -> dict[str, Any]:
    """The hints of the parameters ``inspect.signature(fn)`` shows.

    ``typing.get_type_hints`` only takes functions, classes and modules: a
    ``functools.partial`` is read through its function, a class through its
    ``__init__`` (its own annotations, e.g. dataclass fields, as a fallback) and
    a callable instance through its class's ``__call__``.
    """
    import functools
    import inspect
    import typing

    while isinstance(fn, functools.partial):
        fn = fn.func
    if isinstance(fn, type):
        hints = {}
        with contextlib.suppress(Exception):
            hints.update(typing.get_type_hints(fn))
        init = fn.__dict__.get("__init__") or getattr(fn, "__init__", None)
        if isinstance(init, types.FunctionType):
            hints.update(typing.get_type_hints(init))
        hints.pop("return", None)
        return hints
    if not isinstance(fn, (types.FunctionType, types.MethodType, types.ModuleType)):
        call = inspect.getattr_static(type(fn), "__call__", None)
        if isinstance(call, types.FunctionType):
            return typing.get_type_hints(call)
    return typing.get_type_hints(fn)


def example_calls(
    fn: Any, count: int, target: str, *, owner: type | None = None
) -> list[Call]:
    """Up to ``count`` calls built by hypothesis from ``fn``'s type hints.

    Required parameters get values (``self`` of a method an instance of its
    class); parameters with defaults keep them. A strategy registered with
    ``loky_check.register_strategy`` wins over ``st.from_type``.
    """
    import inspect

    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import strategies as st

    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError) as exc:
        raise TargetError(
            f"cannot read the signature of {target} for --examples: {exc}"
        ) from None
    try:
        hints = _type_hints(fn)
    except Exception as exc:
        raise TargetError(
            f"cannot evaluate the type hints of {target} for --examples: {describe_exception(exc)}"
        ) from None

    _refuse_locks_as_before_313()
    positional: list[str] = []
    keyword_only: list[str] = []
    strategies: dict[str, Any] = {}
    for index, parameter in enumerate(signature.parameters.values()):
        if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            continue
        if parameter.default is not parameter.empty:
            continue
        name = parameter.name
        if index == 0 and owner is not None and name not in hints:
            hint: Any = owner
        elif name in hints:
            hint = hints[name]
        else:
            raise TargetError(
                f"cannot build examples for parameter {name!r} of {target}: it has no type "
                "hint; annotate it (and register a strategy with loky_check.register_strategy "
                "if hypothesis cannot build its type) or use --args-from"
            )
        strategy = _registered(hint)
        if strategy is None and _mentions_callable(hint):
            raise TargetError(
                f"cannot build examples for parameter {name!r} ({_hint_text(hint)}) of "
                f"{target}: hypothesis would invent a function that carries hypothesis' "
                "own state, not one the deployment passes; use --args-from with the "
                "real callables"
            )
        if strategy is None:
            try:
                strategy = st.from_type(hint)
            except Exception as exc:
                raise _unbuildable(target, name, hint, _reason(exc)) from None
        strategies[name] = strategy
        if parameter.kind is parameter.KEYWORD_ONLY:
            keyword_only.append(name)
        else:
            positional.append(name)

    collected: list[dict[str, Any]] = []

    @settings(
        max_examples=count,
        database=None,
        derandomize=True,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(st.fixed_dictionaries(strategies))
    def collect(values: dict[str, Any]) -> None:
        if len(collected) < count:
            collected.append(values)

    try:
        collect()
    except Exception as exc:
        # Name the parameter hypothesis could not build.
        for name, strategy in strategies.items():
            failure = _draw_one(strategy)
            if failure is not None:
                parameter_hint = hints.get(name, owner)
                raise _unbuildable(
                    target, name, parameter_hint, _reason(failure)
                ) from None
        raise TargetError(
            f"hypothesis could not build examples for {target}: {describe_exception(exc)}"
        ) from None

    calls = []
    for index, values in enumerate(collected):
        args = tuple(values[name] for name in positional)
        kwargs = {name: values[name] for name in keyword_only}
        calls.append(Call(args, kwargs, f"example {index}"))
    return calls


def check_calls_fit(fn: Any, calls: list[Call], target: str) -> None:
    """Each call must bind to ``fn``'s signature, as it will in the worker."""
    import inspect

    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):
        return  # builtins without a signature: nothing to compare against
    for call in calls:
        try:
            signature.bind(*call.args, **call.kwargs)
        except TypeError as exc:
            raise TargetError(
                f"{call.label} does not fit "
                f"{target}{signature.replace(return_annotation=signature.empty)}: {exc}"
            ) from None
