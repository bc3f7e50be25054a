"""``loky-check``: check before deploying that a function and its calls can be
shipped to worker processes, and apply the fix.

A thin shell over the engine: it resolves what the command line names
(:mod:`loky_check.targets`), asks :func:`loky_check.check_call` (and, with
``--run``, :func:`loky_check.worker_probe.check_return_value`) for reports,
prints the one merged :class:`~loky_check.report.Report`, and hands ``wrap``
findings to :mod:`loky_check.fixer`. Exit status: 0 no error-level finding
(``--strict``: no warning either), 1 findings, 2 usage error or anything that
stopped the check (always with a one-line reason on stderr).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Iterator, Sequence
from typing import Any, NoReturn

from . import targets
from .targets import Call, TargetError

__all__ = ["main", "build_parser"]

PROG = "loky-check"
EXIT_OK, EXIT_FINDINGS, EXIT_USAGE = 0, 1, 2
PICKLERS = ("pickle", "cloudpickle", "loky")

_DESCRIPTION = """\
Check, before deploying, that a function and the calls it will receive can be
shipped to loky worker processes: which argument cannot, where inside it, why,
and what to do.

TARGET is package.module:func, package.module:Class.method or
path/to/file.py:func. A file inside a package is imported under its dotted
name; a file outside any package is a script, loaded as __main__ the way
`python file.py` runs it, without running the body of its
`if __name__ == "__main__":` guard (only the defs, classes and imports there).
"""

_EPILOG = """\
--fix decorates the def/class behind every finding whose remedy is `wrap`
(an inline lambda is listed with the change to make by hand); --diff prints
that change as a unified diff on stdout and writes nothing.

exit status: 0 no error-level finding (--strict: no warning either),
1 findings (or a failing reducer; with --fix, findings it did not fix),
2 usage error, target not importable, factory raised, file not fixable.
--exit-zero turns 1 into 0 (to read the report without failing a script).
"""


class UsageError(Exception):
    """A command line that cannot be run; ``str()`` is the one-line reason."""


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line, not the usage block."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see {PROG} --help)")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a positive integer, got {text!r}"
        ) from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG,
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "target", nargs="?", metavar="TARGET", help="the callable to check"
    )
    parser.add_argument(
        "--args-from",
        metavar="FACTORY",
        help="module:factory (or file.py:factory) returning one (args, kwargs) pair or an "
        "iterable of them: the real arguments the deployment passes",
    )
    parser.add_argument(
        "--examples",
        type=_positive_int,
        metavar="N",
        help="also check N argument sets built by hypothesis from the type hints "
        "(st.from_type, and strategies registered with loky_check.register_strategy); "
        "with --reducers, the examples per reducer",
    )
    parser.add_argument(
        "--run",
        action="store_true",
        help="submit the calls to real loky workers and check that each return value "
        "(or raised exception) pickles back",
    )
    parser.add_argument(
        "--pickler",
        choices=PICKLERS,
        default="pickle",
        help="the pickler under test (default: pickle, the standard library's)",
    )
    parser.add_argument(
        "--reducers",
        action="extend",
        nargs="+",
        default=[],
        metavar="MODULE",
        help="import each MODULE (which registers reducers) and property-test every "
        "registered reducer through a real worker; one or more, repeatable; may be "
        "given without TARGET",
    )
    edit = parser.add_mutually_exclusive_group()
    edit.add_argument(
        "--fix",
        action="store_true",
        help="rewrite the source: add @wrap_non_picklable_objects (and its import) to the "
        "def/class of every finding whose remedy is wrap",
    )
    edit.add_argument(
        "--diff",
        action="store_true",
        help="print the unified diff --fix would apply; write nothing",
    )
    parser.add_argument(
        "--json", action="store_true", help="print the JSON report (loky-check/1)"
    )
    parser.add_argument("--strict", action="store_true", help="exit 1 on warnings too")
    parser.add_argument(
        "--exit-zero",
        action="store_true",
        help="exit 0 even when there are findings (usage errors still exit 2)",
    )
    return parser


def _take_target_from_reducers(options: argparse.Namespace) -> None:
    """``--reducers a b pkg.mod:func``: the modules end where the target (the
    only argument with a ':') starts, wherever the target was written."""
    targets_given = [item for item in options.reducers if ":" in item]
    if not targets_given:
        return
    if options.target is not None or len(targets_given) > 1:
        extra = targets_given[0] if options.target is not None else targets_given[1]
        raise UsageError(
            f"unrecognized arguments: {extra} (one TARGET; --reducers takes module "
            f"names) (see {PROG} --help)"
        )
    options.target = targets_given[0]
    options.reducers = [item for item in options.reducers if ":" not in item]


def _validate(options: argparse.Namespace) -> None:
    _take_target_from_reducers(options)
    if options.target is None:
        if not options.reducers:
            raise UsageError(
                f"give a TARGET to check, or --reducers MODULE (see {PROG} --help)"
            )
        needs_target = [
            flag
            for flag, given in (
                ("--args-from", options.args_from is not None),
                ("--run", options.run),
                ("--fix", options.fix),
                ("--diff", options.diff),
            )
            if given
        ]
        if needs_target:
            raise UsageError(f"{needs_target[0]} needs a TARGET (see {PROG} --help)")
    if options.json and (options.fix or options.diff):
        flag = "--fix" if options.fix else "--diff"
        raise UsageError(
            f"{flag} cannot be combined with --json: it prints what it changes, not a report"
        )


# -- running the check ---------------------------------------------------------


@contextlib.contextmanager
def _user_output_to_stderr() -> Iterator[None]:
    """What user code prints while loaded or called goes to stderr: stdout is
    the report's (and must stay valid JSON with --json).

    Redirected at the file-descriptor level too when stdout is fd 1, because
    the loky workers the checks start inherit fd 1 and import user modules.
    """
    saved_fd = None
    with contextlib.suppress(AttributeError, OSError, ValueError):
        if sys.stdout.fileno() == 1:
            sys.stdout.flush()
            saved_fd = os.dup(1)
            os.dup2(2, 1)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        if saved_fd is not None:
            with contextlib.suppress(OSError):
                sys.stderr.flush()
            os.dup2(saved_fd, 1)
            os.close(saved_fd)


def _check(
    fn: Any, calls: list[Call], options: argparse.Namespace
) -> tuple[Any, list[Any]]:
    """The merged report, and each call's own report (for ``--run``)."""
    from .engine import check_call

    target = options.target
    # The callable itself: by reference, by value, and loaded in a fresh worker.
    report = check_call(
        fn, (), {}, pickler=options.pickler, in_worker=True, target=target
    )
    per_call = []
    for call in calls:
        call_report = check_call(
            fn,
            call.args,
            call.kwargs,
            pickler=options.pickler,
            in_worker=True,
            target=target,
        )
        if call.label.startswith("example "):
            _refuse_hypothesis_artifacts(call_report, target)
        per_call.append(call_report)
        report = report.merge(call_report)
    return report, per_call


def _refuse_hypothesis_artifacts(report: Any, target: str) -> None:
    """A finding on an object hypothesis made for its own use (an
    ``ArtificialRandom`` for a ``Hashable`` hint, a function closing over its
    draw state) is about hypothesis, not the deployment: ask for a strategy."""
    for finding in report.findings:
        if str(finding.type).startswith("hypothesis.") or "_ConjectureData" in str(
            finding.path
        ):
            name = finding.parameter or finding.argument
            raise UsageError(
                f"--examples: hypothesis built a {finding.type} for {name} of {target}, "
                "one of its own objects that no real call passes; give that parameter "
                "a concrete type hint, register a strategy with "
                "loky_check.register_strategy, or use --args-from"
            )


def _run_calls(fn: Any, calls: list[Call], per_call: list[Any], report: Any) -> Any:
    """``--run``: execute each call in a worker and check what comes back."""
    from .worker_probe import check_return_value

    for call, call_report in zip(calls, per_call, strict=True):
        # Severity is relative to loky's pickler: an error-level finding means
        # the call cannot reach a worker, so there is nothing to run.
        if any(f.severity == "error" for f in call_report.findings):
            continue
        try:
            returned = check_return_value(fn, call.args, call.kwargs)
        except SystemExit as exc:
            # The call's own sys.exit() came back from the worker: it must not
            # end loky-check with the call's exit status and no report.
            raise UsageError(
                f"--run: {call.label} called sys.exit({exc.code!r}) in the worker; "
                "nothing came back to check"
            ) from None
        crashed = [
            f
            for f in returned.findings
            if f.argument == "result" and f.type == _TERMINATED_WORKER
        ]
        if crashed:
            # Not a pickling finding: the call killed its worker (os._exit,
            # a segfault, the OOM killer), so no result exists to check.
            reason = crashed[0].message.split("\n\n", 1)[-1].split("\n", 1)[0]
            raise UsageError(
                f"--run: {call.label} crashed the worker that ran it ({reason.strip()}); "
                "nothing came back to check"
            )
        report = report.merge(returned)
    return report


_TERMINATED_WORKER = "loky.process_executor.TerminatedWorkerError"


def _runnable_without_arguments(fn: Any) -> bool:
    import inspect

    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):
        return False
    return all(
        p.default is not p.empty or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        for p in signature.parameters.values()
    )


def _check_reducers(examples: int | None) -> list[Any]:
    from .reducers import check_reducers

    return list(check_reducers(max_examples=examples or 100))


def _empty_report(options: argparse.Namespace) -> Any:
    from .report import Report

    target = options.target or "reducers: " + ", ".join(options.reducers)
    return Report(target=target, pickler=options.pickler)


def _exit_status(report: Any, strict: bool, fixed: Sequence[Any] = ()) -> int:
    fixed_ids = {id(f) for f in fixed}
    remaining = [f for f in report.findings if id(f) not in fixed_ids]
    if any(f.severity == "error" for f in remaining):
        return EXIT_FINDINGS
    if strict and any(f.severity == "warning" for f in remaining):
        return EXIT_FINDINGS
    if any(not getattr(r, "ok", True) for r in report.reducers):
        return EXIT_FINDINGS
    return EXIT_OK


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _summary(
    report: Any, checked: str, status: int, strict: bool, *, calls_checked: bool = True
) -> str:
    errors, warnings, notes = (report.count(s) for s in ("error", "warning", "info"))
    parts = []
    if calls_checked:  # without a target only reducers were checked
        parts = [_plural(errors, "error"), _plural(warnings, "warning")]
    if notes:
        parts.append(_plural(notes, "note"))
    failed = sum(1 for r in report.reducers if not getattr(r, "ok", True))
    if report.reducers:
        parts.append(
            f"{len(report.reducers) - failed}/{len(report.reducers)} reducers hold"
        )
    verdict = "ok" if status == EXIT_OK else "FAIL"
    tail = ""
    if status == EXIT_OK and warnings and not strict:
        tail = " (warnings do not fail without --strict)"
    return (
        f"{verdict}: {', '.join(parts)} in {checked} (pickler: {report.pickler}){tail}"
    )


def _use_color(stream: Any) -> bool:
    if os.environ.get("NO_COLOR"):
        return False
    if os.environ.get("TERM") == "dumb":
        return False
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _describe_checked(
    has_target: bool, calls: list[Call], reducer_modules: Sequence[str]
) -> str:
    parts = []
    if has_target:
        parts.append("fn" if not calls else f"fn and {_plural(len(calls), 'call')}")
    if reducer_modules:
        parts.append("the registered reducers")
    return " + ".join(parts)


def _run(argv: Sequence[str] | None) -> int:
    options = build_parser().parse_args(argv)
    status = _check_and_report(options)
    if options.exit_zero and status == EXIT_FINDINGS:
        return EXIT_OK
    return status


@contextlib.contextmanager
def _own_executors_unchecked() -> Iterator[None]:
    """The executors loky-check starts for its probes are its own business: a
    ``LOKY_PICKLE_CHECK`` set in the user's shell must neither warn about the
    probes' internal calls nor stop them (the workers inherit the environment
    as it is while they start)."""
    saved = os.environ.pop("LOKY_PICKLE_CHECK", None)
    try:
        yield
    finally:
        if saved is not None:
            os.environ["LOKY_PICKLE_CHECK"] = saved


def _check_loky_starts() -> None:
    """An environment loky refuses (``LOKY_PICKLER`` naming no pickler) is the
    user's to fix: one line naming it, not an internal error later."""
    try:
        import loky  # noqa: F401 - it sets up LOKY_PICKLER on import
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        value = os.environ.get("LOKY_PICKLER")
        where = f"LOKY_PICKLER={value!r}" if value else "loky"
        raise UsageError(
            f"{where} cannot be used: {type(exc).__name__}: {first}"
        ) from None


def _check_and_report(options: argparse.Namespace) -> int:
    _validate(options)
    _check_loky_starts()
    with _own_executors_unchecked():
        return _checked_and_reported(options)


def _checked_and_reported(options: argparse.Namespace) -> int:
    targets.ensure_cwd_on_path()
    out = sys.stdout

    fn = None
    calls: list[Call] = []
    with _user_output_to_stderr():
        # Reducer modules first: the reducers they register take part in the check.
        for module in options.reducers:
            targets.import_module_ref(module, what="--reducers module")
        if options.target is not None:
            ref, fn = targets.resolve_callable(options.target)
            if options.args_from is not None:
                calls.extend(targets.load_calls(options.args_from))
            if options.examples is not None:
                owner = targets.method_owner(ref)
                calls.extend(
                    targets.example_calls(
                        fn, options.examples, options.target, owner=owner
                    )
                )
            targets.check_calls_fit(fn, calls, options.target)
            if options.run and not calls:
                if not _runnable_without_arguments(fn):
                    raise UsageError(
                        f"--run needs calls to run: {options.target} takes arguments; "
                        "give --args-from or --examples"
                    )
                calls.append(Call((), {}, "call without arguments"))

        report = _empty_report(options)
        if fn is not None:
            report, per_call = _check(fn, calls, options)
            if options.run:
                report = _run_calls(fn, calls, per_call, report)
        if options.reducers:
            report.reducers = _check_reducers(options.examples)

    if options.json:
        data = report.to_dict()
        out.write(json.dumps(data, indent=2) + "\n")
        return _exit_status(report, options.strict)

    checked = _describe_checked(fn is not None, calls, options.reducers)
    if options.diff or options.fix:
        return _fix_or_diff(report, options, checked)

    out.write(report.render(color=_use_color(out)) + "\n\n")
    if options.reducers and not report.reducers:
        out.write(
            f"note: no user reducer is registered after importing "
            f"{', '.join(options.reducers)}: no reducer was tested\n"
        )
    status = _exit_status(report, options.strict)
    summary = _summary(
        report, checked, status, options.strict, calls_checked=fn is not None
    )
    out.write(summary + "\n")
    return status


def _fix_or_diff(report: Any, options: argparse.Namespace, checked: str) -> int:
    from . import fixer

    out = sys.stdout
    plan = fixer.plan_fixes(report.findings)
    if options.diff:
        # Only the diff on stdout, so that `loky-check ... --diff | git apply` works.
        out.write(plan.diff())
        for line in plan.summary_lines(applied=False):
            print(line, file=sys.stderr)
        status = _exit_status(report, options.strict)
        print(
            f"{PROG}: --diff: {_plural(len(plan.changed), 'file')} would change, "
            f"{_plural(len(plan.manual), 'change')} to make by hand; nothing written",
            file=sys.stderr,
        )
        return status

    fixer.apply_plan(plan)
    out.write(report.render(color=_use_color(out)) + "\n\n")
    lines = plan.summary_lines(applied=True)
    if lines:
        out.write("fixes:\n" + "".join(f"  {line}\n" for line in lines) + "\n")
    status = _exit_status(report, options.strict, fixed=plan.fixed)
    added = sum(len(r.added) for r in plan.changed)
    out.write(
        _summary(report, checked, status, options.strict)
        + f"; fixed {_plural(added, 'definition')} in {_plural(len(plan.changed), 'file')}"
        + (f", {len(plan.manual)} to change by hand" if plan.manual else "")
        + "\n"
    )
    return status


def _fail(message: str) -> int:
    print(f"{PROG}: error: {' '.join(message.split())}", file=sys.stderr)
    return EXIT_USAGE


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``loky-check`` with ``argv`` (default ``sys.argv[1:]``); the exit status."""
    try:
        return _run(argv)
    except (UsageError, TargetError) as exc:  # includes fixer.FixError
        return _fail(str(exc))
    except SystemExit as exc:  # --help / --version from argparse
        return exc.code if isinstance(exc.code, int) else EXIT_OK
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`loky-check ... | head`): nothing left to say.
        with contextlib.suppress(OSError):
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - silence the exit flush
        return EXIT_FINDINGS
    except Exception as exc:
        if os.environ.get("LOKY_CHECK_DEBUG"):
            raise
        return _fail(
            f"internal error: {targets.describe_exception(exc)} "
            "(set LOKY_CHECK_DEBUG=1 for the traceback)"
        )
    finally:
        targets.restore_main()
        _shutdown_workers()


def _shutdown_workers() -> None:
    """Leave no worker behind: stop the reusable executor the checks used."""
    module = sys.modules.get("loky.reusable_executor")
    storage = getattr(module, "_executor_storage", None) if module else None
    executor = getattr(storage, "executor", None) if storage else None
    if executor is not None:
        with contextlib.suppress(Exception):
            executor.shutdown(wait=True, kill_workers=True)


if __name__ == "__main__":  # pragma: no cover - `python -m loky_check` uses __main__.py
    sys.exit(main())
