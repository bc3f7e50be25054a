"""How long do 100 reducer examples take through a warm loky worker?

Runs ``check_reducers`` on a correct reducer (a dataclass with a float, a
string and a list, so examples are not trivial) against a one-worker executor
that is already up, and prints the median wall time of a full check (draw 100
examples with hypothesis, pickle them, ONE trip to the worker and back,
compare), next to the cost of the trip alone and of one-trip-per-example.

    python bench/reducers_roundtrip.py [--examples 100] [--rounds 7]
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time

from loky import ProcessPoolExecutor
from loky.backend.reduction import dumps
from loky_check.reducers import (
    _RoundTripper,
    _WorkerTrip,
    check_reducers,
    worker_round_trip,
)


@dataclasses.dataclass
class Reading:
    sensor: str
    value: float
    history: list[int]


def _rebuild_reading(sensor, value, history):
    return Reading(sensor, value, list(history))


def reduce_reading(reading):
    return _rebuild_reading, (reading.sensor, reading.value, tuple(reading.history))


def _timed(function, rounds: int) -> float:
    samples = []
    for _ in range(rounds):
        start = time.perf_counter()
        function()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=7)
    options = parser.parse_args(argv)

    reducers = {Reading: reduce_reading}
    executor = ProcessPoolExecutor(max_workers=1, job_reducers=reducers)
    try:
        # warm up: start the worker and let it import this module and loky_check
        executor.submit(worker_round_trip, [bytes(dumps(1))], None).result()
        (first,) = check_reducers(
            [Reading], max_examples=options.examples, executor=executor
        )
        assert first.ok, str(first)

        full = _timed(
            lambda: check_reducers(
                [Reading], max_examples=options.examples, executor=executor
            ),
            options.rounds,
        )

        examples = [
            Reading(f"s{i}", i / 7, list(range(i % 5))) for i in range(options.examples)
        ]
        trip = _WorkerTrip(executor)

        def batched() -> None:
            _RoundTripper(trip, Reading).evaluate(examples)

        def one_per_trip() -> None:
            tripper = _RoundTripper(trip, Reading)
            for example in examples:
                tripper.evaluate([example])

        batched_time = _timed(batched, options.rounds)
        single_time = _timed(one_per_trip, options.rounds)
    finally:
        executor.shutdown(wait=True)

    n = options.examples
    print(
        f"python {sys.version.split()[0]}, {n} examples, median of {options.rounds} rounds"
    )
    print(f"check_reducers (hypothesis + 1 trip + compare): {full * 1000:8.1f} ms")
    print(
        f"  batched round trip alone (1 task):              {batched_time * 1000:8.1f} ms"
    )
    print(
        f"  one task per example ({n} tasks):               {single_time * 1000:8.1f} ms"
    )
    return 0


if __name__ == "__main__":
    # Run the module under its importable name: a type defined in __main__ would
    # be pickled by value in every example (a worker cannot import __main__).
    import importlib

    sys.exit(importlib.import_module("reducers_roundtrip").main())
