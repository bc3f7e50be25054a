#!/usr/bin/env python
"""Benchmark workloads for a loky-compatible process pool (and stdlib baselines).

    python workloads.py WORKLOAD [--json]      run one workload in this interpreter
    python workloads.py --list                 list workload names

Each workload runs in the interpreter that executes this file and uses whatever
``loky`` that interpreter imports.  Every workload checks its results (an
AssertionError makes the run fail) and prints, with --json, ONE line:
    {"workload", "backend", "ok", "metrics": {name: number}, "extra", "warnings", ...}
Metric names end with their unit; the unit says which direction is better:
    *_per_s, *_MBps  -> higher is better;   *_s, *_ms, *_us -> lower is better.

Only the standard library and numpy are used here (plus the ``loky`` under test and,
in ``serialization`` only, ``cloudpickle`` as one of the compared picklers).
Heavy imports are done inside the workloads, so that worker processes that import
this file (to unpickle its functions by reference) stay cheap.
"""

import os
import sys
import time

# ---------------------------------------------------------------- sizes
MAX_WORKERS = 2
N_LATENCY = 500  # reuse_latency: one-at-a-time round trips (per block)
LATENCY_BLOCKS = 3  # reuse_latency: blocks of N_LATENCY, medians over blocks
N_GET = 200  # reuse_latency: repeated get_reusable_executor calls
N_SUBMIT = 20_000  # throughput_submit
N_MAP_BIG_CHUNK = 200_000  # throughput_map, chunksize=1000
N_MAP_CHUNK1 = 10_000  # throughput_map, chunksize=1
MAP_REPEATS = 7  # throughput_map chunksize=1000: maps (median)
PAYLOAD_MB = 64  # big_payload (MiB)
PAYLOAD_REPEATS = 5
N_WRAPPED = 20_000  # cloudpickle_wrapped, chunksize 100
WRAPPED_REPEATS = 9  # cloudpickle_wrapped: maps per case (median)
COLD_START_SAMPLES = 5  # fresh interpreters per cold_start run
CRASH_REPEATS = 5
RESIZE_REPEATS = 5
RESULT_TIMEOUT = 60  # seconds; a hung pool fails the run instead of hanging it

_MAIN_FACTOR = 3  # global read by main_fn (pickled by value from __main__)


# ------------------------------------------- task functions (run in workers)
def inc(x):
    return x + 1


def identity(x):
    return x


def sleep_pid(t):
    time.sleep(t)
    return os.getpid()


def crash():
    os._exit(1)


def main_fn(x):
    # Run through the __main__ copy of this module, this is an "interactively
    # defined" function: loky has to pickle it by value.
    return x * _MAIN_FACTOR + 3


def __getattr__(name):
    # `Point` is a dataclass that must be importable as workloads.Point (so all
    # picklers pickle it by reference) but importing `dataclasses` costs ~10 ms,
    # which we do not want in every worker: build it on first access (PEP 562).
    if name == "Point":
        from dataclasses import dataclass

        @dataclass
        class Point:
            x: int
            y: float
            label: str

        Point.__qualname__ = "Point"
        Point.__module__ = __name__
        globals()["Point"] = Point
        return Point
    raise AttributeError(name)


# ------------------------------------------------------------------ helpers
def _importable():
    """This file imported under its real module name (not __main__), so that
    its functions pickle by reference in every backend."""
    if __name__ != "__main__":
        return sys.modules[__name__]
    import importlib

    here = os.path.dirname(os.path.abspath(__file__))
    if here not in sys.path:
        sys.path.insert(0, here)
    return importlib.import_module(os.path.splitext(os.path.basename(__file__))[0])


def _now():
    return time.perf_counter()


def _median(xs):
    import statistics

    return statistics.median(xs)


def _pct(xs, q):
    s = sorted(xs)
    k = max(0, min(len(s) - 1, int(round(q / 100.0 * len(s) + 0.5)) - 1))
    return s[k]


class Result:
    def __init__(self):
        self.metrics = {}
        self.extra = {}
        self.warnings = []

    def m(self, name, value):
        self.metrics[name] = float(value)

    def check(self, cond, msg):
        """Soft check: recorded as a warning, the run still counts."""
        if not cond:
            self.warnings.append(msg)


# ------------------------------------------------------------------ backends
class _PoolFuture:
    def __init__(self, async_result):
        self._r = async_result

    def result(self, timeout=None):
        return self._r.get(timeout)


class Backend:
    """Uniform façade over loky / concurrent.futures / multiprocessing.Pool."""

    def __init__(self, name, max_workers=MAX_WORKERS):
        self.name = name
        self.max_workers = max_workers
        self.extra = {}
        if name == "loky":
            import loky

            self.ex = loky.get_reusable_executor(max_workers=max_workers)
        elif name in ("cf_spawn", "cf_forkserver"):
            import multiprocessing as mp
            from concurrent.futures import ProcessPoolExecutor

            ctx = mp.get_context(name.split("_", 1)[1])
            self.ex = ProcessPoolExecutor(max_workers, mp_context=ctx)
        elif name == "mp_pool":
            import multiprocessing as mp

            method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
            self.extra["mp_pool_start_method"] = method
            self.ex = mp.get_context(method).Pool(max_workers)
        else:
            raise ValueError(f"unknown backend {name!r}")

    def submit(self, fn, *args):
        if self.name == "mp_pool":
            return _PoolFuture(self.ex.apply_async(fn, args))
        return self.ex.submit(fn, *args)

    def map(self, fn, items, chunksize):
        if self.name == "mp_pool":
            return self.ex.map(fn, items, chunksize)
        return list(self.ex.map(fn, items, chunksize=chunksize, timeout=RESULT_TIMEOUT))

    def warm(self):
        """Make sure every worker is started (stdlib spawns workers on demand)."""
        return warm(self, self.max_workers)

    def close(self):
        if self.name == "mp_pool":
            self.ex.close()
            self.ex.join()
        else:
            self.ex.shutdown(wait=True)


def warm(ex, n):
    lib = _importable()
    fs = [ex.submit(lib.sleep_pid, 0.05) for _ in range(2 * n)]
    pids = {f.result(timeout=RESULT_TIMEOUT) for f in fs}
    fs = [ex.submit(lib.inc, i) for i in range(50)]
    assert [f.result(timeout=RESULT_TIMEOUT) for f in fs] == list(range(1, 51))
    return pids


# ================================================================ workloads
def w_info(backend):
    """Versions and locations (the driver records them; no timing)."""
    r = Result()
    import platform

    r.extra["python"] = sys.version.split()[0]
    r.extra["executable"] = sys.executable
    r.extra["platform"] = platform.platform()
    r.extra["os_cpu_count"] = os.cpu_count()
    try:
        import loky

        r.extra["loky_version"] = getattr(loky, "__version__", None)
        r.extra["loky_file"] = loky.__file__
        r.extra["loky_cpu_count"] = loky.cpu_count()
    except Exception as e:  # stdlib-only interpreters are allowed
        r.extra["loky_error"] = repr(e)
    for mod in ("cloudpickle", "numpy", "psutil"):
        try:
            m = __import__(mod)
            r.extra[mod] = getattr(m, "__version__", "?")
        except Exception:
            r.extra[mod] = None
    return r


_COLD_CODE = r"""
import time
t0 = time.perf_counter()
import loky
t1 = time.perf_counter()
ex = loky.get_reusable_executor(max_workers=2)
r = ex.submit(abs, -3).result(timeout=60)
t2 = time.perf_counter()
assert r == 3, r
import json, sys
sys.stdout.write(json.dumps({"import_s": t1 - t0, "first_result_s": t2 - t0,
                             "executor_s": t2 - t1}) + "\n")
sys.stdout.flush()
"""


def w_cold_start(backend):
    """Fresh interpreter: `import loky` -> first result of get_reusable_executor(2).submit.

    Runs COLD_START_SAMPLES fresh interpreters (this one never imports loky)."""
    import json
    import subprocess
    import tempfile

    r = Result()
    imp, first, exe, wall = [], [], [], []
    # empty cwd: `python -c` puts cwd on sys.path, and a ./loky there would shadow
    # the interpreter's own loky
    cwd = tempfile.mkdtemp(prefix="bench_cold_")
    for _ in range(COLD_START_SAMPLES):
        t0 = _now()
        p = subprocess.run(
            [sys.executable, "-c", _COLD_CODE],
            capture_output=True,
            text=True,
            timeout=RESULT_TIMEOUT,
            cwd=cwd,
        )
        wall.append(_now() - t0)
        assert p.returncode == 0, (
            f"cold_start child failed rc={p.returncode}: {p.stderr[-2000:]}"
        )
        d = json.loads(p.stdout.strip().splitlines()[-1])
        imp.append(d["import_s"])
        first.append(d["first_result_s"])
        exe.append(d["executor_s"])
    r.m("import_ms", 1e3 * _median(imp))
    r.m("first_result_ms", 1e3 * _median(first))
    r.m("executor_to_result_ms", 1e3 * _median(exe))
    r.m("process_wall_ms", 1e3 * _median(wall))  # interpreter start + shutdown included
    r.extra["samples"] = {"import_s": imp, "first_result_s": first, "wall_s": wall}
    os.rmdir(cwd)
    return r


def w_reuse_latency(backend):
    """Warm pool: 3 blocks of 500 sequential submit(inc).result() round trips
    (median and p99 per block, median over blocks); plus (loky) the
    cost of a repeated get_reusable_executor(max_workers=2) returning the same one."""
    lib = _importable()
    r = Result()
    b = Backend(backend)
    b.warm()
    meds, p99s = [], []
    for _ in range(LATENCY_BLOCKS):
        lat = []
        for i in range(N_LATENCY):
            t0 = time.perf_counter_ns()
            v = b.submit(lib.inc, i).result(timeout=RESULT_TIMEOUT)
            lat.append(time.perf_counter_ns() - t0)
            assert v == i + 1, (i, v)
        meds.append(_median(lat) / 1e3)
        p99s.append(_pct(lat, 99) / 1e3)
    r.m("median_us", _median(meds))
    r.m("p99_us", _median(p99s))
    if backend == "loky":
        import loky

        gets = []
        for _ in range(N_GET):
            t0 = time.perf_counter_ns()
            ex = loky.get_reusable_executor(max_workers=MAX_WORKERS)
            gets.append(time.perf_counter_ns() - t0)
            assert ex is b.ex, "get_reusable_executor did not return the same executor"
        assert ex.submit(lib.inc, 1).result(timeout=RESULT_TIMEOUT) == 2
        r.m("get_same_executor_us", _median(gets) / 1e3)
    b.close()
    r.extra.update(b.extra)
    return r


def w_throughput_submit(backend):
    """20,000 submit(inc, i), then collect every result."""
    lib = _importable()
    r = Result()
    b = Backend(backend)
    b.warm()
    t0 = _now()
    fs = [b.submit(lib.inc, i) for i in range(N_SUBMIT)]
    t1 = _now()
    out = [f.result(timeout=RESULT_TIMEOUT) for f in fs]
    t2 = _now()
    assert out == list(range(1, N_SUBMIT + 1)), "wrong results"
    r.m("tasks_per_s", N_SUBMIT / (t2 - t0))
    r.m("submit_phase_s", t1 - t0)  # how long the 20,000 submit() calls block
    r.extra["total_s"] = t2 - t0
    b.close()
    r.extra.update(b.extra)
    return r


def w_throughput_map(backend):
    """map(inc) over 200,000 items with chunksize=1000 (MAP_REPEATS maps, median) and over
    10,000 items with chunksize=1 (one map)."""
    lib = _importable()
    r = Result()
    b = Backend(backend)
    b.warm()
    for n, cs, reps in ((N_MAP_BIG_CHUNK, 1000, MAP_REPEATS), (N_MAP_CHUNK1, 1, 1)):
        ts = []
        for _ in range(reps):
            t0 = _now()
            out = b.map(lib.inc, range(n), cs)
            ts.append(_now() - t0)
            assert out == list(range(1, n + 1)), f"wrong results (chunksize={cs})"
        r.m(f"chunk{cs}_items_per_s", n / _median(ts))
    b.close()
    r.extra.update(b.extra)
    return r


def w_big_payload(backend):
    """Round-trip a 64 MiB float64 ndarray and a 64 MiB bytes through identity()
    (PAYLOAD_REPEATS times each, medians).
    MBps = payload MiB / round-trip seconds (the data crosses twice)."""
    import numpy as np

    lib = _importable()
    r = Result()
    b = Backend(backend)
    b.warm()
    arr = np.random.default_rng(0).random(PAYLOAD_MB * 2**20 // 8)
    raw = arr.tobytes()
    assert len(raw) == PAYLOAD_MB * 2**20
    b.submit(lib.identity, arr[:1024]).result(timeout=RESULT_TIMEOUT)  # small warm-up
    for label, payload, same in (
        ("ndarray", arr, np.array_equal),
        ("bytes", raw, lambda a, c: a == c),
    ):
        ts = []
        for _ in range(PAYLOAD_REPEATS):
            t0 = _now()
            out = b.submit(lib.identity, payload).result(timeout=RESULT_TIMEOUT)
            ts.append(_now() - t0)
            assert type(out) is type(payload) and same(out, payload), (
                f"{label} corrupted"
            )
            del out
        r.m(f"{label}_MBps", PAYLOAD_MB / _median(ts))
        r.extra[f"{label}_roundtrip_s"] = ts
    b.close()
    return r


def w_cloudpickle_wrapped(backend):
    """map (WRAPPED_REPEATS times, median) over 20,000 items, chunksize 100, of: a lambda wrapped with
    wrap_non_picklable_objects, the same lambda unwrapped, a closure, and a
    function defined in __main__ (this file run as a script)."""
    import loky
    from loky import wrap_non_picklable_objects

    r = Result()
    b = Backend(backend)
    b.warm()
    k = 7

    def closure(x):
        return x + k

    main_mod = sys.modules["__main__"]
    fmain = getattr(main_mod, "main_fn", None)
    assert fmain is not None and fmain.__module__ == "__main__", (
        "workloads.py must be run as a script for the __main__ case"
    )
    cases = [
        (
            "wrapped_lambda",
            wrap_non_picklable_objects(lambda x: 2 * x + 1),
            lambda x: 2 * x + 1,
        ),
        ("raw_lambda", lambda x: 2 * x + 1, lambda x: 2 * x + 1),
        ("closure", closure, lambda x: x + 7),
        ("main_func", fmain, lambda x: x * 3 + 3),
    ]
    expected = {label: [ref(x) for x in range(N_WRAPPED)] for label, _, ref in cases}
    ts = {label: [] for label, _, _ in cases}
    for _ in range(WRAPPED_REPEATS):  # cases interleaved: no order effect
        for label, fn, _ in cases:
            t0 = _now()
            out = b.map(fn, range(N_WRAPPED), 100)
            ts[label].append(_now() - t0)
            assert out == expected[label], f"{label}: wrong results"
    for label, _, _ in cases:
        r.m(f"{label}_items_per_s", N_WRAPPED / _median(ts[label]))
    r.extra["loky_version"] = getattr(loky, "__version__", None)
    b.close()
    return r


def _per_call_us(fn, target_s=0.04, repeats=5):
    n = 1
    while True:  # calibrate: one repeat lasts >= target_s
        t0 = _now()
        for _ in range(n):
            fn()
        dt = _now() - t0
        if dt >= target_s or n >= 1 << 20:
            break
        n *= 2 if dt > target_s / 8 else 8
    ts = [dt / n]
    for _ in range(repeats - 1):
        t0 = _now()
        for _ in range(n):
            fn()
        ts.append((_now() - t0) / n)
    return 1e6 * _median(ts)


def w_serialization(backend):
    """µs per dumps() call: loky.backend.reduction.dumps vs pickle.dumps (highest
    protocol) vs cloudpickle.dumps, on a 10k dict, 1000 dataclass instances, a 10 MiB
    ndarray and a lambda (pickle cannot do the lambda: no metric)."""
    import pickle

    import numpy as np

    from loky.backend import reduction

    lib = _importable()
    Point = lib.Point
    r = Result()
    picklers = {
        "loky": reduction.dumps,
        "pickle": lambda o: pickle.dumps(o, protocol=pickle.HIGHEST_PROTOCOL),
        # the reference of issue 3: a plain Pickler on a BytesIO (no final copy)
        "pickler_dump": _pickler_dump,
    }
    try:
        import cloudpickle

        picklers["cloudpickle"] = cloudpickle.dumps
        r.extra["cloudpickle"] = cloudpickle.__version__
    except ImportError:
        r.warnings.append("cloudpickle not importable: no cloudpickle metrics")
    objs = {
        "dict10k": ({i: str(i) for i in range(10_000)}, lambda a, c: a == c),
        "dataclass1k": (
            [Point(i, i * 0.5, f"p{i}") for i in range(1000)],
            lambda a, c: a == c,
        ),
        "ndarray10MB": (
            np.arange(10 * 2**20 // 8, dtype=np.float64),
            lambda a, c: type(c) is np.ndarray and np.array_equal(a, c),
        ),
        "lambda": (
            lambda x: 2 * x + 1,
            lambda a, c: [c(i) for i in range(5)] == [1, 3, 5, 7, 9],
        ),
    }
    sizes = {}
    for oname, (obj, same) in objs.items():
        for pname, dumps in picklers.items():
            try:
                data = dumps(obj)
            except Exception as e:
                if pname in ("pickle", "pickler_dump") and oname == "lambda":
                    continue  # expected: plain pickle cannot pickle a lambda
                raise AssertionError(f"{pname}.dumps({oname}) failed: {e!r}")
            assert same(obj, pickle.loads(data)), (
                f"{pname}.dumps({oname}) does not round-trip"
            )
            sizes[f"{oname}.{pname}"] = (
                len(bytes(data)) if not isinstance(data, bytes) else len(data)
            )
            r.m(f"{oname}.{pname}_us", _per_call_us(lambda: dumps(obj)))
    r.extra["sizes_bytes"] = sizes
    r.extra["loky_dumps_returns"] = type(reduction.dumps(1)).__name__
    r.extra["loky_pickler"] = getattr(
        reduction, "get_loky_pickler_name", lambda: None
    )()
    return r


def _pickler_dump(obj):
    import io
    import pickle

    buf = io.BytesIO()
    pickle.Pickler(buf, protocol=pickle.HIGHEST_PROTOCOL).dump(obj)
    return buf.getbuffer()


def w_crash_detect(backend):
    """A task calls os._exit(1) on a warm pool: time until its future raises
    (CRASH_REPEATS fresh pools, medians). Backend-generic, so it compares with
    concurrent.futures (multiprocessing.Pool never fails such a task)."""
    lib = _importable()
    r = Result()
    detect = []
    for _ in range(CRASH_REPEATS):
        # loky: the broken reusable executor is replaced by the next Backend()
        b = Backend(backend, max_workers=MAX_WORKERS)
        b.warm()
        t0 = _now()
        f = b.submit(lib.crash)
        try:
            f.result(timeout=RESULT_TIMEOUT)
        except Exception:
            detect.append(_now() - t0)
        else:
            raise AssertionError("crashing task returned a result")
        b.ex.shutdown(wait=True)
    r.m("detect_ms", 1e3 * _median(detect))
    return r


def w_memory_flat(backend):
    """Parent RSS after 20,000 and after 200,000 tiny tasks (submitted in batches of
    10,000): the growth must stay small (the executor keeps no per-task state)."""
    import psutil

    lib = _importable()
    r = Result()
    b = Backend(backend)
    b.warm()
    proc = psutil.Process()
    rss = {}
    for done in range(10_000, 200_001, 10_000):
        fs = [b.submit(lib.inc, i) for i in range(10_000)]
        for f in fs:
            f.result(timeout=RESULT_TIMEOUT)
        del fs
        if done in (20_000, 200_000):
            import gc

            gc.collect()
            rss[done] = proc.memory_info().rss
    b.close()
    r.m("rss_after_20k_MiB", rss[20_000] / 2**20)  # lower is better
    r.m("rss_growth_20k_to_200k_MiB", (rss[200_000] - rss[20_000]) / 2**20)
    return r


_IMPORT_CODE = r"""
import sys, time, json
t0 = time.perf_counter()
if sys.argv[1] == "loky":
    import loky
else:
    import concurrent.futures, multiprocessing, cloudpickle
    import concurrent.futures.process, multiprocessing.connection
sys.stdout.write(json.dumps(time.perf_counter() - t0) + "\n")
"""


def w_import_cost(backend):
    """`import loky` vs importing concurrent.futures + multiprocessing + cloudpickle,
    each in fresh interpreters (medians of 7)."""
    import json
    import subprocess
    import tempfile

    r = Result()
    cwd = tempfile.mkdtemp(prefix="bench_import_")
    times = {"loky": [], "baseline": []}
    for _ in range(7):
        for which in times:
            p = subprocess.run(
                [sys.executable, "-c", _IMPORT_CODE, which],
                capture_output=True,
                text=True,
                timeout=RESULT_TIMEOUT,
                cwd=cwd,
                check=True,
            )
            times[which].append(json.loads(p.stdout.strip().splitlines()[-1]))
    os.rmdir(cwd)
    r.m("import_loky_ms", 1e3 * _median(times["loky"]))
    r.m("import_cf_mp_cloudpickle_ms", 1e3 * _median(times["baseline"]))
    r.m("import_ratio_x", _median(times["loky"]) / _median(times["baseline"]))
    return r


def w_crash_recovery(backend):
    """A task calls os._exit(1): time until its future raises, then time until
    get_reusable_executor() gives a working executor again (CRASH_REPEATS times, medians)."""
    import loky

    lib = _importable()
    r = Result()
    ex = loky.get_reusable_executor(max_workers=MAX_WORKERS)
    warm(ex, MAX_WORKERS)
    detect, get, recover, exc_names = [], [], [], set()
    for _ in range(CRASH_REPEATS):
        t0 = _now()
        f = ex.submit(lib.crash)
        try:
            f.result(timeout=RESULT_TIMEOUT)
        except Exception as e:
            t1 = _now()
            exc = e
        else:
            raise AssertionError("crashing task returned a result")
        assert isinstance(exc, loky.BrokenProcessPool), f"unexpected exception {exc!r}"
        exc_names.add(type(exc).__name__)
        t2 = _now()
        ex2 = loky.get_reusable_executor(max_workers=MAX_WORKERS)
        t3 = _now()
        v = ex2.submit(lib.inc, 41).result(timeout=RESULT_TIMEOUT)
        t4 = _now()
        assert v == 42
        assert ex2 is not ex, "broken executor was returned again"
        detect.append(t1 - t0)
        get.append(t3 - t2)
        recover.append(t4 - t2)
        ex = ex2
        warm(ex, MAX_WORKERS)  # all workers up before the next crash
    r.m("detect_ms", 1e3 * _median(detect))
    r.m("get_new_executor_ms", 1e3 * _median(get))
    r.m("recover_to_result_ms", 1e3 * _median(recover))
    r.extra["exceptions"] = sorted(exc_names)
    r.check(
        exc_names == {"TerminatedWorkerError"},
        f"expected TerminatedWorkerError, got {sorted(exc_names)}",
    )
    ex.shutdown(wait=True)
    return r


def w_resize(backend):
    """get_reusable_executor(max_workers=2), then 1, then 2 again: time of the call
    and time to the first result after it (shrink/grow repeated RESIZE_REPEATS times, medians)."""
    import loky

    lib = _importable()
    r = Result()

    def step(n):
        t0 = _now()
        ex = loky.get_reusable_executor(max_workers=n)
        t1 = _now()
        assert ex.submit(lib.inc, n).result(timeout=RESULT_TIMEOUT) == n + 1
        return ex, t1 - t0, _now() - t0

    ex0, call, ready = step(2)
    r.m("start2_call_ms", 1e3 * call)
    r.m("start2_ready_ms", 1e3 * ready)
    warm(ex0, 2)
    acc = {k: [] for k in ("shrink_call", "shrink_ready", "grow_call", "grow_ready")}
    for _ in range(RESIZE_REPEATS):
        ex1, call, ready = step(1)
        acc["shrink_call"].append(call)
        acc["shrink_ready"].append(ready)
        pids1 = {
            f.result(timeout=RESULT_TIMEOUT)
            for f in [ex1.submit(lib.sleep_pid, 0.01) for _ in range(4)]
        }
        assert len(pids1) == 1, f"max_workers=1 but tasks ran in {len(pids1)} processes"
        ex2, call, ready = step(2)
        acc["grow_call"].append(call)
        acc["grow_ready"].append(ready)
        pids2 = {
            f.result(timeout=RESULT_TIMEOUT)
            for f in [ex2.submit(lib.sleep_pid, 0.3) for _ in range(2)]
        }
        r.check(
            len(pids2) == 2,
            f"after growing to 2, two 0.3 s tasks ran in {len(pids2)} process(es)",
        )
        r.check(
            ex1 is ex0 and ex2 is ex0, "resize returned a different executor object"
        )
    for k, v in acc.items():
        r.m(f"{k}_ms", 1e3 * _median(v))
    ex0.shutdown(wait=True)
    return r


# --------------------------------------------------------------- registry
LOKY_WORKLOADS = {
    "cold_start": w_cold_start,
    "reuse_latency": w_reuse_latency,
    "throughput_submit": w_throughput_submit,
    "throughput_map": w_throughput_map,
    "big_payload": w_big_payload,
    "cloudpickle_wrapped": w_cloudpickle_wrapped,
    "serialization": w_serialization,
    "crash_recovery": w_crash_recovery,
    "resize": w_resize,
    "crash_detect": w_crash_detect,
    "memory_flat": w_memory_flat,
    "import_cost": w_import_cost,
}
STDLIB_BACKENDS = ("cf_spawn", "cf_forkserver", "mp_pool")
STDLIB_SHARED = (
    "reuse_latency",
    "throughput_submit",
    "throughput_map",
    "big_payload",
    "crash_detect",
)
# pairs that make no sense: a multiprocessing.Pool never fails a task whose worker died
STDLIB_SKIP = {"crash_detect@mp_pool"}
# stdlib baselines are named WORKLOAD@BACKEND, e.g. throughput_submit@cf_spawn
WORKLOADS = dict(LOKY_WORKLOADS)
for _w in STDLIB_SHARED:
    for _b in STDLIB_BACKENDS:
        if f"{_w}@{_b}" not in STDLIB_SKIP:
            WORKLOADS[f"{_w}@{_b}"] = LOKY_WORKLOADS[_w]
WORKLOADS["info"] = w_info


def run(name):
    if name not in WORKLOADS:
        raise SystemExit(f"unknown workload {name!r}; try --list")
    backend = name.split("@", 1)[1] if "@" in name else "loky"
    out = {"workload": name, "backend": backend, "python": sys.version.split()[0]}
    t0 = _now()
    try:
        res = WORKLOADS[name](backend)
        out.update(ok=True, metrics=res.metrics, extra=res.extra, warnings=res.warnings)
    except BaseException as e:  # report, don't hide: the driver shows the error
        import traceback

        out.update(
            ok=False,
            error=f"{type(e).__name__}: {e}",
            traceback=traceback.format_exc()[-3000:],
        )
    out["wall_s"] = _now() - t0
    return out


def main(argv):
    if "--list" in argv:
        print("\n".join(WORKLOADS))
        return 0
    args = [a for a in argv if not a.startswith("--")]
    if len(args) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    out = run(args[0])
    import json

    if "--json" in argv:
        sys.stdout.write(json.dumps(out) + "\n")
    else:
        print(json.dumps(out, indent=2))
    sys.stdout.flush()
    sys.stderr.flush()
    if not out["ok"]:
        # a broken pool can hang interpreter shutdown (atexit joins): kill our own
        # pool workers and leave now (the driver also kills what is left of the
        # process group it started)
        mp = sys.modules.get("multiprocessing")
        try:
            for child in mp.active_children() if mp else ():
                child.kill()
        except Exception:
            pass
        os._exit(1)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
