"""Cost of the executor's pickling check mode (``pickle_check=``).

1. Throughput of 10,000 tiny tasks (``operator.add``) under ``off``, ``warn``,
   ``error`` and ``wrap``: the median over rounds of each mode's ratio to the
   ``off`` run of the same round (modes rotated each round, so that a noisy
   machine hurts every mode alike), plus the parent's CPU per task. One pool
   serves all modes, only its submit hook is swapped. A second line uses a
   function of this script's ``__main__``: loky carries it by value, so the check
   warns once and then serves the cached verdict.
2. A 64 MiB argument: how many times its ``__reduce__`` runs per ``submit`` (must
   be 1 in every mode: the check's pickling IS the payload the workers get).

    python bench/check_mode_overhead.py [--tasks 10000] [--rounds 5] [--workers 2]
"""

from __future__ import annotations

import argparse
import operator
import os
import statistics
import sys
import time
import warnings

import loky

MODES = ("off", "warn", "error", "wrap")


class CountedPayload:
    """A large argument that counts how many times it is pickled (in this process)."""

    reductions = 0

    def __init__(self, data: bytes = b""):
        self.data = data

    def __reduce__(self):
        type(self).reductions += 1
        return CountedPayload, (self.data,)


def payload_size(payload: CountedPayload) -> int:
    return len(payload.data)


def main_add(x, y):
    return x + y


def run_tasks(executor, fn, n_tasks: int) -> tuple[float, float]:
    """(tasks per second, parent CPU microseconds per task: all its threads)."""
    start, cpu_start = time.perf_counter(), time.process_time()
    futures = [executor.submit(fn, i, 1) for i in range(n_tasks)]
    for future in futures:
        future.result()
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    return n_tasks / wall, cpu / n_tasks * 1e6


def throughput(fn, n_tasks: int, rounds: int, workers: int) -> dict[str, tuple]:
    """Per mode: (best tasks/s, median of the per-round ratios to "off", best
    parent CPU per task).

    One pool serves every mode: only its submit hook is swapped (the checker
    the executor would build for that mode, or none for "off"), so the modes
    share workers, manager thread and queues and differ in the hook alone.
    Each round runs every mode, in a rotated order.
    """
    from loky_check.runtime import SubmitChecker

    rates: dict[str, list[float]] = {mode: [] for mode in MODES}
    cpus: dict[str, list[float]] = {mode: [] for mode in MODES}
    checkers = {m: None if m == "off" else SubmitChecker(m) for m in MODES}
    executor = loky.ProcessPoolExecutor(workers, pickle_check="warn")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the __main__ function warns once
            for mode in MODES:  # start the workers, fill the caches
                executor._pickle_checker = checkers[mode]
                run_tasks(executor, fn, 200)
            for round_ in range(rounds):
                order = MODES[round_ % len(MODES) :] + MODES[: round_ % len(MODES)]
                for mode in order:
                    executor._pickle_checker = checkers[mode]
                    rate, cpu = run_tasks(executor, fn, n_tasks)
                    rates[mode].append(rate)
                    cpus[mode].append(cpu)
    finally:
        executor.shutdown(wait=True)
    return {
        mode: (
            max(rates[mode]),
            statistics.median(
                r / o for r, o in zip(rates[mode], rates["off"], strict=True)
            ),
            min(cpus[mode]),
        )
        for mode in MODES
    }


def pickling_cost(rounds: int, number: int = 20_000) -> dict[str, float]:
    """Parent-side pickling CPU per tiny call (microseconds), without the pool.

    ``off``: the feeder pickles the call item holding fn and args. A check mode:
    ``check_submit`` pickles the call (the payload), then the feeder pickles the
    call item holding those bytes. Less noisy than a pool's throughput.
    """
    import timeit

    from loky.backend.reduction import dumps, get_loky_pickler_name
    from loky_check.runtime import SubmitChecker

    checker = SubmitChecker("warn")
    name = get_loky_pickler_name()

    # What the executor's feeder pickles per task: the call item's fields.
    def off():
        dumps((0, operator.add, (1, 1), {}, None, None, name))

    def checked():
        fn, args, kwargs, payload = checker.check_submit(operator.add, (1, 1), {})
        dumps((0, None, None, None, payload, "warn", name))

    def best(stmt) -> float:
        times = timeit.repeat(
            stmt, number=number, repeat=rounds, timer=time.process_time
        )
        return min(times) / number * 1e6

    return {"off": best(off), "warn/error": best(checked)}


def large_argument(size: int) -> dict[str, tuple[int, float]]:
    # By reference (the class is imported from this module, not __main__):
    # a clean call, which the check pickles exactly once.
    from check_mode_overhead import CountedPayload as Counted
    from check_mode_overhead import payload_size as size_of

    results = {}
    data = b"x" * size
    for mode in MODES:
        with loky.ProcessPoolExecutor(1, pickle_check=mode) as executor:
            executor.submit(operator.add, 1, 1).result()
            Counted.reductions = 0
            start = time.perf_counter()
            assert executor.submit(size_of, Counted(data)).result() == size
            results[mode] = (Counted.reductions, time.perf_counter() - start)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--mib", type=int, default=64)
    options = parser.parse_args()
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

    pickler = loky.backend.reduction.get_loky_pickler_name()
    print(f"python {sys.version.split()[0]}, pickler {pickler}")
    cases = [("operator.add", operator.add)]
    if pickler != "pickle":  # a worker cannot load a __main__ function by name
        cases.append(("__main__ function", main_add))
    for label, fn in cases:
        best = throughput(fn, options.tasks, options.rounds, options.workers)
        off_rate, _, off_cpu = best["off"]
        print(f"{options.tasks} tiny tasks, {label}:")
        for mode in MODES:
            rate, ratio, cpu = best[mode]
            print(
                f"  {mode:<5} best {rate:6.0f} tasks/s (ratio {rate / off_rate:.3f}), "
                f"median per-round ratio {ratio:.3f}, "
                f"parent CPU {cpu:5.1f} us/task (ratio {cpu / off_cpu:.3f})"
            )

    cost = pickling_cost(options.rounds)
    print(
        f"parent pickling per tiny call: off {cost['off']:.2f} us, warn/error "
        f"{cost['warn/error']:.2f} us (+{cost['warn/error'] - cost['off']:.2f} us)"
    )

    size = options.mib << 20
    for mode, (count, seconds) in large_argument(size).items():
        print(
            f"{options.mib} MiB argument, {mode:<5}: __reduce__ called {count} time(s), "
            f"submit+result {seconds * 1000:.0f} ms"
        )


if __name__ == "__main__":
    main()
