"""The pickling diagnosis engine: which argument, where inside it, why, what to do.

``check_call`` first pickles the whole call with the C pickler (the fast path:
a success costs one ``dumps`` plus a byte scan for ``__main__`` references).
Only a failure pays for the diagnosis: each argument is tried alone, and each
failing one is replayed (``replay``) to find every culprit and its exact path;
each culprit is then classified (``taxonomy``), checked against the three
picklers (``carried_by``), given a severity relative to loky's pickler and a
remedy whose ``wrap`` advice is verified by a real round trip.
"""

from __future__ import annotations

import functools
import inspect
import pickle
import types
from collections.abc import Callable
from typing import Any

from . import replay, taxonomy
from .report import Finding, Report
from .report import display_path as _display_path

PICKLERS = ("pickle", "cloudpickle", "loky")
STAGES = ("dump", "load")

__all__ = [
    "check_call",
    "check_object",
    "diagnose_pickling_failure",
    "describe_callable",
    "bind_arguments",
    "PICKLERS",
]


# ----------------------------------------------------------------------------
# Arguments


class Argument:
    """One thing a call sends: ``fn``, ``args[i]`` or ``kwargs['k']``."""

    __slots__ = ("argument", "parameter", "root", "value")

    def __init__(self, argument: str, parameter: str | None, root: str, value: Any):
        self.argument = argument
        self.parameter = parameter
        self.root = root  # the start of every path below this argument
        self.value = value

    def __repr__(self) -> str:
        return f"Argument({self.argument!r}, {self.parameter!r}, {self.root!r})"


def bind_arguments(fn: Any, args: tuple, kwargs: dict) -> list[Argument]:
    """Label each argument with the parameter it binds to, when binding works.

    ``*rest`` absorbs ``args[i]`` as ``rest[j]``, ``**opts`` absorbs
    ``kwargs['k']`` as ``opts['k']``; when the signature is unknown or does not
    accept the call, arguments are labelled ``args[i]`` / ``kwargs['k']``.
    """
    labels = [Argument(f"args[{i}]", None, f"args[{i}]", v) for i, v in enumerate(args)]
    labels += [
        Argument(f"kwargs[{k!r}]", None, f"kwargs[{k!r}]", v) for k, v in kwargs.items()
    ]
    try:
        signature = inspect.signature(fn)
        signature.bind(*args, **kwargs)
    except Exception:
        return labels
    params = list(signature.parameters.values())
    positional = [
        p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    var_positional = next((p for p in params if p.kind == p.VAR_POSITIONAL), None)
    var_keyword = next((p for p in params if p.kind == p.VAR_KEYWORD), None)
    named = {
        p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    }
    bound = []
    for i, value in enumerate(args):
        if i < len(positional):
            name = positional[i].name
            bound.append(Argument(f"args[{i}]", name, name, value))
        elif var_positional is not None:
            name = var_positional.name
            j = i - len(positional)
            bound.append(Argument(f"args[{i}]", name, f"{name}[{j}]", value))
        else:  # pragma: no cover - bind() accepted the call
            bound.append(labels[i])
    for key, value in kwargs.items():
        if key in named:
            bound.append(Argument(f"kwargs[{key!r}]", key, key, value))
        elif var_keyword is not None:
            name = var_keyword.name
            bound.append(Argument(f"kwargs[{key!r}]", name, f"{name}[{key!r}]", value))
        else:  # pragma: no cover
            bound.append(Argument(f"kwargs[{key!r}]", None, f"kwargs[{key!r}]", value))
    return bound


def describe_callable(fn: Any) -> str:
    """``module:qualname`` of a callable, for report headers."""
    try:
        module = getattr(fn, "__module__", None)
        qualname = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None)
    except Exception:
        module = qualname = None
    if isinstance(module, str) and isinstance(qualname, str):
        return f"{module}:{qualname}"
    if taxonomy.isa(fn, functools.partial):
        # no address in the header: reports stay reproducible
        return f"functools.partial({describe_callable(functools.partial.func.__get__(fn))})"
    kind = type(fn)
    if callable(fn) and not taxonomy.is_c_type(kind):
        try:
            owner = type.__dict__["__module__"].__get__(kind)
            return f"{owner}:{type.__dict__['__qualname__'].__get__(kind)}.__call__"
        except Exception:  # noqa: BLE001 - fall back to the bounded repr
            pass
    return replay.safe_repr(fn)


# ----------------------------------------------------------------------------
# Context shared by the findings of one check


class _Context:
    """The picklers of one check, created once per call."""

    def __init__(self, pickler: str):
        if pickler not in PICKLERS:
            raise ValueError(
                f"pickler must be one of 'pickle', 'cloudpickle', 'loky', got {pickler!r}"
            )
        self.pickler = pickler
        self.tester = replay.make_tester(pickler)
        self._testers: dict[str, replay.Tester] = {pickler: self.tester}

    def tester_for(self, name: str) -> replay.Tester:
        tester = self._testers.get(name)
        if tester is None:
            tester = self._testers[name] = replay.make_tester(name)
        return tester

    @property
    def loky(self) -> replay.Tester:
        return self.tester_for("loky")

    def by_value_tester(self) -> replay.Tester | None:
        """loky's pickler, when it would take what plain pickle cannot by value."""
        if self.tester.by_value:
            return None
        loky = self.loky
        return loky if loky.by_value else None


def _carried(tester: replay.Tester, obj: Any) -> bool:
    return not tester.test(obj).bad


def carried_by(ctx: _Context, obj: Any) -> dict[str, bool]:
    """Which of the three picklers carry ``obj`` across a process boundary."""
    return {name: _carried(ctx.tester_for(name), obj) for name in PICKLERS}


# ----------------------------------------------------------------------------
# wrap_non_picklable_objects, verified


def _wrapper() -> Any:
    """loky's ``wrap_non_picklable_objects`` (None when loky does not provide it)."""
    try:
        from loky.cloudpickle_wrapper import wrap_non_picklable_objects

        return wrap_non_picklable_objects
    except Exception:
        pass
    try:
        import loky

        return loky.wrap_non_picklable_objects
    except Exception:
        return None


def wrap_round_trips(obj: Any) -> bool:
    """Whether ``loky.wrap_non_picklable_objects(obj)`` survives standard pickle."""
    wrap = _wrapper()
    if wrap is None:
        return False
    try:
        wrapped = wrap(obj)
        pickle.loads(pickle.dumps(wrapped, protocol=replay.PROTOCOL))
    except BaseException as exc:  # noqa: BLE001
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            raise
        return False
    return True


# ----------------------------------------------------------------------------
# Findings


def _bare_instance(cls: type) -> Any:
    """An instance of ``cls`` built the way unpickling builds one (no __init__)."""
    for klass in cls.__mro__:
        if not taxonomy.is_c_type(klass):
            continue
        try:
            return klass.__new__(cls)
        except Exception:
            return None
    return None


def _location(defn: Any) -> str | None:
    """``file:line`` where a function or class is defined."""
    try:
        if taxonomy.isa(defn, types.FunctionType):
            code = defn.__code__
            filename, line = code.co_filename, code.co_firstlineno
        elif taxonomy.isa(defn, type):
            filename = inspect.getsourcefile(defn)
            if filename is None:
                return None
            _, line = inspect.getsourcelines(defn)
        else:
            return None
    except Exception:
        return None
    return f"{_display_path(filename)}:{line}"


def _summary(obj: Any, definition: Any, type_name: str, location: str | None) -> str:
    at = f" at {location}" if location else ""
    if definition is not None:
        name = getattr(definition, "__qualname__", "?")
        return f"instance of class {name}{at}"
    if taxonomy.isa(obj, types.FunctionType):
        name = obj.__name__ if obj.__name__ == "<lambda>" else obj.__qualname__
        return f"function {name}{at}"
    if taxonomy.isa(obj, type):
        return f"class {obj.__qualname__}{at}"
    return type_name


def _own_hook(obj: Any) -> str:
    """The pickling hook ``obj``'s class defines in Python (``__reduce__``...)."""
    try:
        return replay._user_reducer_name(type(obj)) or ""
    except Exception:  # noqa: BLE001 - only a nicer fix text
        return ""


def make_finding(
    culprit: replay.Culprit,
    argument: Argument,
    ctx: _Context,
    *,
    carried: dict[str, bool] | None = None,
) -> Finding:
    """Turn one culprit into a classified, checked, explained finding."""
    obj = culprit.obj
    definition = culprit.definition
    reduce_failure = culprit.reduce_failure
    exc = culprit.exc
    main_ref = culprit.main_ref or (
        culprit.stage == "load"
        and taxonomy.is_definition(definition if definition is not None else obj)
        and getattr(definition if definition is not None else obj, "__module__", None)
        in ("__main__", "__mp_main__")
    )
    category = culprit.category or taxonomy.categorize(
        obj,
        definition=definition,
        exc=exc,
        reducer_raised=bool(reduce_failure and reduce_failure.user_defined),
        main_ref=main_ref,
        stage=culprit.stage,
    )
    if carried is None:
        # an instance of an unfindable class: the verdict is about the class
        # (anything else wrong inside the instance is its own finding)
        carried = carried_by(ctx, definition if definition is not None else obj)
    if main_ref and culprit.stage == "load":
        # dumps fine by name, but no worker can load a __main__ reference
        for name in PICKLERS:
            if not ctx.tester_for(name).by_value:
                carried[name] = False
    severity = "warning" if carried.get("loky") else "error"
    # Only where wrapping is a remedy: the check loads the culprit back in this
    # process, which must never run the reducers of a load-side failure.
    wrap_fixes = "wrap" in taxonomy.REMEDIES[category] and wrap_round_trips(obj)
    if (
        not wrap_fixes
        and definition is not None
        and "wrap" in taxonomy.REMEDIES[category]
    ):
        bare = _bare_instance(definition)
        wrap_fixes = bare is not None and wrap_round_trips(bare)
    remedy = taxonomy.choose_remedy(
        category,
        wrap_fixes=wrap_fixes,
        obj=obj,
        definition=definition,
        exc=exc,
        stage=culprit.stage,
    )
    type_name = (
        replay.qualified_name(definition)
        if definition is not None
        else replay.type_name(obj)
    )
    texts = taxonomy.texts(
        category,
        remedy,
        path=culprit.path,
        obj=obj,
        type_name=type_name,
        definition=definition,
        exc=exc,
        wrap_fixes=wrap_fixes,
        loky_carries=bool(carried.get("loky")),
        reducer_name=reduce_failure.reducer_name
        if reduce_failure
        else (_own_hook(obj) if category == "fidelity" else ""),
        cloudpickle_carries=bool(carried.get("cloudpickle")),
    )
    if culprit.detail:
        texts.message = f"{texts.message.rstrip('.')}: {culprit.detail}."
    defn = definition if definition is not None else obj
    location = _location(defn) if taxonomy.is_definition(defn) else None
    return Finding(
        severity=severity,
        stage=culprit.stage,
        argument=argument.argument,
        parameter=argument.parameter,
        path=culprit.path,
        type=type_name,
        category=category,
        remedy=remedy,
        message=texts.message,
        fix=texts.fix,
        carried_by=carried,
        wrap_fixes=wrap_fixes,
        location=location,
        summary=_summary(obj, definition, type_name, location),
        culprit=obj,
    )


def _diagnose_argument(
    argument: Argument, ctx: _Context, walker: replay.Walker
) -> list[Finding]:
    tester = ctx.tester
    try:
        status = tester.test(argument.value)
        if not status.bad:
            return []
        culprits = walker.walk(argument.value, argument.root, status)
    except Exception as exc:  # noqa: BLE001 - the walk must never let one escape
        culprits = [
            replay.Culprit(
                argument.root,
                argument.value,
                replay.Status(False, exc),
                tester.name,
                exc=exc,
            )
        ]
    findings = []
    for culprit in culprits:
        finding = make_finding(culprit, argument, ctx)
        if ctx.pickler != "pickle" and finding.carried_by.get(ctx.pickler):
            continue  # only what the pickler under test fails on
        findings.append(finding)
    return findings


def _check(
    make_arguments: Callable[[], list[Argument]],
    whole: Any,
    ctx: _Context,
    make_target: Callable[[], str],
    in_worker: bool,
    status: replay.Status | None = None,
) -> Report:
    """Test ``whole`` (unless ``status`` already says how it went), then
    diagnose each argument if it failed."""
    if status is None:
        status = ctx.tester.test(whole)
    if not status.bad and not in_worker:
        return Report(target=make_target(), pickler=ctx.pickler)  # the fast path
    arguments = make_arguments()
    target = make_target()
    findings: list[Finding] = []
    if status.bad:
        for argument in arguments:
            # one walker per argument: an object shared by two arguments makes
            # both fail, and both are named
            walker = replay.Walker(ctx.tester, by_value_tester=ctx.by_value_tester())
            findings.extend(_diagnose_argument(argument, ctx, walker))
        if not findings and not status.ok:
            # Every part pickles alone but not together (shared state, a
            # reducer that depends on context): report the whole.
            whole_arg = Argument("call", None, "call", whole)
            culprit = replay.Culprit(
                "call", whole, status, ctx.tester.name, exc=status.exc
            )
            findings.append(make_finding(culprit, whole_arg, ctx))
    report = Report(target=target, pickler=ctx.pickler, findings=findings)
    if in_worker:
        from . import worker_probe

        try:
            loaded = worker_probe.load_in_worker(arguments, ctx, target, findings)
        except Exception as exc:  # noqa: BLE001 - no worker to ask: say so in one line
            raise RuntimeError(
                f"in_worker=True could not run the check in a loky worker: {exc!r}"
            ) from exc
        report = report.merge(loaded)
        report.findings = _superseded_dropped(report.findings)
    return report


def _extends(path: str, prefix: str) -> bool:
    return path.startswith(prefix) and path[len(prefix) : len(prefix) + 1] in (".", "[")


def _superseded_dropped(findings: list[Finding]) -> list[Finding]:
    """Drop a dump-side warning (loky's pickler carries it) when the worker
    could not load something inside it: the load finding names the real
    culprit (``fn.<global X>``), one finding per culprit (spec §10)."""
    loads = [f for f in findings if f.stage == "load" and f.severity == "error"]
    return [
        f
        for f in findings
        if not (
            f.stage == "dump"
            and f.severity == "warning"
            and any(
                g.argument == f.argument and _extends(g.path, f.path) for g in loads
            )
        )
    ]


def check_call(
    fn: Any,
    args: tuple = (),
    kwargs: dict | None = None,
    *,
    pickler: str = "pickle",
    in_worker: bool = False,
    target: str | None = None,
) -> Report:
    """Say whether ``fn(*args, **kwargs)`` can be sent to a process pool.

    ``pickler`` is the pickler under test (``"pickle"``, ``"cloudpickle"`` or
    ``"loky"``); ``in_worker=True`` also loads the pickled call in a real loky
    worker. Returns a :class:`Report` (``ok``, ``findings``, ``str()``,
    ``to_dict()``).
    """
    ctx = _Context(pickler)
    status = None
    if (
        type(args) is tuple
        and (kwargs is None or type(kwargs) is dict)
        and not in_worker
    ):
        # The fast path: one pickle of the whole call; a success is the answer
        # (and a failure is not tried again below).
        status = ctx.tester.test((fn, args, {} if kwargs is None else kwargs))
        if not status.bad:
            return Report(
                target=target if target is not None else describe_callable(fn),
                pickler=pickler,
            )
    if not isinstance(args, tuple):
        try:
            args = tuple(args)
        except TypeError:
            raise TypeError(
                f"args must be a tuple, got {type(args).__name__}"
            ) from None
    if kwargs is None:
        kwargs = {}
    elif not isinstance(kwargs, dict):
        raise TypeError(f"kwargs must be a dict, got {type(kwargs).__name__}")
    return _check(
        lambda: [Argument("fn", None, "fn", fn), *bind_arguments(fn, args, kwargs)],
        (fn, args, kwargs),
        ctx,
        lambda: target if target is not None else describe_callable(fn),
        in_worker,
        status,
    )


def check_object(
    obj: Any,
    *,
    name: str = "obj",
    pickler: str = "pickle",
    in_worker: bool = False,
    target: str | None = None,
) -> Report:
    """Say whether ``obj`` can cross a process boundary; paths start with ``name``."""
    ctx = _Context(pickler)
    return _check(
        lambda: [Argument(name, None, name, obj)],
        obj,
        ctx,
        lambda: target if target is not None else name,
        in_worker,
    )


def diagnose_pickling_failure(
    obj: Any, *, name: str = "result", stage: str = "dump", pickler: str = "loky"
) -> Report:
    """Diagnose an object (a result or exception) that failed to pickle.

    For the runtime check mode and worker-side annotation: returns the same
    report as ``check_object`` (never raises on what it inspects). ``stage`` is
    recorded on findings that do not already carry their own.
    """
    try:
        report = check_object(obj, name=name, pickler=pickler)
    except Exception as exc:  # noqa: BLE001 - a diagnosis must not mask the error
        culprit = replay.Culprit(name, obj, replay.Status(False, exc), pickler, exc=exc)
        finding = Finding(
            severity="error",
            stage=stage,
            argument=name,
            parameter=None,
            path=name,
            type=replay.type_name(obj),
            category="other",
            remedy="none_known",
            message=taxonomy.describe_exception(exc),
            fix="",
            carried_by={p: False for p in PICKLERS},
            summary=replay.type_name(obj),
            culprit=culprit.obj,
        )
        return Report(target=name, pickler=pickler, findings=[finding])
    if stage == "load":
        for finding in report.findings:
            finding.stage = "load"
    return report
