"""Load-side checks in a real loky worker.

A call can pickle and still fail in the worker: a function pickled by name
that the worker cannot import, a definition under ``if __name__ ==
"__main__":``, a reducer whose rebuild function exists only in the parent, a
``__setstate__`` that raises. ``load_in_worker`` (behind
``check_call(..., in_worker=True)``) loads each argument in a worker and
narrows every failure down the same paths as the dump-side replay, one worker
round trip per level. ``check_return_value`` runs a call in a worker and
checks that its return value (or raised exception) gets back.
"""

from __future__ import annotations

import builtins
import pickle
import traceback
from typing import Any

from . import replay, taxonomy
from .report import Finding, Report

__all__ = ["check_return_value", "load_in_worker", "probe_executor"]

# Give up narrowing below this many levels (each level is one round trip).
_MAX_LEVELS = 64


class WorkerLoadError(Exception):
    """Stands in the parent for an exception raised while loading in the worker."""


def probe_executor(executor: Any = None) -> Any:
    """The executor probes run on: the given one, else loky's reusable one
    (kept as it is when it exists, a single worker otherwise)."""
    if executor is not None:
        return executor
    from loky import get_reusable_executor

    return get_reusable_executor(max_workers=1, reuse=True)


# ----------------------------------------------------------------------------
# Runs in the worker


def _exception_record(exc: BaseException) -> tuple[str, str, str]:
    kind = type(exc)
    try:
        message = str(exc)
    except Exception:
        message = "<unprintable>"
    return kind.__module__, kind.__qualname__, message[:500]


def _load_payloads(
    payloads: list[bytes], echo: str | None = None
) -> list[tuple[tuple[str, str, str] | None, bytes | None]]:
    """Load each payload: (None, copy) when it loads, else (the exception's
    record, None). With ``echo`` (a pickler name) the loaded object is pickled
    again with it and sent back, so the parent can compare the round trip."""
    results: list[tuple[tuple[str, str, str] | None, bytes | None]] = []
    for payload in payloads:
        try:
            loaded = pickle.loads(payload)
        except BaseException as exc:  # noqa: BLE001 - report whatever loading raises
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
            results.append((_exception_record(exc), None))
            continue
        copy = None
        if echo is not None:
            try:
                copy = bytes(replay.make_tester(echo).dumps(loaded))
            except BaseException:  # noqa: BLE001 - the way back is another check
                copy = None
        results.append((None, copy))
    return results


def _rebuild_exception(record: tuple[str, str, str]) -> BaseException:
    """An exception of the worker's type when it is a builtin one (so type tests
    such as ``isinstance(exc, ImportError)`` still work), else a stand-in."""
    module, qualname, message = record
    kind = getattr(builtins, qualname, None) if module == "builtins" else None
    if isinstance(kind, type) and issubclass(kind, Exception):
        try:
            return kind(message)
        except Exception:
            pass
    if module == "_pickle" and qualname == "UnpicklingError":
        return pickle.UnpicklingError(message)
    return WorkerLoadError(f"{module}.{qualname}: {message}")


# ----------------------------------------------------------------------------
# in_worker=True


class WorkerCrashed(Exception):
    """The worker died (or hung) while loading a payload."""


# A load that takes longer than this is treated as a hang (the worker is killed).
LOAD_TIMEOUT = 60.0


class _Prober:
    """Submits loads to a worker; a worker that dies or hangs is replaced, and
    the payloads of a crashed batch are retried one by one to blame the right one."""

    def __init__(self, executor: Any = None):
        self._given = executor
        self.executor = probe_executor(executor)

    def _fresh(self) -> None:
        if self._given is None:
            self.executor = probe_executor()

    def run(
        self, payloads: list[bytes], echo: str | None = None
    ) -> list[tuple[BaseException | None, bytes | None]]:
        if not payloads:
            return []
        try:
            future = self.executor.submit(_load_payloads, payloads, echo)
            records = future.result(timeout=LOAD_TIMEOUT)
        except Exception as exc:  # noqa: BLE001 - broken pool, hang, dead worker
            if isinstance(exc, TimeoutError):
                self.executor.shutdown(wait=True, kill_workers=True)
            self._fresh()
            if len(payloads) == 1:
                reason = "hung" if isinstance(exc, TimeoutError) else "died"
                return [
                    (
                        WorkerCrashed(
                            f"the worker {reason} while loading it ({exc!r})"
                        ),
                        None,
                    )
                ]
            out = []
            for payload in payloads:
                out.extend(self.run([payload], echo))
            return out
        return [
            (None if r is None else _rebuild_exception(r), copy) for r, copy in records
        ]

    def load(self, payloads: list[bytes]) -> list[BaseException | None]:
        return [error for error, _copy in self.run(payloads)]


def _load_carried(ctx: Any, obj: Any, definition: Any) -> dict[str, bool]:
    """Which picklers would carry a culprit that failed to load in the worker:
    only those taking the definition by value (e.g. a ``__main__`` function)."""
    defn = definition if definition is not None else obj
    carried = {}
    for name in ("pickle", "cloudpickle", "loky"):
        tester = ctx.tester_for(name)
        carried[name] = bool(
            name != ctx.pickler
            and tester.by_value
            and taxonomy.is_definition(defn)
            and not replay.by_reference(defn)
        )
    return carried


def _narrow(
    prober: _Prober, ctx: Any, root: Any, path: str, exc: BaseException
) -> list[tuple[str, Any, Any, BaseException]]:
    """(path, culprit, definition, exception) of each object that fails to load."""
    tester = ctx.tester
    frontier = [(root, path, exc)]
    culprits = []
    seen: set[int] = set()
    keepalive: list[Any] = []
    for _level in range(_MAX_LEVELS):
        if not frontier:
            break
        # expand every node of this level, then one round trip for all children
        batch = []  # (parent index, child, payload)
        nodes = []
        for obj, node_path, node_exc in frontier:
            keepalive.append(obj)
            children = []
            if not taxonomy.is_terminal(obj):
                try:
                    children = replay.expand(obj, tester)
                except Exception:
                    children = []
            keepalive.append(children)
            payloads = []
            for child in children:
                if id(child.obj) == id(obj):
                    continue
                try:
                    payloads.append((child, tester.dumps(child.obj)))
                except Exception:
                    continue
            nodes.append((obj, node_path, node_exc, payloads))
            batch.extend(p for _, p in payloads)
        results = prober.load(batch)
        frontier = []
        position = 0
        for obj, node_path, node_exc, payloads in nodes:
            bad = []
            for child, _payload in payloads:
                child_exc = results[position]
                position += 1
                if child_exc is not None:
                    bad.append((child, child_exc))
            if not bad:
                if id(obj) not in seen:
                    seen.add(id(obj))
                    culprits.append((node_path, obj, None, node_exc))
                continue
            for child, child_exc in bad:
                if child.kind == "class_of":
                    if id(child.obj) not in seen:
                        seen.add(id(child.obj))
                        culprits.append((node_path, obj, child.obj, child_exc))
                    continue
                frontier.append((child.obj, node_path + child.step, child_exc))
    for obj, node_path, node_exc in frontier:  # too deep: report where we stopped
        culprits.append((node_path, obj, None, node_exc))
    return culprits


def load_in_worker(
    arguments: list, ctx: Any, target: str, findings: list[Finding]
) -> Report:
    """Load each argument (pickled with the pickler under test) in a real loky
    worker; failures become ``stage="load"`` findings narrowed to the culprit.

    Arguments with an error are skipped: they do not get there. Those only
    loky's pickler carries (warnings) are loaded as loky's pickler sends them.
    """
    from .engine import _Context, make_finding

    prober = _Prober()
    errors = {f.argument for f in findings if f.severity == "error"}
    warned = {f.argument for f in findings} - errors
    loky_ctx = None
    candidates = []  # (argument, the context it travels with, payload)
    for argument in arguments:
        if argument.argument in errors:
            continue  # it never gets there
        arg_ctx = ctx
        if argument.argument in warned:
            # Only loky's pickler carries it: what it sends must load too
            # (a by-value function whose global the worker cannot import).
            loky_ctx = loky_ctx or _Context("loky")
            arg_ctx = loky_ctx
        try:
            candidates.append((argument, arg_ctx, arg_ctx.tester.dumps(argument.value)))
        except Exception:
            continue
    load_findings: list[Finding] = []
    if not candidates:
        return Report(target=target, pickler=ctx.pickler)
    outcomes = prober.run([payload for _, _, payload in candidates], ctx.pickler)
    for (argument, arg_ctx, _payload), (error, copy) in zip(
        candidates, outcomes, strict=True
    ):
        if error is None:
            if arg_ctx is ctx:
                load_findings.extend(_fidelity_findings(argument, copy, ctx))
            continue
        for path, obj, definition, exc in _narrow(
            prober, arg_ctx, argument.value, argument.root, error
        ):
            culprit = replay.Culprit(
                path,
                obj,
                replay.Status(True),
                arg_ctx.pickler,
                definition=definition,
                exc=exc,
                stage="load",
            )
            carried = _load_carried(arg_ctx, obj, definition)
            finding = make_finding(culprit, argument, arg_ctx, carried=carried)
            finding.message = _with_worker_error(finding.message, exc)
            load_findings.append(finding)
    return Report(target=target, pickler=ctx.pickler, findings=load_findings)


def _fidelity_findings(argument: Any, copy: bytes | None, ctx: Any) -> list[Finding]:
    """Compare an argument with its parent -> worker -> parent copy."""
    from .engine import make_finding
    from .fidelity import locate_differences

    if copy is None:
        return []
    try:
        returned = pickle.loads(copy)
    except Exception:  # noqa: BLE001 - loading back is the result direction
        return []
    findings = []
    for diff in locate_differences(argument.value, returned, argument.root):
        culprit = replay.Culprit(
            diff.path,
            diff.obj,
            replay.Status(True),
            ctx.pickler,
            stage="load",
            category="fidelity",
            detail=diff.detail,
        )
        carried = {name: False for name in ("pickle", "cloudpickle", "loky")}
        findings.append(make_finding(culprit, argument, ctx, carried=carried))
    return findings


def _with_worker_error(message: str, exc: BaseException) -> str:
    detail = taxonomy.describe_exception(exc)
    if detail and detail not in message:
        return f"{message} In the worker: {detail}."
    return message


# ----------------------------------------------------------------------------
# check_return_value


def _strip(report: Report) -> Report:
    """A report that pickles: the culprits stay in the worker."""
    for finding in report.findings:
        finding.culprit = None
    return report


def _run_and_probe(fn: Any, args: tuple, kwargs: dict) -> dict[str, Any]:
    """In the worker: run the call, then check that what it produced gets back."""
    from loky.backend import reduction

    from .engine import check_object

    try:
        outcome = fn(*args, **kwargs)
        name = "result"
    except BaseException as exc:  # noqa: BLE001 - the exception is what travels back
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            raise
        outcome = exc
        name = "exception"
        exc.__traceback__ = None
    report = check_object(outcome, name=name, pickler="pickle", target=name)
    payload = None
    load_error = None
    try:
        payload = bytes(reduction.dumps(outcome))
    except BaseException:  # noqa: BLE001 - the report above says why
        payload = None
    if payload is not None:
        try:
            pickle.loads(payload)
        except Exception as exc:  # noqa: BLE001 - a reducer or __setstate__ raised
            load_error = _exception_record(exc)
            payload = None
            report.findings.extend(_narrow_here(outcome, name, exc))
    return {
        "name": name,
        "report": _strip(report),
        "payload": payload,
        "load_error": load_error,
        "type": replay.type_name(outcome),
    }


class _LocalProber:
    """Loads in this very process (for a value that fails to load where it was made)."""

    def load(self, payloads: list[bytes]) -> list[BaseException | None]:
        return [error for error, _copy in _rebuild_all(_load_payloads(payloads))]


def _rebuild_all(records: list) -> list[tuple[BaseException | None, bytes | None]]:
    return [(None if r is None else _rebuild_exception(r), copy) for r, copy in records]


def _narrow_here(outcome: Any, name: str, exc: BaseException) -> list[Finding]:
    """Findings, narrowed to the culprit, for a value that does not load back."""
    from .engine import Argument, _Context, make_finding

    ctx = _Context("loky")
    argument = Argument(name, None, name, outcome)
    findings = []
    try:
        culprits = _narrow(_LocalProber(), ctx, outcome, name, exc)  # type: ignore[arg-type]
    except Exception:  # noqa: BLE001 - fall back to the value as a whole
        culprits = [(name, outcome, None, exc)]
    for path, obj, definition, error in culprits:
        culprit = replay.Culprit(
            path,
            obj,
            replay.Status(True),
            "loky",
            definition=definition,
            exc=error,
            stage="load",
        )
        carried = _load_carried(ctx, obj, definition)
        finding = make_finding(culprit, argument, ctx, carried=carried)
        finding.message = finding.message.replace(
            "loading it fails", "loading it back fails"
        )
        findings.append(finding)
    return findings


def check_return_value(
    fn: Any, args: tuple = (), kwargs: dict | None = None, *, executor: Any = None
) -> Report:
    """Run ``fn(*args, **kwargs)`` in a real loky worker and check that its
    return value (or the exception it raises) pickles back to the parent.

    Findings name ``result`` or ``exception`` as their argument, with paths
    inside it; a value that pickles but cannot be loaded (in the worker or
    the parent) is an ``unpickle_error`` with ``stage="load"``.
    """
    from .engine import _superseded_dropped, check_call, describe_callable

    kwargs = dict(kwargs or {})
    target = describe_callable(fn)
    call_report = check_call(fn, tuple(args), kwargs, pickler="loky", target=target)
    if not call_report.ok:
        return call_report  # the call itself cannot reach the worker
    pool = probe_executor(executor)
    try:
        probe = pool.submit(_run_and_probe, fn, tuple(args), kwargs).result()
    except Exception as exc:  # noqa: BLE001 - the probe's own result did not get back
        finding = _finding("result", exc, "dump", replay.type_name(exc))
        return Report(target=target, pickler="pickle", findings=[finding])
    name, type_name = probe["name"], probe["type"]
    findings = list(probe["report"].findings)
    if probe["load_error"] is not None and not any(f.stage == "load" for f in findings):
        error = _rebuild_exception(probe["load_error"])
        findings.append(_finding(name, error, "load", type_name))
    elif probe["payload"] is not None:
        try:
            pickle.loads(probe["payload"])
        except Exception as exc:  # noqa: BLE001 - fails to load in the parent
            findings.append(_finding(name, exc, "load", type_name))
    # a by-value function whose cell fails to load back: one finding, at the cell
    findings = _superseded_dropped(findings)
    return Report(target=target, pickler="pickle", findings=findings)


def _finding(name: str, exc: BaseException, stage: str, type_name: str) -> Finding:
    category = "unpickle_error" if stage == "load" else "other"
    remedy = taxonomy.choose_remedy(category, wrap_fixes=False, exc=exc, stage=stage)
    texts = taxonomy.texts(category, remedy, path=name, exc=exc, type_name=type_name)
    detail = "".join(traceback.format_exception_only(type(exc), exc)).strip()
    return Finding(
        severity="error",
        stage=stage,
        argument=name,
        parameter=None,
        path=name,
        type=type_name,
        category=category,
        remedy=remedy,
        message=texts.message if stage == "load" else f"{detail}",
        fix=texts.fix,
        carried_by={"pickle": False, "cloudpickle": False, "loky": False},
        summary=type_name,
    )
