"""Reducer round-trip property tests through real loky workers.

A registered reducer is a promise: an object pickled with it in the parent,
loaded by a worker, pickled back by that worker and loaded again by the parent
is equal to the original. ``check_reducers`` makes hypothesis check that
promise for every reducer it finds (or for the types it is given):

1. hypothesis draws ``max_examples`` examples of the type (``strategies.py``);
2. the parent pickles each one with loky's pickler and the executor's job
   reducers; the whole batch crosses to a live worker in ONE task, where each
   example is loaded and pickled back with the worker's own reducers (so a
   reducer that exists only in the parent is caught); the parent loads every
   returned copy twice and compares (``equality.py``);
3. only when an example fails does hypothesis run again, one example per trip,
   so that it can shrink the failure to a minimal counterexample.

Examples travel as bytes pickled per example, not as live objects: a broken
reducer then fails that example only, never the task or the pool.
"""

from __future__ import annotations

import copyreg
import dataclasses
import os
import pickle
import random
import re
import sys
import sysconfig
from collections.abc import Callable, Iterable
from typing import Any

from .equality import _registered_equality as registered_equality
from .equality import (
    difference,
    qualified_name,
    register_equality,
    shared_mutable_state,
    short_repr,
)
from .taxonomy import describe_exception

__all__ = [
    "ReducerEntry",
    "ReducerResult",
    "check_reducers",
    "discover_reducers",
    "register_equality",
    "register_strategy",
]

# Stages of one round trip, in order, and what a failure there means.
_STAGE_TEXT = {
    "dump": "raised while the parent pickled it",
    "load": "raised while the worker loaded it",
    "dump_back": "raised while the worker pickled it back",
    "load_back": "raised while the parent loaded the worker's copy",
    "compare": "came back different from a loky worker",
    "alias": "came back sharing mutable state",
    "worker": "crashed or hung the worker",
    "strategy": "no examples",
}
_STAGE_CATEGORY = {
    "dump": "reduce_error",
    "load": "unpickle_error",
    "dump_back": "reduce_error",
    "load_back": "unpickle_error",
    "compare": "fidelity",
    "alias": "fidelity",
    "worker": "other",
    "strategy": "other",
}
_STAGE_FIX = {
    "dump": "make the reducer handle every value of the type (it must return"
    " picklable arguments).",
    "load": "make the rebuild function accept every value the reducer produces"
    " (and importable in the worker).",
    "dump_back": "register the reducer in the worker too: at import time of the module"
    " that defines the type, or with job_reducers/result_reducers.",
    "load_back": "make the rebuild function accept every value the reducer produces.",
    "compare": "make the reducer carry every field at full precision and rebuild"
    " an equal object.",
    "alias": "build fresh mutable state in the rebuild function (no shared or"
    " mutable default arguments).",
    "worker": "fix the rebuild function: it crashes or hangs the worker.",
    "strategy": "",
}

_COUNTEREXAMPLE_LIMIT = 200
_BATCH_BYTES = 32 * 1024 * 1024
_TRIP_TIMEOUT = 60.0
# Crashes of the reusable executor's worker tolerated per check (each costs a
# fresh pool) before shrinking stops.
_MAX_RESPAWNS = 3
_INDENT = " " * 9


# ---------------------------------------------------------------------------
# Results


@dataclasses.dataclass
class ReducerResult:
    """The verdict on one reducer.

    ``type`` and ``reducer`` are qualified names (``app.geo.Point``,
    ``app.geo.reduce_point``); ``counterexample`` is the repr of hypothesis'
    shrunk minimal failing example; ``difference`` says what differs (or the
    exception, with its path when the engine finds one); ``error`` is set when
    the check itself could not run (no strategy, broken executor).
    """

    type: str
    reducer: str
    examples: int = 0
    ok: bool = True
    counterexample: str | None = None
    difference: str | None = None
    error: str | None = None
    stage: str | None = None
    source: str = ""
    shrunk: bool = False
    cls: Any = dataclasses.field(default=None, repr=False, compare=False)
    reducer_function: Any = dataclasses.field(default=None, repr=False, compare=False)
    example: Any = dataclasses.field(default=None, repr=False, compare=False)

    @property
    def category(self) -> str:
        return _STAGE_CATEGORY.get(self.stage or "", "other") if not self.ok else ""

    def to_dict(self) -> dict[str, Any]:
        data = {
            "type": self.type,
            "reducer": self.reducer,
            "examples": self.examples,
            "ok": self.ok,
            "counterexample": self.counterexample,
            "difference": self.difference,
        }
        if self.error is not None:
            data["error"] = self.error
        return data

    def render(self, color: bool = False) -> str:
        """The human block, in the style of the report's findings."""
        severity = "ok" if self.ok else "error"
        label = f"{severity:<9}"
        if color:
            code = "\x1b[32;1m" if self.ok else "\x1b[31;1m"
            label = f"{code}{severity}\x1b[0m" + " " * (9 - len(severity))
        lines = [f"{label}reducer[{self.type}]   {self.reducer}"]
        if self.ok:
            lines.append(
                f"{_INDENT}{self.examples} examples round-tripped through a loky worker"
            )
            return "\n".join(lines)
        if self.error is not None and self.counterexample is None:
            lines.append(f"{_INDENT}{self.error}  [{self.category}]")
            return "\n".join(lines)
        how = (
            f"shrunk by hypothesis, {self.examples} examples"
            if self.shrunk
            else f"not shrunk, {self.examples} examples"
        )
        lines.append(f"{_INDENT}counterexample: {self.counterexample}   ({how})")
        lines.append(f"{_INDENT}{self.difference}  [{self.category}]")
        if self.source and self.source != "listed explicitly":
            origin = f"reducer from {self.source}"
        else:  # no reducer registered: the type's own pickling is under test
            origin = "type listed explicitly, pickled its default way"
        lines.append(
            f"{_INDENT}The example {_STAGE_TEXT.get(self.stage or '', 'failed')}"
            f" ({origin})."
        )
        fix = _STAGE_FIX.get(self.stage or "", "")
        if fix and self.reducer_function is None and self.stage in ("compare", "dump"):
            short = self.type.rsplit(".", 1)[-1]
            fix = (
                f"make {short}'s __getstate__ / __reduce__ keep every field"
                if self.stage == "compare"
                else f"make {short}'s __getstate__ / __reduce__ handle every value"
            ) + " (or register a reducer that does)."
        if fix:
            lines.append(f"{_INDENT}fix: {fix}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.render()


# ---------------------------------------------------------------------------
# Discovery


@dataclasses.dataclass
class ReducerEntry:
    """One reducer to check: the type, the function (None: default pickling), where found."""

    cls: type
    reducer: Callable | None
    source: str

    @property
    def reducer_name(self) -> str:
        return (
            _callable_name(self.reducer)
            if self.reducer is not None
            else _default_name(self.cls)
        )


def _callable_name(function: Any) -> str:
    module = getattr(function, "__module__", None)
    name = getattr(function, "__qualname__", None) or getattr(
        function, "__name__", None
    )
    if name is None:
        return short_repr(function, 60)
    return f"{module}.{name}" if module else name


def _default_name(cls: type) -> str:
    for attribute in ("__reduce_ex__", "__reduce__"):
        for klass in cls.__mro__[:-1]:
            if attribute in klass.__dict__:
                return f"{qualified_name(klass)}.{attribute}"
    return "default pickling"


def _loky_reduction():
    from loky.backend import reduction

    return reduction


def _loky_package() -> str:
    # relocatable: joblib vendors loky as joblib.externals.loky
    return _loky_reduction().__name__.rsplit(".backend", 1)[0]


_SITE_DIRS = tuple(
    os.path.normcase(os.path.realpath(path))
    for path in {
        sysconfig.get_paths().get("purelib"),
        sysconfig.get_paths().get("platlib"),
    }
    if path
)


def _top_package(module_name: str | None) -> str:
    return (module_name or "").split(".", 1)[0]


def _installed_library(package: str) -> bool:
    module = sys.modules.get(package)
    path = getattr(module, "__file__", None)
    if not path:
        return False
    path = os.path.normcase(os.path.realpath(path))
    return any(path.startswith(site + os.sep) for site in _SITE_DIRS)


def _is_user_entry(cls: type, reducer: Any) -> bool:
    """True for reducers user code registered, False for what the standard
    library, loky itself, this toolkit or an installed library registers for
    its own types (numpy's ufunc reducer, socket reducers, ...)."""
    reducer_package = _top_package(getattr(reducer, "__module__", None))
    type_package = _top_package(getattr(cls, "__module__", None))
    if reducer_package in sys.stdlib_module_names or reducer_package in (
        "",
        "builtins",
    ):
        return False
    own = {_top_package(_loky_package()), _top_package(__name__), "pytest_loky"}
    if reducer_package in own:
        return False
    if reducer_package == type_package and _installed_library(reducer_package):
        return False
    return True


def _executor_reducers(executor: Any) -> tuple[dict | None, dict | None]:
    """The executor's (job_reducers, result_reducers), however it stores them."""
    if executor is None:
        return None, None
    job = getattr(executor, "_job_reducers", None)
    result = getattr(executor, "_result_reducers", None)
    if job is None:
        job = getattr(getattr(executor, "_call_queue", None), "_reducers", None)
    if result is None:
        result = getattr(getattr(executor, "_result_queue", None), "_reducers", None)
    if result is None:
        result = job
    return job, result


def discover_reducers(executor: Any = None) -> list[ReducerEntry]:
    """Every user reducer in effect: the executor's job reducers, loky's
    ``register``-ed ones and user entries of ``copyreg.dispatch_table``.

    One entry per type, with the reducer loky's pickler would use for it
    (job reducers win over ``register``, which wins over ``copyreg``).
    """
    found: dict[type, ReducerEntry] = {}
    job_reducers, result_reducers = _executor_reducers(executor)
    sources: list[tuple[str, dict]] = [
        ("executor job_reducers", dict(job_reducers or {})),
        ("executor result_reducers", dict(result_reducers or {})),
        ("loky.backend.reduction.register", dict(_loky_reduction()._dispatch_table)),
        ("copyreg.dispatch_table", dict(copyreg.dispatch_table)),
    ]
    for source, table in sources:
        for cls, reducer in table.items():
            if cls in found or not isinstance(cls, type):
                continue
            if source.startswith("executor") or _is_user_entry(cls, reducer):
                found[cls] = ReducerEntry(cls, reducer, source)
    return list(found.values())


def _entry_for(cls: type, executor: Any) -> ReducerEntry:
    job_reducers, _ = _executor_reducers(executor)
    for source, table in (
        ("executor job_reducers", job_reducers or {}),
        ("loky.backend.reduction.register", _loky_reduction()._dispatch_table),
        ("copyreg.dispatch_table", copyreg.dispatch_table),
    ):
        reducer = table.get(cls)
        if reducer is not None:
            return ReducerEntry(cls, reducer, source)
    return ReducerEntry(cls, None, "listed explicitly")


# ---------------------------------------------------------------------------
# The trip (runs in the worker)


def _describe(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    codes = re.search(r"exit codes of the workers are (\{[^}]*\})", text)
    if codes:  # loky's TerminatedWorkerError: the exit code is what matters
        return f"{type(exc).__name__}: the worker died (exit codes {codes.group(1)})"
    return describe_exception(exc, limit=300)


def _engine_path(obj: Any) -> str | None:
    """Where inside ``obj`` loky's pickler fails, as the engine renders it."""
    try:
        from .engine import check_object

        report = check_object(obj, name="obj", pickler="loky")
    except Exception:
        return None
    for finding in getattr(report, "findings", ()):
        path = getattr(finding, "path", None)
        if path:
            return f"{path} ({finding.type}, {finding.category})"
    return None


def worker_round_trip(
    payloads: list[bytes], reducers: dict | None, with_paths: bool = False
) -> list[tuple]:
    """Load each payload and pickle it back with loky's pickler, as a worker does.

    Runs in the worker. Returns, per payload, ``("ok", bytes, None)`` or
    ``(stage, "ExcType: message", path)`` with stage ``load``/``dump_back``;
    ``path`` (where the worker's pickler fails, from the engine) only when
    ``with_paths`` is set, since it costs a diagnosis per failing example.
    """
    from loky.backend.reduction import dumps

    out: list[tuple] = []
    for payload in payloads:
        try:
            obj = pickle.loads(payload)
        except (Exception, SystemExit) as exc:
            out.append(("load", _describe(exc), None))
            continue
        try:
            out.append(("ok", bytes(dumps(obj, reducers=reducers)), None))
        except (Exception, SystemExit) as exc:
            path = _engine_path(obj) if with_paths else None
            out.append(("dump_back", _describe(exc), path))
    return out


# ---------------------------------------------------------------------------
# Parent side of the trip


@dataclasses.dataclass
class _Outcome:
    stage: str  # "ok" or one of _STAGE_TEXT
    text: str | None = None
    path: str | None = None

    @property
    def ok(self) -> bool:
        return self.stage == "ok"

    @property
    def detail(self) -> str | None:
        if self.text is None:
            return None
        text = self.text
        if self.stage == "dump_back":
            text += " (in the worker: is the reducer registered there?)"
        elif self.stage == "load":
            text += " (in the worker)"
        return f"{text} at {self.path}" if self.path else text


class _Abort(BaseException):
    """The check cannot go on (executor broken): escapes hypothesis on purpose."""


class _WorkerTrip:
    """Sends batches of pickled examples to a live loky worker and back."""

    def __init__(self, executor: Any) -> None:
        self.owned = executor is None
        self.respawns = 0
        self.executor = executor if executor is not None else self._reusable()
        self.job_reducers, self.result_reducers = _executor_reducers(self.executor)

    @staticmethod
    def _reusable() -> Any:
        from loky import get_reusable_executor

        return get_reusable_executor(reuse=True)

    def dump(self, example: Any) -> bytes:
        return bytes(_loky_reduction().dumps(example, reducers=self.job_reducers))

    def __call__(self, payloads: list[bytes], with_paths: bool = False) -> list[tuple]:
        from concurrent.futures import TimeoutError as FutureTimeout

        try:
            future = self.executor.submit(
                worker_round_trip, payloads, self.result_reducers, with_paths
            )
            return future.result(timeout=_TRIP_TIMEOUT)
        except FutureTimeout:
            failure = (
                "worker",
                f"no answer from the worker within {_TRIP_TIMEOUT:.0f} s",
                None,
            )
        except Exception as exc:
            if self._broken():
                if not self.owned:
                    raise _Abort(f"the executor broke: {_describe(exc)}") from exc
                self.respawns += 1
                if self.respawns > _MAX_RESPAWNS:
                    raise _Abort(
                        f"the worker keeps crashing: {_describe(exc)}"
                    ) from exc
                self.executor = self._reusable()  # a fresh pool for the next trip
            failure = ("worker", _describe(exc), None)
        return [failure] * len(payloads)

    def _broken(self) -> bool:
        flags = getattr(self.executor, "_flags", None)
        return bool(getattr(flags, "broken", None) or getattr(flags, "shutdown", False))


class _RoundTripper:
    """Evaluates examples (batched or one by one) and remembers verdicts by payload."""

    def __init__(self, trip: _WorkerTrip, cls: type) -> None:
        self.trip = trip
        self.check_aliasing = registered_equality(cls) is None
        # payload -> the worker's answer; the verdict itself depends on the
        # original (distinct examples can pickle alike through a lossy reducer)
        self.answers: dict[bytes, tuple] = {}

    def evaluate(self, examples: list[Any]) -> list[_Outcome]:
        outcomes: list[_Outcome | None] = [None] * len(examples)
        pending: list[tuple[int, bytes]] = []
        for index, example in enumerate(examples):
            try:
                payload = self.trip.dump(example)
            except (Exception, SystemExit) as exc:
                outcomes[index] = _Outcome("dump", _describe(exc))
                continue
            known = self.answers.get(payload)
            if known is not None:
                outcomes[index] = self._judge(example, known)
            else:
                pending.append((index, payload))
        for batch in _batches(pending):
            answers = self.trip([payload for _, payload in batch])
            for (index, payload), answer in zip(batch, answers, strict=True):
                if answer[0] != "worker":  # a crash may be another example's fault
                    self.answers[payload] = answer
                outcomes[index] = self._judge(examples[index], answer)
        return outcomes  # type: ignore[return-value]

    def _judge(self, example: Any, answer: tuple) -> _Outcome:
        stage, data, path = answer
        if stage != "ok":
            return _Outcome(stage, data, path)
        try:
            copy = pickle.loads(data)
            second_copy = pickle.loads(data)
        except (Exception, SystemExit) as exc:
            return _Outcome("load_back", _describe(exc))
        found = difference(example, copy)
        if found is not None:
            return _Outcome("compare", found)
        if self.check_aliasing:
            shared = shared_mutable_state(copy, second_copy)
            if shared is not None:
                return _Outcome("alias", shared)
        return _Outcome("ok")

    def explain(self, example: Any, outcome: _Outcome) -> _Outcome:
        """Add where the pickler fails (the engine's path) to a dump failure."""
        if outcome.path is not None:
            return outcome
        if outcome.stage == "dump":
            return dataclasses.replace(outcome, path=_engine_path(example))
        if outcome.stage == "dump_back":
            try:
                (answer,) = self.trip([self.trip.dump(example)], with_paths=True)
            except (Exception, SystemExit):
                return outcome
            if answer[0] == "dump_back" and answer[2]:
                return dataclasses.replace(outcome, path=answer[2])
        return outcome


def _batches(pending: list[tuple[int, bytes]]) -> Iterable[list[tuple[int, bytes]]]:
    batch: list[tuple[int, bytes]] = []
    size = 0
    for item in pending:
        if batch and size + len(item[1]) > _BATCH_BYTES:
            yield batch
            batch, size = [], 0
        batch.append(item)
        size += len(item[1])
    if batch:
        yield batch


# ---------------------------------------------------------------------------
# Hypothesis orchestration


class _RoundTripFailure(AssertionError):
    def __init__(self, example: Any, outcome: _Outcome) -> None:
        super().__init__(outcome.detail)
        self.example = example
        self.outcome = outcome


def _settings(max_examples: int, shrink: bool):
    from hypothesis import HealthCheck, Phase, Verbosity, settings

    phases = [Phase.generate, Phase.shrink] if shrink else [Phase.generate]
    return settings(
        settings.default,
        max_examples=max_examples,
        database=None,
        deadline=None,
        phases=phases,
        verbosity=Verbosity.quiet,
        report_multiple_bugs=False,
        suppress_health_check=list(HealthCheck),
        print_blob=False,
    )


def _run_given(
    strategy: Any, body: Callable[[Any], None], settings_: Any, seed_value: int
) -> None:
    from hypothesis import given, seed

    @seed(seed_value)
    @settings_
    @given(strategy)
    def round_trip_property(example: Any) -> None:
        body(example)

    round_trip_property()


def _seed_for(cls: type) -> int:
    from hypothesis import settings

    if settings.default.derandomize:
        # same examples on every run, yet different per type
        return int.from_bytes(qualified_name(cls).encode()[-8:].rjust(8, b"\0"), "big")
    return random.getrandbits(64)


def _check_entry(
    entry: ReducerEntry, max_examples: int, trip: _WorkerTrip
) -> ReducerResult:
    from .strategies import NoStrategyError, no_strategy_message, strategy_for

    result = _result_for(entry)
    try:
        strategy = strategy_for(entry.cls)
    except NoStrategyError as exc:
        return _errored(result, str(exc), "strategy")

    # Phase 1: draw the examples (no trip yet), then one trip for the batch.
    examples: list[Any] = []
    seed_value = _seed_for(entry.cls)
    try:
        _run_given(
            strategy, examples.append, _settings(max_examples, shrink=False), seed_value
        )
    except _Abort:
        raise
    except Exception as exc:
        reason = " ".join(str(exc).split("\n", 1)[0].split()) or type(exc).__name__
        # hypothesis' own advice is replaced by ours (register_strategy)
        reason = re.sub(
            r"[.;,]? *[Cc]onsider using register_type_strategy\.?$", "", reason
        )
        return _errored(result, no_strategy_message(entry.cls, reason), "strategy")
    tripper = _RoundTripper(trip, entry.cls)
    outcomes = tripper.evaluate(examples)
    result.examples = len(examples)
    failing = [i for i, outcome in enumerate(outcomes) if not outcome.ok]
    if not failing:
        return result

    # Phase 2: the same examples again, one per trip (verdicts are cached by
    # payload), so that hypothesis can shrink the first failure.
    seen: list[tuple[Any, _Outcome]] = []

    def must_round_trip(example: Any) -> None:
        (outcome,) = tripper.evaluate([example])
        if not outcome.ok:
            seen.append((example, outcome))
            raise _RoundTripFailure(example, outcome)

    final: tuple[Any, _Outcome] | None = None
    shrunk = True
    try:
        _run_given(
            strategy, must_round_trip, _settings(max_examples, shrink=True), seed_value
        )
    except _RoundTripFailure as failure:
        final = (failure.example, failure.outcome)
    except _Abort:
        if not seen:
            raise
        final, shrunk = seen[-1], False
    except Exception:  # Flaky and friends: keep the smallest failure seen
        final = seen[-1] if seen else None
    if final is None:  # hypothesis did not find it again: report it unshrunk
        final = (examples[failing[0]], outcomes[failing[0]])
        shrunk = False
    example, outcome = final
    try:
        outcome = tripper.explain(example, outcome)
    except _Abort:
        pass
    result.ok = False
    result.shrunk = shrunk
    result.example = example
    result.counterexample = _example_repr(example)
    result.difference = outcome.detail
    result.stage = outcome.stage
    return result


def _example_repr(example: Any) -> str:
    """The counterexample as the user would write it.

    A class without its own ``__repr__`` prints as ``<app.C object at 0x...>``,
    which says nothing about the failing values: show ``C(v=1)`` from the
    instance's state instead (``__dict__`` and slots only, no property read).
    """
    kind = type(example)
    if getattr(kind, "__repr__", None) is object.__repr__:
        state: dict[str, Any] = {}
        try:
            for klass in reversed(kind.__mro__):
                slots = klass.__dict__.get("__slots__", ())
                for name in (slots,) if isinstance(slots, str) else slots:
                    if name in ("__dict__", "__weakref__"):
                        continue
                    try:
                        state[name] = object.__getattribute__(example, name)
                    except AttributeError:
                        continue
            state.update(object.__getattribute__(example, "__dict__"))
        except (AttributeError, TypeError):
            pass
        if state:
            fields = ", ".join(
                f"{name}={short_repr(value)}" for name, value in state.items()
            )
            text = f"{kind.__qualname__}({fields})"
            if len(text) > _COUNTEREXAMPLE_LIMIT:
                text = text[: _COUNTEREXAMPLE_LIMIT - 3] + "..."
            return text
    return short_repr(example, _COUNTEREXAMPLE_LIMIT)


def _result_for(entry: ReducerEntry) -> ReducerResult:
    """A fresh verdict on ``entry``'s reducer (no examples checked yet)."""
    return ReducerResult(
        type=qualified_name(entry.cls),
        reducer=entry.reducer_name,
        source=entry.source,
        cls=entry.cls,
        reducer_function=entry.reducer,
    )


def _errored(result: ReducerResult, message: str, stage: str) -> ReducerResult:
    result.ok = False
    result.error = message
    result.difference = message
    result.stage = stage
    return result


def _normalise_types(types: Any) -> list[type]:
    if isinstance(types, type):
        return [types]
    try:
        listed = list(types)
    except TypeError:
        raise TypeError(
            f"check_reducers(types=...) expects a type or an iterable of types, got {types!r}"
        ) from None
    for item in listed:
        if not isinstance(item, type):
            raise TypeError(f"check_reducers(types=...) expects types, got {item!r}")
    return listed


def check_reducers(
    types: type | Iterable[type] | None = None,
    *,
    max_examples: int = 100,
    executor: Any = None,
) -> list[ReducerResult]:
    """Property-test reducers: every example goes parent -> worker -> parent.

    ``types=None`` checks every reducer user code registered (loky's
    ``register``, ``copyreg.dispatch_table`` outside the standard library, the
    executor's ``job_reducers``/``result_reducers``); otherwise exactly the
    types given, each with the reducer loky's pickler would use for it.
    ``executor`` is the loky executor to test against (default: the reusable
    executor). Returns one ``ReducerResult`` per type; nothing is raised for a
    failing reducer.
    """
    if (
        not isinstance(max_examples, int)
        or isinstance(max_examples, bool)
        or max_examples < 1
    ):
        raise ValueError(
            f"max_examples must be a positive integer, got {max_examples!r}"
        )
    if types is None:
        entries = discover_reducers(executor)
    else:
        entries = [_entry_for(cls, executor) for cls in _normalise_types(types)]
    if not entries:
        return []
    trip = _WorkerTrip(executor)
    results = []
    for entry in entries:
        try:
            results.append(_check_entry(entry, max_examples, trip))
        except _Abort as abort:
            results.append(_errored(_result_for(entry), str(abort), "worker"))
    return results


def register_strategy(type_: type, strategy: Any) -> None:
    """Use ``strategy`` (a hypothesis strategy) for examples of ``type_``."""
    from .strategies import register_strategy as _register

    _register(type_, strategy)
