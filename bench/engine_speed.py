"""Speed of the pickling diagnosis engine, as ratios to one ``pickle.dumps``.

    python bench/engine_speed.py [--rounds N]

Workload (issue "loky_check: the pickling diagnosis engine"): a call carrying a
50 MiB float array and 200,000 small dicts.
  * fast path: ``check_call`` on the picklable call (budget: 1.2x);
  * diagnosis: the same call with one lock hidden in the last dict (budget: 8x).
Each figure is the best of N rounds; the ratio divides by the best of N
``pickle.dumps`` of the same call (highest protocol, in-band, as a user would).
"""

from __future__ import annotations

import argparse
import pickle
import threading
import time

import numpy as np

from loky_check import check_call

# Any importable callable: a function of the benchmark script would live in
# __main__, which is itself a finding (no loky worker can load it by name).
work = max


def best_of(rounds: int, fn) -> float:
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    options = parser.parse_args(argv)

    array = np.random.default_rng(0).random(50 * 2**20 // 8)
    rows = [{"id": i, "name": f"row{i}", "score": i * 0.5} for i in range(200_000)]
    call = (work, (array, rows), {"default": 2.0})

    baseline = best_of(
        options.rounds, lambda: pickle.dumps(call, protocol=pickle.HIGHEST_PROTOCOL)
    )
    fast = best_of(
        options.rounds, lambda: check_call(work, (array, rows), {"default": 2.0})
    )

    rows[-1]["lock"] = threading.Lock()
    report = check_call(work, (array, rows), {"default": 2.0})
    assert [f.path for f in report.findings] == ["args[1][199999]['lock']"], str(report)
    try:
        pickle.dumps(call, protocol=pickle.HIGHEST_PROTOCOL)
    except TypeError:
        pass
    failing = best_of(
        options.rounds, lambda: check_call(work, (array, rows), {"default": 2.0})
    )

    print(f"pickle.dumps of the call      {baseline * 1e3:8.1f} ms")
    print(
        f"check_call, picklable         {fast * 1e3:8.1f} ms   {fast / baseline:5.2f}x  (budget 1.2x)"
    )
    print(
        f"check_call, lock in last dict {failing * 1e3:8.1f} ms   {failing / baseline:5.2f}x  (budget 8x)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
