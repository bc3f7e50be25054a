"""The executor's pickling check mode: ``pickle_check="warn" | "error" | "wrap"``.

The executor calls :meth:`SubmitChecker.check_submit` from ``submit()`` (and so
from every chunk of ``map()``), in the user's thread, before anything is queued.
Workers call :func:`annotate_worker_failure` when a task fails to load or its
result cannot be pickled back, and the parent's feeder thread when a call that
the check let through (warn, wrap) fails to pickle.

Cost model (clean calls must stay cheap):

* The call is pickled ONCE, with loky's pickler and the job reducers; those
  bytes are the payload the executor sends, so nothing is pickled twice.
* While pickling, a recording subclass of loky's pickler notes every object it
  carries by a means standard pickle lacks: functions and classes pickled by
  value (cloudpickle's ``reducer_override``) and objects reduced by a reducer
  that is neither copyreg's nor the user's job reducers (sockets, code, cells,
  memoryviews, ...). With a pickler without ``reducer_override`` (for example
  ``LOKY_PICKLER=pickle``) a scan of the bytes for ``__main__`` replaces the
  first half: such a reference cannot be loaded by a worker.
* Each noted object is tried with standard pickle once per function code /
  class / type (cached): most calls note nothing, so a clean call costs one
  pickling plus a few dictionary look-ups. Each thread reuses its recording
  pickler (memo cleared after every call): building a pickler costs more than
  pickling a tiny call.
* Only a call that failed to pickle or noted a non-portable object pays for the
  engine's diagnosis, and only once per call site and culprit set: the verdict
  is cached under ``(call site, signature)``.
"""

from __future__ import annotations

import collections
import contextlib
import copyreg
import dataclasses
import functools
import io
import itertools
import logging
import os
import pickle
import re
import sys
import threading
import types
import warnings
from collections.abc import Callable, Hashable, Iterable, Iterator
from typing import Any

from .report import Finding, Report

__all__ = [
    "LokyPicklingWarning",
    "PicklingCheckError",
    "SubmitChecker",
    "annotate_result_load_failure",
    "annotate_worker_failure",
    "check_worker_setup",
]

CHECK_MODES = ("off", "warn", "error", "wrap")
# The severities a check mode acts on ("info" is only reported).
_FINDING_LEVELS = ("error", "warning")

# Caches are bounded so that a long-running program submitting ever new
# functions cannot grow them without limit.
_CACHE_LIMIT = 1024


class LokyPicklingWarning(UserWarning):
    """A submitted call that will not (portably) cross the process boundary.

    The message is the engine's report; ``.report`` is the
    :class:`~loky_check.report.Report` itself.
    """

    def __init__(self, message: str, report: Report | None = None) -> None:
        super().__init__(message)
        self.report = report

    def __reduce__(self):
        return type(self), (str(self), _without_culprits(self.report))


class PicklingCheckError(pickle.PicklingError):
    """Raised by ``submit()``/``map()`` under ``pickle_check="error"``.

    The message is the engine's report; ``.report`` is the report itself.
    """

    def __init__(self, message: str, report: Report | None = None) -> None:
        super().__init__(message)
        self.report = report

    def __reduce__(self):
        # The report's findings hold the culprits, which by definition do not
        # pickle: drop them so the error itself can travel (nested executors).
        state = {k: v for k, v in vars(self).items() if k != "report"}
        return type(self), (str(self), _without_culprits(self.report)), state or None


def _without_culprits(report: Report | None) -> Report | None:
    if report is None:
        return None
    return dataclasses.replace(
        report, findings=[dataclasses.replace(f, culprit=None) for f in report.findings]
    )


###############################################################################
# Recording loky pickler

_MAIN_MARKER = b"__main__"
_CLEAN: frozenset = frozenset()
# Types that loky or cloudpickle reduce specially although standard pickle
# handles them natively: noting them would only cost a needless check.
_STANDARD_TYPES = frozenset(
    {
        types.MethodType,
        types.BuiltinMethodType,
        type(list.append),  # method_descriptor
        type(int.__add__),  # wrapper_descriptor
        type(dict.__dict__["fromkeys"]),  # classmethod_descriptor
        functools.partial,
        logging.Logger,
        logging.RootLogger,
    }
)


class _Recording(threading.local):
    """Per thread: where the recording reducers put what they see, and the
    pickler kept for the next call (None while in use)."""

    noted: list | None = None
    pickler: tuple | None = None


_recording = _Recording()


def _noting(reduce: Callable) -> Callable:
    def note_then_reduce(obj):
        noted = _recording.noted
        if noted is not None:
            noted.append(obj)
        return reduce(obj)

    note_then_reduce.__wrapped__ = reduce
    return note_then_reduce


class _RecordingDumper:
    """Pickles with loky's current pickler + job reducers, noting non-standard reductions."""

    def __init__(self, job_reducers: dict | None) -> None:
        self.job_reducers = dict(job_reducers or {})
        self._classes: dict[type, tuple[type, bool]] = {}
        # (key, recording class, reducers, records_by_value): the reducers are
        # the job reducers plus a noting wrapper around each non-standard
        # reducer of loky's table, passed as the pickler's per-instance
        # ``reducers`` (so no table is rebuilt per call).
        self._current: tuple | None = None

    def _recording_class(self, base: type) -> tuple[type, bool]:
        entry = self._classes.get(base)
        if entry is None:
            base_override = getattr(base, "reducer_override", None)
            namespace: dict[str, Any] = {"__module__": __name__}
            if base_override is not None:

                def reducer_override(self, obj):
                    reduced = base_override(self, obj)
                    if reduced is not NotImplemented:
                        # Carried by value (cloudpickle): standard pickle may not.
                        noted = _recording.noted
                        if noted is not None:
                            noted.append(obj)
                    return reduced

                namespace["reducer_override"] = reducer_override
            cls = type(f"Recording{base.__name__}", (base,), namespace)
            entry = self._classes[base] = (cls, base_override is not None)
        return entry

    def _setup(self, base: type) -> tuple:
        """``(key, recording class, reducers, records_by_value)`` for ``base``."""
        # Changes with register(), copyreg.pickle() and replaced reducers alike.
        key = (base, base._tables_generation())
        cached = self._current
        if cached is not None and cached[0] == key:
            return cached
        cls, records_by_value = self._recording_class(base)
        # What an instance's table holds once loky merged the base, copyreg
        # and register()-ed reducers.
        table = _table_of(cls(io.BytesIO()))
        reducers = {
            type_: _noting(reduce)
            for type_, reduce in table.items()
            if type_ not in self.job_reducers
            and type_ not in _STANDARD_TYPES
            and copyreg.dispatch_table.get(type_) is not reduce
        }
        reducers.update(self.job_reducers)
        self._current = (key, cls, reducers, records_by_value)
        return self._current

    def dump(self, obj: Any) -> tuple[bytes, list, bool]:
        """``(payload, noted objects, whether by-value objects were noted too)``."""
        current = self._current
        base = _reduction().get_loky_pickler()
        if (
            current is None
            or current[0][0] is not base
            or current[0][1] != base._tables_generation()
        ):
            current = self._setup(base)
        _, cls, reducers, records_by_value = current
        state = _recording.__dict__  # one thread-local lookup, then plain dict ops
        cached = state.get("pickler")
        if cached is not None and cached[0] is cls and cached[1] is reducers:
            # Reuse this thread's pickler: building one costs more than a
            # tiny call's pickling (``dump`` starts from an empty output).
            _, _, pickler, buf = cached
            state["pickler"] = None  # busy: a nested dump builds its own
            buf.seek(0)
            buf.truncate()
        else:
            buf = io.BytesIO()
            # protocol=None: exactly what the executor's feeder would write.
            pickler = cls(buf, reducers=reducers, protocol=None)
        noted: list = []
        previous = state.get("noted")
        state["noted"] = noted
        try:
            pickler.dump(obj)
        finally:
            state["noted"] = previous
            # The memo holds every pickled object: do not keep them alive.
            pickler.clear_memo()
        payload = buf.getvalue()
        if len(payload) <= _REUSE_LIMIT:
            if records_by_value:
                pickler.globals_ref = {}  # cloudpickle's per-pickling state
            state["pickler"] = (cls, reducers, pickler, buf)
        return payload, noted, records_by_value


# A pickler that wrote more than this is not kept for reuse: its output buffer
# would be allocated at that size by every later dump.
_REUSE_LIMIT = 1 << 16


@functools.cache
def _engine() -> types.ModuleType:
    from . import engine

    return engine


@functools.cache
def _reduction() -> types.ModuleType:
    from loky.backend import reduction

    return reduction


def _table_of(pickler) -> dict:
    instance_dict = getattr(pickler, "__dict__", None)
    table = instance_dict.get("dispatch_table") if instance_dict else None
    return pickler.dispatch_table if table is None else table


###############################################################################
# Standard-pickle portability of noted objects

_portable_cache: dict[Hashable, bool] = {}


def _culprit_key(obj: Any) -> Hashable:
    """What identifies a culprit across calls: a lambda recreated per call is one culprit."""
    if isinstance(obj, types.FunctionType):
        return obj.__code__
    if isinstance(obj, type):
        return obj
    return type(obj)


def _portable(obj: Any) -> bool:
    """Whether standard pickle carries ``obj`` to a worker (cached per culprit key)."""
    key = _culprit_key(obj)
    verdict = _portable_cache.get(key)
    if verdict is None:
        try:
            data = pickle.dumps(obj, pickle.HIGHEST_PROTOCOL)
        except Exception:
            verdict = False
        else:
            # By reference to __main__: no worker can import it.
            verdict = _MAIN_MARKER not in data
        if len(_portable_cache) >= _CACHE_LIMIT:
            _portable_cache.clear()
        _portable_cache[key] = verdict
    return verdict


_MAIN_GLOBAL = re.compile(rb"\x8c\x08__main__\x94?\x8c([\x00-\xff])")
_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


def _main_references(payload: bytes) -> frozenset:
    """Names a pickle loads from ``__main__`` (protocol 4+ STACK_GLOBAL pairs)."""
    names = set()
    for match in _MAIN_GLOBAL.finditer(payload):
        start = match.end()
        names.add(("__main__", payload[start : start + match.group(1)[0]]))
    return frozenset(names or {("__main__", b"?")})


###############################################################################
# Call sites

_internal_prefixes: tuple[str, ...] | None = None


def _internal_dirs() -> tuple[str, ...]:
    global _internal_prefixes
    if _internal_prefixes is None:
        import concurrent.futures

        import loky

        here = os.path.dirname(os.path.abspath(__file__))
        futures = os.path.dirname(os.path.abspath(concurrent.futures.__file__))
        dirs = [
            here,
            os.path.join(os.path.dirname(here), "pytest_loky"),
            os.path.dirname(os.path.abspath(loky.__file__)),
            futures,
            # loop.run_in_executor(executor, fn, ...) submits for the user
            os.path.join(os.path.dirname(os.path.dirname(futures)), "asyncio"),
        ]
        prefixes = set()
        for d in dirs:
            prefixes.add(d + os.sep)
            prefixes.add(os.path.realpath(d) + os.sep)
        _internal_prefixes = tuple(prefixes)
    return _internal_prefixes


_internal_files: dict[str, bool] = {}


def _is_internal(filename: str) -> bool:
    internal = _internal_files.get(filename)
    if internal is None:
        prefixes = _internal_dirs()
        internal = filename.startswith(prefixes) or os.path.abspath(
            filename
        ).startswith(prefixes)
        if len(_internal_files) >= _CACHE_LIMIT:
            _internal_files.clear()
        _internal_files[filename] = internal
    return internal


def _user_frame(frame) -> tuple[Any, int]:
    """The first frame outside loky, loky_check, pytest_loky, concurrent.futures
    and asyncio, and its distance (as a ``stacklevel``) from ``frame``."""
    level = 1
    while frame is not None and frame.f_back is not None:
        if not _is_internal(frame.f_code.co_filename):
            break
        frame = frame.f_back
        level += 1
    return frame, level


def _call_site() -> tuple[str, int]:
    frame, _ = _user_frame(sys._getframe(1))
    if frame is None:
        return ("<unknown>", 0)
    return (frame.f_code.co_filename, frame.f_lineno)


def _warn(message: str, report: Report) -> None:
    _, level = _user_frame(sys._getframe(0))
    warnings.warn(LokyPicklingWarning(message, report), stacklevel=level)


###############################################################################
# The checker


def _is_process_chunk(fn: Any) -> bool:
    module = sys.modules.get("loky.process_executor")
    target = getattr(module, "_process_chunk", None)
    if fn is target and target is not None:
        return True
    # A vendored copy of loky under another package name.
    return getattr(fn, "__name__", None) == "_process_chunk" and str(
        getattr(fn, "__module__", "")
    ).endswith("process_executor")


def _split_map_call(fn: Any, args: tuple, kwargs: dict) -> tuple[Callable, Any] | None:
    """``(real function, chunk of argument tuples)`` for a chunk of ``map()``."""
    if kwargs:
        return None
    if _is_process_chunk(fn) and len(args) == 2:
        return args[0], args[1]
    if (
        isinstance(fn, functools.partial)
        and _is_process_chunk(fn.func)
        and len(fn.args) == 1
        and not fn.keywords
        and len(args) == 1
    ):
        return fn.args[0], args[0]
    return None


def _top_level_keys(obj: Any, is_call: bool) -> tuple:
    """Culprit keys of the callable and each argument (of each ``map`` item),
    by position and keyword, so that a culprit passed positionally, by
    keyword or as a map item gets a diagnosis of its own; ``obj`` is
    ``(fn, args, kwargs)``, or a map item's argument tuple."""
    if not is_call:
        return tuple(_culprit_key(v) for v in obj)
    fn, args, kwargs = obj
    split = _split_map_call(fn, args, kwargs)
    if split is not None:
        real_fn, chunk = split
        return (
            "map",
            _culprit_key(real_fn),
            tuple(tuple(_culprit_key(v) for v in item) for item in chunk),
        )
    return (
        "call",
        _culprit_key(fn),
        tuple(_culprit_key(v) for v in args),
        tuple((k, _culprit_key(v)) for k, v in kwargs.items()),
    )


def _callable_key(fn: Any, args: tuple, kwargs: dict) -> Hashable:
    """What identifies the function a call (or a ``map`` chunk) runs."""
    split = _split_map_call(fn, args, kwargs)
    if split is not None:
        fn = split[0]
    while isinstance(fn, functools.partial):
        fn = fn.func
    if isinstance(fn, types.MethodType):
        return (_culprit_key(fn.__func__), type(fn.__self__))
    key = _culprit_key(fn)
    if key is type(fn) and isinstance(fn, types.BuiltinFunctionType):
        return (key, fn.__qualname__, type(fn.__self__))
    return key


def _chunk_call(real_fn: Any, chunk: Any) -> tuple:
    """The ``check_submit`` arguments for one chunk of ``map()``."""
    module = sys.modules.get("loky.process_executor")
    process_chunk = getattr(module, "_process_chunk", None)
    if process_chunk is None:  # pragma: no cover - map() imported it
        from loky.process_executor import _process_chunk as process_chunk
    return process_chunk, (real_fn, chunk), {}


def _join_map_call(fn: Any, args: tuple, real_fn: Any, chunk: Any) -> tuple[Any, tuple]:
    if isinstance(fn, functools.partial):
        return functools.partial(fn.func, real_fn), (chunk,)
    return fn, (real_fn, chunk)


def _finding_key(finding: Finding) -> tuple:
    """One culprit at one place: a lambda recreated by each call is the same
    culprit (same summary and location); two functions are not."""
    return (
        finding.stage,
        finding.argument,
        finding.path,
        finding.category,
        finding.type,
        finding.summary,
        finding.location,
    )


@dataclasses.dataclass
class _MapBatch:
    """The chunks of one ``map()``, checked together when the first is submitted."""

    fn: Any
    chunks: list


@dataclasses.dataclass
class _Verdict:
    """The diagnosis of one (call site, signature), reused by later calls."""

    report: Report
    dump_failed: bool
    wrap_keys: frozenset = frozenset()
    # Its findings were warned about at its site: later calls skip the bookkeeping.
    settled: bool = False
    # Why there is no report (the diagnosis itself failed), for the error text.
    note: str = ""


class SubmitChecker:
    """The executor's submit hook for one ``pickle_check`` mode.

    ``check_submit(fn, args, kwargs)`` returns ``(fn, args, kwargs, payload)``:
    the call to send (wrapped under ``"wrap"``) and ``payload``, the call
    already pickled with loky's pickler and ``job_reducers`` (or None when it
    does not pickle, in which case the executor proceeds as without checks).
    """

    def __init__(self, mode: str, job_reducers: dict | None = None) -> None:
        if not isinstance(mode, str) or mode not in CHECK_MODES:
            raise ValueError(
                "pickle_check must be one of 'off', 'warn', 'error', 'wrap' or None, "
                f"got {mode!r}"
            )
        self.mode = mode
        self.job_reducers = dict(job_reducers or {})
        self._dumper = _RecordingDumper(self.job_reducers)
        self._verdicts: dict[tuple, _Verdict] = {}
        self._warned: set[tuple] = set()
        # wrap mode: culprit keys wrapped so far, and at which call sites
        self._wrap_keys: frozenset = frozenset()
        self._wrapped_at: set[tuple] = set()
        # map() chunks checked up front, by id, until submitted
        self._prechecked: dict[int, tuple] = {}
        # The map() chunk being checked in this thread, and its first item's
        # index: names the item in a warning or error.
        self._map_state = threading.local()
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"SubmitChecker({self.mode!r})"

    # -- the fast path -----------------------------------------------------

    def _dump(self, obj: Any, is_call: bool = True) -> tuple[bytes | None, frozenset]:
        """Pickle ``obj`` (a call, or a map item's arguments) once;
        ``(payload, signature)``, the signature empty when clean."""
        try:
            payload, noted, records_by_value = self._dumper.dump(obj)
        except Exception as exc:  # anything a __reduce__ may raise
            # The message rarely names the culprit (every lambda fails alike):
            # the top-level values' keys tell calls apart.
            message = _ADDRESS.sub("", str(exc))[:300]
            return None, frozenset(
                {
                    (
                        "dump failed",
                        type(exc).__qualname__,
                        message,
                        _top_level_keys(obj, is_call),
                    )
                }
            )
        signature = _CLEAN
        if noted:
            signature = frozenset(_culprit_key(o) for o in noted if not _portable(o))
        if not records_by_value and _MAIN_MARKER in payload:
            signature |= _main_references(payload)
        return payload, signature

    def check_submit(self, fn: Callable, args: tuple, kwargs: dict) -> tuple:
        """Check one call before it is queued; see the class docstring."""
        if self.mode == "off":
            return fn, args, kwargs, None
        if self._prechecked:
            done = self._take_prechecked(fn, args, kwargs)
            if done is not None:
                return done
        if self._wrap_keys:
            fn, args, kwargs = self._prewrap(fn, args, kwargs)
        payload, signature = self._dump((fn, args, kwargs))
        if not signature:
            return fn, args, kwargs, payload
        return self._check_slow(fn, args, kwargs, payload, signature)

    def _take_prechecked(self, fn, args, kwargs) -> tuple | None:
        split = _split_map_call(fn, args, kwargs)
        if split is None:
            return None
        entry = self._prechecked.pop(id(split[1]), None)
        if entry is None or entry[0] is not split[1]:
            return None
        if isinstance(entry[1], _MapBatch):
            return self._check_batch(entry[1])
        return entry[1]

    def check_map(self, fn: Callable, chunks: Iterable) -> Iterable:
        """Check every chunk of a ``map()`` before any is queued.

        Returns the chunks to submit. The check runs when the first chunk is
        submitted (so a shut down or broken executor raises as usual, before
        any check or warning), and covers every chunk at once: a failing
        chunk raises before the first one reaches a worker, under "error" and,
        in every mode, when a warnings filter turns the warning into an
        exception. Each chunk's verdict (and payload) is kept for the
        ``check_submit`` that follows, so nothing is pickled twice. ``map()``
        consumes its iterables up front anyway: nothing is made less lazy.
        """
        if self.mode == "off":
            return chunks
        chunks = list(chunks)
        if chunks:
            first = chunks[0]
            self._prechecked[id(first)] = (first, _MapBatch(fn, chunks))
        return self._release_unused(chunks)

    def _check_batch(self, batch: _MapBatch) -> tuple:
        """Check every chunk of one ``map()``; the first chunk's verdict."""
        checked = []
        state = self._map_state
        try:
            state.chunk = (batch.chunks[0], 0)
            first = self.check_submit(*_chunk_call(batch.fn, batch.chunks[0]))
            offset = len(batch.chunks[0])
            for chunk in batch.chunks[1:]:
                state.chunk = (chunk, offset)
                call = _chunk_call(batch.fn, chunk)
                self._prechecked[id(chunk)] = (chunk, self.check_submit(*call))
                checked.append(chunk)
                offset += len(chunk)
        except BaseException as exc:
            for chunk in checked:
                self._prechecked.pop(id(chunk), None)
            if isinstance(exc, PicklingCheckError) and exc.report is not None:
                line = self._map_item_line(exc.report.findings)
                if line:
                    _add_note(exc, line)
            raise
        finally:
            state.chunk = None
        return first

    def _map_item_line(self, findings: list) -> str:
        """Which ``map()`` item (of the chunk being checked) is the first with
        a finding on its arguments; "" outside map() or for the function alone.

        Worked out when a finding is reported, not cached with the verdict:
        a later map() at the same line may hold its culprit elsewhere."""
        current = getattr(self._map_state, "chunk", None)
        if current is None or all(f.argument == "fn" for f in findings):
            return ""
        chunk, offset = current
        for index, item in enumerate(chunk):
            _, signature = self._dump(tuple(item), is_call=False)
            if signature:
                return (
                    f"map(): item {offset + index} (counting from 0) is the first"
                    " with a finding."
                )
        return ""

    def _release_unused(self, chunks: list):
        try:
            yield from chunks
        finally:
            # map() stopped early (the executor shut down): drop the payloads.
            for chunk in chunks:
                self._prechecked.pop(id(chunk), None)

    def _prewrap(self, fn, args, kwargs) -> tuple:
        """Under "wrap", wrap culprits already wrapped (and warned about) at this
        call site before pickling: one pickling per call, as for clean calls."""
        new_fn, new_args, new_kwargs, wrapped = _wrap_call(
            fn, args, kwargs, self._wrap_keys
        )
        if not wrapped:
            return fn, args, kwargs
        site = (*_call_site(), _reduction().get_loky_pickler_name())
        if any((site, key) not in self._wrapped_at for key in wrapped):
            return fn, args, kwargs  # a new site: the slow path warns there
        return new_fn, new_args, new_kwargs

    # -- the slow path: diagnose, then act on the mode ---------------------

    def _check_slow(self, fn, args, kwargs, payload, signature) -> tuple:
        # Severity follows loky's current pickler: it is part of the site.
        site = (*_call_site(), _reduction().get_loky_pickler_name())
        verdict = self._verdict(site, signature, fn, args, kwargs, payload is None)
        report = verdict.report

        if self.mode == "error" and (
            verdict.dump_failed or any(f.severity == "error" for f in report.findings)
        ):
            raise PicklingCheckError(_error_text(verdict, signature), report)

        if self.mode == "wrap" and verdict.wrap_keys:
            fn, args, kwargs, payload, verdict = self._wrap(
                site, verdict, fn, args, kwargs, payload
            )
            report = verdict.report
        if not verdict.settled:
            self._warn_new(site, report.findings, report)
            verdict.settled = True
        return fn, args, kwargs, payload

    def _verdict(self, site, signature, fn, args, kwargs, dump_failed) -> _Verdict:
        # The callable too: its name and parameters are in the report, and one
        # site (a helper of the user's) may submit many functions.
        key = (site, signature, _callable_key(fn, args, kwargs))
        verdict = self._verdicts.get(key)
        if verdict is None:
            verdict = self._diagnose(fn, args, kwargs, dump_failed=dump_failed)
            with self._lock:
                if len(self._verdicts) >= _CACHE_LIMIT:
                    self._verdicts.clear()
                self._verdicts[key] = verdict
        return verdict

    def _wrap(self, site, verdict, fn, args, kwargs, payload) -> tuple:
        """Wrap what cloudpickle carries, warn once per site about it, and
        return the call, its new payload and the verdict on what is left."""
        for _ in range(3):  # each round removes culprits; nesting is shallow
            new_fn, new_args, new_kwargs, wrapped = _wrap_call(
                fn, args, kwargs, verdict.wrap_keys
            )
            if not wrapped:
                # A cached verdict about other culprits that failed alike.
                verdict = self._diagnose(fn, args, kwargs, dump_failed=payload is None)
                new_fn, new_args, new_kwargs, wrapped = _wrap_call(
                    fn, args, kwargs, verdict.wrap_keys
                )
                if not wrapped:
                    break
            fn, args, kwargs = new_fn, new_args, new_kwargs
            with self._lock:
                self._wrap_keys = self._wrap_keys | wrapped
                new_sites = {(site, key) for key in wrapped} - self._wrapped_at
                self._wrapped_at.update(new_sites)
            done = [
                f for f in verdict.report.findings if _culprit_key(f.culprit) in wrapped
            ]
            try:
                self._warn_new(site, done, verdict.report, wrapped=True)
            except BaseException:
                # The warning became an exception: this site has not wrapped
                # (and said so) yet; the next call must not wrap silently.
                with self._lock:
                    self._wrapped_at.difference_update(new_sites)
                raise
            payload, signature = self._dump((fn, args, kwargs))
            if not signature:
                verdict = _Verdict(
                    Report(verdict.report.target, verdict.report.pickler), False
                )
                break
            verdict = self._verdict(site, signature, fn, args, kwargs, payload is None)
            if not verdict.wrap_keys:
                break
        return fn, args, kwargs, payload, verdict

    def _diagnose(self, fn, args, kwargs, dump_failed: bool) -> _Verdict:
        try:
            return self._run_engine(fn, args, kwargs, dump_failed)
        except Exception as exc:  # a checker bug must not break submit()
            target = _engine().describe_callable(fn)
            note = f"{target}: the pickling check itself failed ({exc!r})"
            return _Verdict(Report(target, "pickle"), dump_failed, note=note)

    def _run_engine(self, fn, args, kwargs, dump_failed: bool) -> _Verdict:
        from .engine import Argument, bind_arguments, check_call

        split = _split_map_call(fn, args, kwargs)
        if split is None:
            report = check_call(fn, args, kwargs, pickler="pickle")
            arguments = [
                Argument("fn", None, "fn", fn),
                *bind_arguments(fn, args, kwargs),
            ]
        else:
            report = self._diagnose_map(check_call, *split)
            arguments = [Argument("fn", None, "fn", split[0])]
        report = self._drop_job_reduced(report, arguments)
        wrap_keys = frozenset(
            _culprit_key(f.culprit)
            for f in report.findings
            if f.severity in _FINDING_LEVELS
            and f.culprit is not None
            and f.carried_by.get("cloudpickle")
            and _wrappable_key(_culprit_key(f.culprit))
        )
        return _Verdict(report, dump_failed, wrap_keys)

    def _diagnose_map(self, check_call, real_fn, chunk) -> Report:
        """One engine run per distinct item signature (the first item always: it
        diagnoses the function too)."""
        report = None
        seen: set[frozenset] = set()
        for index, item in enumerate(chunk):
            _, signature = self._dump(tuple(item), is_call=False)
            if index and (not signature or signature in seen):
                continue
            seen.add(signature)
            item_report = check_call(real_fn, tuple(item), {}, pickler="pickle")
            item_report = self._drop_job_reduced(
                item_report, _engine().bind_arguments(real_fn, tuple(item), {})
            )
            report = item_report if report is None else report.merge(item_report)
        return (
            report
            if report is not None
            else check_call(real_fn, (), {}, pickler="pickle")
        )

    def _drop_job_reduced(self, report: Report, arguments: list) -> Report:
        """The engine tries standard pickle; job reducers carry their types anyway."""
        if not self.job_reducers or not report.findings:
            return report
        types_ = tuple(t for t in self.job_reducers if isinstance(t, type))
        # Dropped: a culprit that is itself reduced, or one inside an object
        # that is, wherever it sits in the call (the engine's standard pickle
        # walked into it; the job reducer never pickles what it holds).
        reduced = [
            (argument.argument, path)
            for argument in arguments
            for path in _paths_of_instances(argument.value, types_, argument.root)
        ]
        kept = [
            f
            for f in report.findings
            if not isinstance(f.culprit, types_)
            and not any(
                argument == f.argument
                and (f.path == path or _engine()._extends(f.path, path))
                for argument, path in reduced
            )
        ]
        if len(kept) == len(report.findings):
            return report
        return dataclasses.replace(report, findings=kept)

    def _warn_new(self, site, findings, report: Report, wrapped: bool = False) -> None:
        """Warn about the findings not yet reported at this call site."""

        def text_for(new: list[Finding], partial_report: Report) -> str:
            text = str(partial_report)
            item_line = self._map_item_line(new)
            if item_line:
                text = f"{text}\n{item_line}"
            if wrapped:
                labels = ", ".join(dict.fromkeys(_where(f) for f in new))
                text = (
                    f"pickle_check='wrap': wrapped {labels} with "
                    f"loky.wrap_non_picklable_objects so that the call pickles\n\n{text}"
                )
            return text

        _warn_once(
            self._warned,
            self._lock,
            [
                ((site, wrapped, _finding_key(f)), f)
                for f in findings
                if f.severity in _FINDING_LEVELS
            ],
            report,
            text_for,
        )


def _warn_once(
    warned: set,
    lock: threading.Lock,
    keyed: list[tuple[Hashable, Finding]],
    report: Report,
    text_for: Callable[[list[Finding], Report], str],
) -> None:
    """One :class:`LokyPicklingWarning` for the findings whose key is not in
    ``warned`` yet (their keys are then added), its text from ``text_for``.

    A warnings filter that turns the warning into an exception stops the
    call: the keys are forgotten, so the next call there says it again.
    """
    with lock:
        new = [(key, f) for key, f in keyed if key not in warned]
        warned.update(key for key, _ in new)
    if not new:
        return
    findings = [f for _, f in new]
    partial_report = Report(report.target, report.pickler, findings)
    try:
        _warn(text_for(findings, partial_report), partial_report)
    except BaseException:
        with lock:
            warned.difference_update(key for key, _ in new)
        raise


def _where(finding: Finding) -> str:
    """``fn``, ``fn.args[0]`` or ``cb (args[1])``: the path, and the argument when
    the path starts with a parameter name."""
    if finding.path.startswith(finding.argument):
        return finding.path
    return f"{finding.path} ({finding.argument})"


def _error_text(verdict: _Verdict, signature: frozenset) -> str:
    report = verdict.report
    if report.findings:
        return str(report)
    # The engine found nothing to name: say at least what the pickler said.
    reasons = [
        f"{part[1]}: {part[2]}"
        for part in signature
        if isinstance(part, tuple) and part[0] == "dump failed"
    ]
    text = f"{report.target}: the call cannot be pickled for the workers"
    if reasons:
        text += f" ({'; '.join(reasons)})"
    return f"{text}\n{verdict.note}" if verdict.note else text


# -- wrap mode ---------------------------------------------------------------


def _wrappable_key(key: Hashable) -> bool:
    # Never wrap every instance of a builtin type because one of them was a culprit.
    return not (isinstance(key, type) and key.__module__ == "builtins")


def _wrap_one(obj: Any, keys: frozenset, wrapped: set) -> Any:
    from loky.cloudpickle_wrapper import (
        CloudpickledObjectWrapper,
        _wrap_non_picklable_objects,
    )

    if isinstance(obj, CloudpickledObjectWrapper):
        return obj
    if isinstance(obj, functools.partial):
        before = len(wrapped)
        func = _wrap_one(obj.func, keys, wrapped)
        args = [_wrap_one(a, keys, wrapped) for a in obj.args]
        kwargs = {
            k: _wrap_one(v, keys, wrapped) for k, v in (obj.keywords or {}).items()
        }
        return (
            obj if len(wrapped) == before else functools.partial(func, *args, **kwargs)
        )
    key = _culprit_key(obj)
    if key not in keys:
        return obj
    wrapped.add(key)
    # keep_wrapper=False: the worker gets the bare object back (cloudpickle
    # carries it); classes are wrapped as objects, not turned into wrapper classes.
    return _wrap_non_picklable_objects(obj, False)


def _wrap_call(fn, args, kwargs, keys: frozenset) -> tuple:
    """Wrap the culprits among the callable, the arguments and inside partials."""
    wrapped: set = set()
    split = _split_map_call(fn, args, kwargs)
    if split is not None:
        real_fn, chunk = split
        new_fn = _wrap_one(real_fn, keys, wrapped)
        new_chunk = [tuple(_wrap_one(a, keys, wrapped) for a in item) for item in chunk]
        if isinstance(chunk, tuple):
            new_chunk = tuple(new_chunk)
        fn, args = _join_map_call(fn, args, new_fn, new_chunk)
        return fn, args, kwargs, wrapped
    fn = _wrap_one(fn, keys, wrapped)
    args = tuple(_wrap_one(a, keys, wrapped) for a in args)
    kwargs = {k: _wrap_one(v, keys, wrapped) for k, v in kwargs.items()}
    return fn, args, kwargs, wrapped


###############################################################################
# Worker side


def annotate_worker_failure(exc: BaseException, obj: Any, stage: str) -> None:
    """Attach the engine's diagnosis to ``exc`` as exception notes.

    ``stage`` is ``"result"`` (``obj``: the result or exception that failed to
    pickle back to the parent), ``"load"`` (``obj``: the payload bytes this
    worker failed to load) or ``"task"`` (``obj``: ``(fn, args, kwargs)`` of a
    call the parent's feeder thread failed to pickle). Runs in the worker (in
    the parent for ``"task"``); the executor swallows anything it raises.
    """
    from . import engine

    if stage == "task":
        fn, args, kwargs = obj
        report = engine.check_call(fn, args, kwargs, pickler="loky")
        header = (
            "loky pickle_check: the task cannot be pickled to send it to the workers."
        )
    elif stage == "result":
        inner = getattr(obj, "exc", None)
        if not isinstance(obj, BaseException) and isinstance(inner, BaseException):
            obj = inner  # the executor's exception-with-traceback envelope
        name = "exception" if isinstance(obj, BaseException) else "result"
        report = engine.diagnose_pickling_failure(obj, name=name, pickler="loky")
        header = f"loky pickle_check: the task's {name} cannot be pickled back to the parent."
    else:
        report = _diagnose_load_failure(obj, exc)
        header = "loky pickle_check: the task cannot be loaded in the worker."
    if report is not None and report.findings:
        _add_note(exc, f"{header}\n{report}")


# (call site, finding) pairs already warned about by check_worker_setup.
_setup_warned: set[tuple] = set()
_setup_lock = threading.Lock()
# Findings in initargs that are no findings there (see check_worker_setup).
_SPAWN_ONLY = ("sync_primitive", "connection")


def check_worker_setup(mode: str, **parts: Any) -> None:
    """Check mode, when an executor is made: what every worker receives as it
    starts (``initializer``, ``initargs``, ``job_reducers``,
    ``result_reducers``) must load there, pickled as loky sends it.

    Under "error" a part that cannot raises :class:`PicklingCheckError` (the
    executor is not made); otherwise one :class:`LokyPicklingWarning` per
    call site and finding. A worker that cannot load them dies at start-up,
    which the caller would only see as a ``TerminatedWorkerError``.
    """
    from .engine import check_object

    findings = []
    for name, value in parts.items():
        if value is None or (isinstance(value, (tuple, dict)) and not value):
            continue
        report = check_object(value, name=name, pickler="loky")
        findings.extend(
            f
            for f in report.findings
            if f.severity in _FINDING_LEVELS
            # Process-shared locks, queues and connections in initargs travel
            # with the worker's start-up (pickled while spawning), as intended.
            and not (name == "initargs" and f.category in _SPAWN_ONLY)
        )
    if not findings:
        return
    report = Report(target="executor start-up", pickler="loky", findings=findings)
    header = (
        "loky pickle_check: every worker receives these when it starts "
        "(initializer, initargs, job_reducers, result_reducers)."
    )
    if mode == "error" and any(f.severity == "error" for f in findings):
        raise PicklingCheckError(f"{header}\n{report}", report)
    site = _call_site()
    if len(_setup_warned) >= _CACHE_LIMIT:
        _setup_warned.clear()
    _warn_once(
        _setup_warned,
        _setup_lock,
        [((site, _finding_key(f)), f) for f in findings],
        report,
        lambda _new, partial_report: f"{header}\n{partial_report}",
    )


class _Unloadable:
    """Stands for a global this worker cannot import (see ``_diagnose_load_failure``)."""

    def __new__(cls, *args, **kwargs):
        return object.__new__(cls)

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        pass


def _diagnose_load_failure(payload: Any, exc: BaseException) -> Report | None:
    """Which argument of the call refers to what this worker cannot import.

    The payload is loaded again with every missing global replaced by a
    stand-in class named like it; the engine's taxonomy then classifies that
    definition (``__main__`` function, local class, missing module...).
    """
    from . import engine, taxonomy

    missing: dict[tuple[str, str], tuple[type, BaseException]] = {}

    class Probe(pickle.Unpickler):
        def find_class(self, module, name):
            try:
                return super().find_class(module, name)
            except Exception as error:
                if (module, name) not in missing:
                    stand_in = type(name.rsplit(".", 1)[-1], (_Unloadable,), {})
                    stand_in.__module__, stand_in.__qualname__ = module, name
                    missing[(module, name)] = (stand_in, error.with_traceback(None))
                return missing[(module, name)][0]

    try:
        fn, args, kwargs = Probe(io.BytesIO(payload)).load()
    except Exception:
        fn = args = kwargs = None  # not a missing global: no argument to name
    if not missing:
        return _load_error_report(exc, taxonomy)
    arguments = []
    if fn is not None:
        split = _split_map_call(fn, tuple(args), dict(kwargs))
        if split is not None:  # a map() chunk: name the function and item arguments
            fn, chunk = split
            calls = [(tuple(item), {}) for item in chunk]
        else:
            calls = [(tuple(args), dict(kwargs))]
        arguments = [engine.Argument("fn", None, "fn", fn)]
        for call_args, call_kwargs in calls:
            arguments += engine.bind_arguments(fn, call_args, call_kwargs)
    findings = []
    for (module, name), (stand_in, error) in missing.items():
        holder, path = engine.Argument("call", None, "call", None), "call"
        for argument in arguments:
            found = _path_to(argument.value, stand_in, argument.root)
            if found is not None:
                holder, path = argument, found
                break
        category, remedy, message, fix = _unimportable_verdict(
            stand_in, error, path, f"{module}.{name}"
        )
        findings.append(
            Finding(
                severity="error",
                stage="load",
                argument=holder.argument,
                parameter=holder.parameter,
                path=path,
                type=f"{module}.{name}",
                category=category,
                remedy=remedy,
                message=message,
                fix=fix,
                carried_by={p: False for p in engine.PICKLERS},
                summary=f"{module}.{name}",
            )
        )
    target = engine.describe_callable(fn) if fn is not None else "call"
    return Report(
        target=target, pickler=_reduction().get_loky_pickler_name(), findings=findings
    )


###############################################################################
# Parent side: a result that reached the parent but does not load there


class _LoadFailed:
    """Stands, in a re-loaded result, for the object whose rebuild raised."""


def _qualified(obj: Any) -> str:
    module = getattr(obj, "__module__", None)
    name = getattr(obj, "__qualname__", None) or getattr(obj, "__name__", None)
    if name is None:
        return type(obj).__qualname__
    return name if module in (None, "builtins") else f"{module}.{name}"


def _unimportable_verdict(
    stand_in: type, error: BaseException, path: str, type_name: str
) -> tuple[str, str, str, str]:
    """``(category, remedy, message, fix)`` for a global that did not import
    on the loading side, stood in for by ``stand_in``."""
    from . import taxonomy

    main_ref = stand_in.__module__ in ("__main__", "__mp_main__")
    category = taxonomy.categorize(
        None, definition=stand_in, exc=error, main_ref=main_ref, stage="load"
    )
    remedy = taxonomy.choose_remedy(
        category, wrap_fixes=False, definition=stand_in, exc=error, stage="load"
    )
    # wrap_fixes=True only keeps the texts from claiming that wrapping was
    # tried: the loading side cannot check it (the parent's check does).
    texts = taxonomy.texts(
        category,
        remedy,
        path=path,
        type_name=type_name,
        definition=stand_in,
        exc=error,
        wrap_fixes=True,
    )
    message = f"{texts.message} ({taxonomy.describe_exception(error)})"
    return category, remedy, message, texts.fix


def diagnose_result_load_failure(payload: bytes) -> Report | None:
    """Why the pickled result item ``payload`` does not load in this process.

    The payload is loaded again with the pure-Python unpickler, every rebuild
    (``REDUCE``: a reconstructor or a class called with its arguments; ``BUILD``:
    ``__setstate__``) guarded and every global that does not import replaced by
    a stand-in, so that each failure leaves a marker in the rebuilt result;
    the path from the result (or exception) to each marker names the culprit.
    """
    from . import engine, taxonomy

    failures: list[tuple[type, BaseException, str, str, Any]] = []

    # Errors are kept without their tracebacks: those hold this frame, whose
    # ``failures`` holds them (a cycle that would outlive the call until gc).
    def failed(error: BaseException, owner: str, method: str) -> Any:
        marker = type("_LoadFailedHere", (_LoadFailed,), {})
        failures.append((marker, error.with_traceback(None), owner, method, None))
        return marker()

    class Probe(pickle._Unpickler):  # type: ignore[name-defined]
        dispatch = dict(pickle._Unpickler.dispatch)  # type: ignore[attr-defined]

        def find_class(self, module: str, name: str) -> Any:
            try:
                return super().find_class(module, name)
            except Exception as error:
                stand_in = type(name.rsplit(".", 1)[-1], (_Unloadable,), {})
                stand_in.__module__, stand_in.__qualname__ = module, name
                failures.append(
                    (
                        stand_in,
                        error.with_traceback(None),
                        f"{module}.{name}",
                        "",
                        stand_in,
                    )
                )
                return stand_in

        def load_reduce(self) -> None:
            stack = self.stack
            args = stack.pop()
            func = stack[-1]
            try:
                stack[-1] = func(*args)
            except Exception as error:
                if isinstance(func, type):
                    stack[-1] = failed(error, _qualified(func), "")
                else:
                    stack[-1] = failed(error, "", _qualified(func))

        def load_build(self) -> None:
            inst = self.stack[-2]
            try:
                pickle._Unpickler.load_build(self)  # type: ignore[attr-defined]
            except Exception as error:
                self.stack[-1] = failed(error, _qualified(type(inst)), "__setstate__")

        dispatch[pickle.REDUCE[0]] = load_reduce
        dispatch[pickle.BUILD[0]] = load_build

    try:
        item = Probe(io.BytesIO(bytes(payload))).load()
    except Exception:
        return None
    if not failures:
        return None
    if isinstance(item, tuple) and len(item) == 3:
        _, exception, result = item
    else:
        exception = getattr(item, "exception", None)
        result = getattr(item, "result", None)
    name, value = (
        ("exception", exception) if exception is not None else ("result", result)
    )
    findings = []
    for marker, error, owner, method, stand_in in failures:
        path = _path_to(value, marker, name) or name
        if stand_in is not None:
            category, remedy, message, fix = _unimportable_verdict(
                stand_in, error, path, owner
            )
            # The texts speak of loading in a worker; here the parent loads.
            message = message.replace("in the worker", "in the parent")
            summary = owner
        else:
            category = "unpickle_error"
            remedy = taxonomy.choose_remedy(
                category, wrap_fixes=False, exc=error, stage="load"
            )
            texts = taxonomy.texts(
                category,
                remedy,
                path=path,
                type_name=owner or "object",
                exc=error,
                reducer_name=method,
            )
            message, fix = texts.message, texts.fix
            if not owner:  # a rebuild function, not a class: name it
                fix = (
                    f"fix {method} (the rebuild function a __reduce__ returns) so that "
                    "it accepts what the reducer passes and does not raise."
                )
            where = ".".join(part for part in (owner, method) if part)
            summary = f"{where} raised"
        findings.append(
            Finding(
                severity="error",
                stage="load",
                argument=name,
                parameter=None,
                path=path,
                type=owner or method,
                category=category,
                remedy=remedy,
                message=message,
                fix=fix,
                carried_by={p: False for p in engine.PICKLERS},
                summary=summary or type(error).__name__,
            )
        )
    return Report(
        target=name, pickler=_reduction().get_loky_pickler_name(), findings=findings
    )


def annotate_result_load_failure(exc: BaseException, payload: bytes) -> None:
    """Attach to ``exc`` (what the caller gets) why the result item
    ``payload`` sent by a worker does not load in the parent. Never raises."""
    try:
        report = diagnose_result_load_failure(payload)
        if report is not None and report.findings:
            name = report.findings[0].argument
            _add_note(
                exc,
                f"loky pickle_check: the task's {name} cannot be loaded back in the "
                f"parent.\n{report}",
            )
    except Exception:  # noqa: BLE001 - the diagnosis must not hide the failure
        pass


def _qualified_code_name(frame) -> str:
    """``Class.method`` of the frame's code (``co_qualname`` exists from 3.11;
    before, a method's ``self`` / ``cls`` names its class)."""
    code = frame.f_code
    qualname = getattr(code, "co_qualname", None)
    if qualname:
        return qualname
    receiver = frame.f_locals.get("self", frame.f_locals.get("cls"))
    if receiver is not None and code.co_varnames[:1] in (("self",), ("cls",)):
        owner = receiver if isinstance(receiver, type) else type(receiver)
        return f"{owner.__qualname__}.{code.co_name}"
    return code.co_name


def _load_error_report(exc: BaseException, taxonomy) -> Report:
    """Every global imports, yet loading fails: a reconstructor or
    ``__setstate__`` raised. Its frame (the traceback's last) names it."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    code = tb.tb_frame.f_code if tb is not None else None
    where = _qualified_code_name(tb.tb_frame) if tb is not None else ""
    owner, _, method = where.rpartition(".")
    if "<" in where or "pickle" in getattr(code, "co_filename", ""):
        owner, method = "", ""  # the unpickler itself, not user code
    remedy = taxonomy.choose_remedy(
        "unpickle_error", wrap_fixes=False, exc=exc, stage="load"
    )
    texts = taxonomy.texts(
        "unpickle_error",
        remedy,
        path="call",
        type_name=owner or "object",
        exc=exc,
        reducer_name=method,
    )
    finding = Finding(
        severity="error",
        stage="load",
        argument="call",
        parameter=None,
        path="call",
        type=owner or type(exc).__name__,
        category="unpickle_error",
        remedy=remedy,
        message=texts.message,
        fix=texts.fix,
        carried_by={"pickle": False, "cloudpickle": False, "loky": False},
        summary=f"{where} raised" if where and owner else type(exc).__name__,
    )
    return Report(
        target="call", pickler=_reduction().get_loky_pickler_name(), findings=[finding]
    )


def _walk_until(value: Any, path: str, found: Callable[[Any], bool]) -> Iterator[str]:
    """Paths (the engine's grammar) of what ``found`` accepts inside ``value``,
    not looking inside those. Only what the unpickler just built is walked, in
    a bounded breadth-first search: plain containers, ``partial``, bound
    methods' ``self``, instance dicts and the closure cells and globals of
    functions; no user code runs."""
    queue = collections.deque([(value, path, 0)])
    seen: set[int] = set()
    budget = 10_000
    while queue and budget > 0:
        value, path, depth = queue.popleft()
        budget -= 1
        if found(value):
            yield path
            continue
        if depth == 8 or id(value) in seen:
            continue
        seen.add(id(value))
        if isinstance(value, types.MethodType):
            children: Iterable = [(".__self__", value.__self__)]
        else:
            children = itertools.islice(_children(value), 100)
        queue.extend((child, path + step, depth + 1) for step, child in children)


def _path_to(value: Any, stand_in: type, path: str) -> str | None:
    """Path from ``value`` to the stand-in class or an instance of it, or None."""
    return next(
        _walk_until(value, path, lambda v: v is stand_in or isinstance(v, stand_in)),
        None,
    )


def _paths_of_instances(value: Any, types_: tuple, path: str) -> list[str]:
    """Paths from ``value`` to every instance of ``types_`` in it."""
    if not types_:
        return []
    return list(_walk_until(value, path, lambda v: isinstance(v, types_)))


def _children(value: Any) -> Iterator[tuple[str, Any]]:
    """``(path step, child)`` pairs of what a pickle of ``value`` holds."""
    if isinstance(value, functools.partial):
        yield ".func", value.func
        yield from ((f".args[{i}]", v) for i, v in enumerate(value.args))
        yield from ((f".keywords[{k!r}]", v) for k, v in value.keywords.items())
    elif isinstance(value, dict):
        yield from ((f"[{k!r}]", v) for k, v in value.items())
    elif isinstance(value, (list, tuple)):
        yield from ((f"[{i}]", v) for i, v in enumerate(value))
    elif isinstance(value, (set, frozenset)):
        yield from ((f".<item {i}>", v) for i, v in enumerate(value))
    elif isinstance(value, BaseException):
        yield from ((f".args[{i}]", v) for i, v in enumerate(value.args))
        with contextlib.suppress(AttributeError):
            state = object.__getattribute__(value, "__dict__")
            yield from ((f".{k}", v) for k, v in state.items())
    elif isinstance(value, types.FunctionType):
        cells = value.__closure__ or ()
        for name, cell in zip(value.__code__.co_freevars, cells, strict=False):
            try:
                yield f".<closure {name}>", cell.cell_contents
            except ValueError:  # an empty cell
                continue
        for name in value.__code__.co_names:
            if name in value.__globals__:
                yield f".<global {name}>", value.__globals__[name]
    else:
        try:
            state = object.__getattribute__(value, "__dict__")
        except AttributeError:
            return
        if isinstance(state, dict):
            yield from ((f".{k}", v) for k, v in state.items())


def _add_note(exc: BaseException, note: str) -> None:
    if hasattr(exc, "add_note"):
        exc.add_note(note)
    else:
        _append_note_py310(exc, note)


def _append_note_py310(exc: BaseException, note: str) -> None:
    """``add_note`` for Python 3.10, whose traceback ignores ``__notes__``: the
    note also goes into the message so that it shows."""
    notes = getattr(exc, "__notes__", None)
    if not isinstance(notes, list):
        notes = []
        try:
            exc.__notes__ = notes
        except Exception:
            return
    notes.append(note)
    if exc.args and isinstance(exc.args[0], str):
        exc.args = (f"{exc.args[0]}\n{note}", *exc.args[1:])
    else:
        exc.args = (*exc.args, note)
