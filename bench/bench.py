#!/usr/bin/env python3
"""Side-by-side benchmark driver for loky implementations (and stdlib baselines).

    bench.py --impl NAME=PYTHON [--impl NAME2=PYTHON2 ...] [--rounds 5]
             [--only W1,W2] [--no-stdlib] [--stdlib-python PYTHON]
             [--out results.json] [--md report.md]

Each workload runs in a fresh process: `PYTHON workloads.py WORKLOAD --json`, so
every implementation is measured with the `loky` its own interpreter imports.
Rounds alternate implementations (the order is rotated each round, and all
implementations of one workload run back to back) and the tables show medians
over rounds, their spread (±half of max-min, % of the median) and ratios versus the
first --impl.  Stdlib baselines (WORKLOAD@cf_spawn, @cf_forkserver, @mp_pool) run
once per round under --stdlib-python (default: the first impl's interpreter).

--impl may be replaced by the environment: BENCH_IMPLS="name=python,name2=python2".
PYTHON may carry arguments (it is split like a shell word list).
--only takes workload names, WORKLOAD@BACKEND names, or the groups `loky`, `stdlib`.
"""

import argparse
import datetime
import json
import os
import platform
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
WORKLOADS_PY = os.path.join(HERE, "workloads.py")
sys.path.insert(0, HERE)
import workloads as W  # noqa: E402  (cheap: no heavy top-level imports)


# ------------------------------------------------------------------ helpers
def direction(metric):
    """+1: higher is better, -1: lower is better (from the unit suffix)."""
    return 1 if metric.endswith(("_per_s", "_MBps")) else -1


def fmt(v):
    if v is None:
        return "–"
    a = abs(v)
    if a >= 1e6:
        return f"{v / 1e6:.2f}M"
    if a >= 1e4:
        return f"{v / 1e3:.1f}k"
    if a >= 100:
        return f"{v:.0f}"
    if a >= 10:
        return f"{v:.1f}"
    if a >= 1:
        return f"{v:.2f}"
    return f"{v:.3g}"


def machine_info():
    info = {
        "nproc": os.cpu_count(),
        "platform": platform.platform(),
        "python_driver": platform.python_version(),
    }
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        with open("/proc/meminfo") as f:
            info["mem_total_gib"] = round(int(f.readline().split()[1]) / 2**20, 1)
    except (OSError, ValueError, IndexError):
        pass
    return info


def loadavg():
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def _group_alive(pgid):
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def _kill_group(pgid):
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def run_one(python_cmd, workload, timeout, cwd, drain_s=10.0):
    """Run one workload in a fresh process (its own session); return its JSON dict
    (ok=False on failure).  Output goes to temp files, not pipes, so that workers
    left behind by a failed run cannot keep us waiting; after the run we wait for
    the rest of its process group (workers, resource tracker) to go away, so the
    next measurement starts on a quiet machine, and kill it after drain_s."""
    cmd = list(python_cmd) + [WORKLOADS_PY, workload, "--json"]
    t0 = time.perf_counter()
    with tempfile.TemporaryFile("w+") as fo, tempfile.TemporaryFile("w+") as fe:
        try:
            p = subprocess.Popen(
                cmd,
                stdout=fo,
                stderr=fe,
                stdin=subprocess.DEVNULL,
                text=True,
                cwd=cwd,
                start_new_session=True,
            )
        except OSError as e:
            return {
                "ok": False,
                "error": f"cannot start {cmd[0]!r}: {e}",
                "elapsed_s": 0.0,
            }
        try:
            rc = p.wait(timeout=timeout)
            timed_out = False
        except subprocess.TimeoutExpired:
            _kill_group(p.pid)  # our child's own session: it and its workers
            rc = p.wait()
            timed_out = True
        elapsed = time.perf_counter() - t0
        deadline = time.monotonic() + drain_s
        while _group_alive(p.pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        leftovers = _group_alive(p.pid)
        if leftovers:
            _kill_group(p.pid)
        fo.seek(0)
        fe.seek(0)
        out, err = fo.read(), fe.read()
    res = None
    for line in reversed(out.splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                res = json.loads(line)
                break
            except ValueError:
                continue
    if timed_out:
        res = {"ok": False, "error": f"timeout after {timeout:g}s", "timed_out": True}
    elif res is None:
        res = {"ok": False, "error": f"no JSON line (rc={rc})"}
    elif rc != 0 and res.get("ok"):
        res.update(ok=False, error=f"exit status {rc}")
    if not res.get("ok"):
        res["stderr_tail"] = err[-2000:]
    if leftovers:
        res["leftover_processes_killed"] = True
        if res.get("ok"):
            res.setdefault("warnings", []).append(
                f"processes still alive {drain_s:g}s after exit were killed"
            )
    res["elapsed_s"] = elapsed
    return res


def parse_impls(specs):
    impls = []
    for spec in specs:
        name, sep, py = spec.partition("=")
        if not sep or not name or not py.strip():
            raise SystemExit(f"--impl wants NAME=PYTHON, got {spec!r}")
        if any(name == n for n, _ in impls):
            raise SystemExit(f"duplicate impl name {name!r}")
        impls.append((name, shlex.split(py)))
    return impls


def select(only, no_stdlib):
    loky_names = list(W.LOKY_WORKLOADS)
    stdlib_names = [
        f"{w}@{b}"
        for w in W.STDLIB_SHARED
        for b in W.STDLIB_BACKENDS
        if f"{w}@{b}" not in W.STDLIB_SKIP
    ]
    if not only:
        chosen = loky_names + ([] if no_stdlib else stdlib_names)
    else:
        chosen = []
        for item in only.split(","):
            item = item.strip()
            if not item:
                continue
            if item == "loky":
                chosen += loky_names
            elif item == "stdlib":
                chosen += stdlib_names
            elif item in loky_names or item in stdlib_names:
                chosen.append(item)
            else:
                raise SystemExit(
                    f"unknown workload {item!r}; known: "
                    + ", ".join(loky_names + stdlib_names + ["loky", "stdlib"])
                )
        if no_stdlib:
            chosen = [c for c in chosen if "@" not in c]
    seen = set()
    return [c for c in chosen if not (c in seen or seen.add(c))]


def build_plan(chosen, impls, stdlib_py):
    """Groups in workload order; each group = [(label, python_cmd, workload_name)]."""
    groups = []
    for base in W.LOKY_WORKLOADS:
        entries = []
        if base in chosen:
            entries += [(name, py, base) for name, py in impls]
        for b in W.STDLIB_BACKENDS:
            if f"{base}@{b}" in chosen:
                entries.append((b, stdlib_py, f"{base}@{b}"))
        if entries:
            groups.append((base, entries))
    return groups


# ------------------------------------------------------------------ tables
def summarize(runs):
    """{group: {label: {metric: {median, min, max, n}}}} from successful runs."""
    acc = {}
    for r in runs:
        if r["round"] < 0 or not r.get("ok"):
            continue
        d = acc.setdefault(r["group"], {}).setdefault(r["label"], {})
        for m, v in r.get("metrics", {}).items():
            d.setdefault(m, []).append(v)
    out = {}
    for g, labels in acc.items():
        for label, metrics in labels.items():
            for m, vs in metrics.items():
                out.setdefault(g, {}).setdefault(label, {})[m] = {
                    "median": statistics.median(vs),
                    "min": min(vs),
                    "max": max(vs),
                    "n": len(vs),
                    "samples": vs,
                }
    return out


EXPECTED_N = [0]  # rounds; a cell with fewer successful samples says so


def cell(stat, show_spread=True):
    if not stat:
        return "ERR"
    s = fmt(stat["median"])
    if show_spread and stat["n"] > 1 and stat["median"]:
        s += f" ±{50 * (stat['max'] - stat['min']) / abs(stat['median']):.0f}%"
    if stat["n"] < EXPECTED_N[0]:
        s += f" (n={stat['n']})"
    return s


def metric_order(group_stats, labels):
    ms = []
    for label in labels:
        for m in group_stats.get(label, {}):
            if m not in ms:
                ms.append(m)
    return ms


def ratio(stat, base):
    if not stat or not base or not base["median"]:
        return None
    return stat["median"] / base["median"]


def loky_table(summary, groups, impl_names):
    base = impl_names[0]
    head = ["workload", "metric", "", *impl_names] + [
        f"{n}/{base}" for n in impl_names[1:]
    ]
    rows = [head, ["---"] * len(head)]
    for g, entries in groups:
        if not any(label in impl_names for label, _, _ in entries):
            continue
        gs = summary.get(g, {})
        metrics = metric_order(gs, impl_names) or ["(no result)"]
        for m in metrics:
            row = [g, m, "↑" if direction(m) > 0 else "↓"]
            row += [cell(gs.get(n, {}).get(m)) for n in impl_names]
            for n in impl_names[1:]:
                rt = ratio(gs.get(n, {}).get(m), gs.get(base, {}).get(m))
                row.append("–" if rt is None else f"{rt:.2f}")
            rows.append(row)
    return rows


def stdlib_table(summary, groups, impl_names):
    base = impl_names[0]
    std_groups = [(g, e) for g, e in groups if any("@" in wl for _, _, wl in e)]
    if not std_groups:
        return []
    present = {label for _, e in std_groups for label, _, _ in e}
    labels = [n for n in impl_names if n in present] + [
        b for b in W.STDLIB_BACKENDS if b in present
    ]
    head = ["workload", "metric", "", *labels]
    rows = [head, ["---"] * len(head)]
    for g, entries in std_groups:
        ran = {label for label, _, _ in entries}
        gs = summary.get(g, {})
        for m in metric_order(gs, labels) or ["(no result)"]:
            row = [g, m, "↑" if direction(m) > 0 else "↓"]
            for label in labels:
                st = gs.get(label, {}).get(m)
                if st is None:
                    row.append("–" if label in gs or label not in ran else "ERR")
                    continue
                rt = ratio(st, gs.get(base, {}).get(m)) if label != base else None
                row.append(cell(st) + ("" if rt is None else f" (×{rt:.2f})"))
            rows.append(row)
    return rows


def render(rows):
    if not rows:
        return ""
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for r in rows:
        if r[0] == "---":
            lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
        else:
            lines.append(
                "| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths)) + " |"
            )
    return "\n".join(lines)


# ------------------------------------------------------------------ main
def main(argv=None):
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    ap.add_argument(
        "--impl",
        action="append",
        default=[],
        metavar="NAME=PYTHON",
        help="implementation to measure (repeatable; the first is the ratio base)",
    )
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument(
        "--warmup", type=int, default=0, help="untimed rounds first (default 0)"
    )
    ap.add_argument("--only", default="", help="comma-separated workloads / groups")
    ap.add_argument(
        "--no-stdlib", action="store_true", help="skip the stdlib baselines"
    )
    ap.add_argument(
        "--stdlib-python",
        default=os.environ.get("BENCH_STDLIB_PYTHON"),
        help="interpreter for the stdlib baselines (default: first impl's)",
    )
    ap.add_argument(
        "--timeout",
        type=float,
        default=180,
        help="seconds per workload run; a run that times out is not retried "
        "in later rounds (default 180)",
    )
    ap.add_argument(
        "--out", help="JSON results file (default: results/bench-<time>.json here)"
    )
    ap.add_argument("--md", help="also write a markdown report to this file")
    ap.add_argument("--list", action="store_true", help="list workloads and exit")
    args = ap.parse_args(argv)

    if args.list:
        print("\n".join(select("", False)))
        return 0
    specs = args.impl or [
        s for s in os.environ.get("BENCH_IMPLS", "").split(",") if s.strip()
    ]
    if not specs:
        ap.error("give at least one --impl NAME=PYTHON (or BENCH_IMPLS)")
    impls = parse_impls(specs)
    impl_names = [n for n, _ in impls]
    stdlib_py = shlex.split(args.stdlib_python) if args.stdlib_python else impls[0][1]
    chosen = select(args.only, args.no_stdlib)
    groups = build_plan(chosen, impls, stdlib_py)
    if not groups:
        ap.error("nothing selected")

    started = datetime.datetime.now().astimezone()
    t_start = time.perf_counter()
    cwd = tempfile.mkdtemp(
        prefix="bench_cwd_"
    )  # neutral cwd: no ./loky can shadow anything
    result = {
        "date": started.isoformat(timespec="seconds"),
        "command": shlex.join([os.path.basename(sys.argv[0])] + sys.argv[1:]),
        "machine": machine_info(),
        "loadavg_start": loadavg(),
        "rounds": args.rounds,
        "warmup": args.warmup,
        "impls": {},
        "stdlib_python": stdlib_py,
        "workloads": chosen,
        "runs": [],
    }

    # who is who: each interpreter must import its own loky
    for name, py in impls + (
        [("_stdlib", stdlib_py)] if any("@" in c for c in chosen) else []
    ):
        info = run_one(py, "info", 120, cwd)
        result["impls"][name] = {
            "python": py,
            "info": info.get("extra"),
            "ok": info.get("ok"),
            "error": info.get("error"),
        }
        ex = info.get("extra") or {}
        print(
            f"# {name}: {' '.join(py)} -> Python {ex.get('python')}, "
            f"loky {ex.get('loky_version')} from {ex.get('loky_file')}",
            file=sys.stderr,
        )
        if not info.get("ok"):
            print(f"#   info failed: {info.get('error')}", file=sys.stderr)
    files = [
        (n, (result["impls"][n]["info"] or {}).get("loky_file")) for n in impl_names
    ]
    for i, (n1, f1) in enumerate(files):
        for n2, f2 in files[i + 1 :]:
            if f1 and f1 == f2:
                print(
                    f"# WARNING: {n1} and {n2} import the same loky ({f1})",
                    file=sys.stderr,
                )

    total_runs = (args.rounds + args.warmup) * sum(len(e) for _, e in groups)
    done = 0
    timed_out = set()
    for rnd in range(-args.warmup, args.rounds):
        for g, entries in groups:
            k = rnd % len(entries)
            for label, py, wl in (
                entries[k:] + entries[:k]
            ):  # rotate: alternate who goes first
                if (label, wl) in timed_out:
                    done += 1
                    continue
                res = run_one(py, wl, args.timeout, cwd)
                if res.get("timed_out"):
                    timed_out.add((label, wl))
                done += 1
                res.update(round=rnd, group=g, label=label)
                res.setdefault("workload", wl)
                result["runs"].append(res)
                tag = "warmup" if rnd < 0 else f"round {rnd + 1}/{args.rounds}"
                status = "ok" if res.get("ok") else f"FAILED: {res.get('error')}"
                if res.get("warnings"):
                    status += f" (warnings: {'; '.join(res['warnings'])})"
                print(
                    f"[{done}/{total_runs}] {tag} {wl:<32} {label:<14} "
                    f"{res['elapsed_s']:6.1f}s {status}",
                    file=sys.stderr,
                    flush=True,
                )
    try:
        os.rmdir(cwd)
    except OSError:
        pass

    EXPECTED_N[0] = args.rounds
    summary = summarize(result["runs"])
    for g, labels in summary.items():
        base = labels.get(impl_names[0], {})
        for label, metrics in labels.items():
            for m, st in metrics.items():
                st["ratio_vs_first"] = ratio(st, base.get(m))
    result["summary"] = summary
    result["loadavg_end"] = loadavg()
    result["elapsed_s"] = time.perf_counter() - t_start
    errors = [
        f"{r['workload']} [{r['label']}] round {r['round'] + 1}: {r.get('error')}"
        for r in result["runs"]
        if not r.get("ok")
    ]
    warns = sorted(
        {
            f"{r['workload']} [{r['label']}]: {w}"
            for r in result["runs"]
            for w in r.get("warnings") or []
        }
    )
    result["errors"], result["warnings"] = errors, warns

    t1 = render(loky_table(summary, groups, impl_names))
    t2 = render(stdlib_table(summary, groups, impl_names))
    legend = (
        f"Medians over {args.rounds} round(s); ±x% = half of (max-min) over rounds, "
        f"relative to the median. ↑ higher is better, ↓ lower is better. "
        f"Ratios = value / value of `{impl_names[0]}` (for ↓ metrics > 1 means slower, "
        f"for ↑ metrics < 1 means slower)."
    )
    parts = []
    if t1:
        parts += ["## loky workloads", "", t1, ""]
    if t2:
        parts += [
            f"## loky vs stdlib (stdlib under `{' '.join(stdlib_py)}`; "
            f"mp_pool uses the fork start method where available)",
            "",
            t2,
            "",
        ]
    parts += [legend, ""]
    if errors:
        parts += ["Errors:", *[f"- {e}" for e in errors], ""]
    if warns:
        parts += ["Warnings:", *[f"- {w}" for w in warns], ""]
    text = "\n".join(parts)
    print(text)

    out = args.out or os.path.join(
        HERE, "results", f"bench-{started.strftime('%Y%m%d-%H%M%S')}.json"
    )
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as f:
        json.dump(result, f, indent=1)
    print(f"# JSON: {out}  ({result['elapsed_s']:.0f}s total)", file=sys.stderr)

    if args.md:
        m = result["machine"]
        hdr = [
            "# loky benchmark",
            "",
            f"- date: {started.strftime('%Y-%m-%d %H:%M %Z')}",
            f"- machine: {m.get('nproc')} cores ({m.get('cpu', '?')}), "
            f"{m.get('mem_total_gib', '?')} GiB RAM, {m.get('platform')}",
            f"- load average at start / end: {result['loadavg_start']} / {result['loadavg_end']}",
            f"- command: `{result['command']}`",
            f"- total time: {result['elapsed_s']:.0f} s",
        ]
        for name, d in result["impls"].items():
            i = d.get("info") or {}
            if name == "_stdlib":
                hdr.append(
                    f"- stdlib baselines: Python {i.get('python')} "
                    f"(`{' '.join(d['python'])}`)"
                )
                continue
            hdr.append(
                f"- `{name}`: Python {i.get('python')}, loky {i.get('loky_version')}, "
                f"cloudpickle {i.get('cloudpickle')}, numpy {i.get('numpy')}, "
                f"psutil {i.get('psutil')}"
            )
        with open(args.md, "w") as f:
            f.write("\n".join(hdr) + "\n\n" + text)
        print(f"# markdown: {args.md}", file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
