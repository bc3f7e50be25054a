"""The check mode from the environment, in real scripts: ``LOKY_PICKLE_CHECK`` picks
the mode and ``LOKY_PICKLER`` the pickler, and the task functions live in the
script's ``__main__`` (what a worker's ``__main__`` does not have)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from loky_check.runtime import _add_note, _append_note_py310

SCRIPT = textwrap.dedent(
    """
    import json, warnings
    import loky
    from loky_check import LokyPicklingWarning, PicklingCheckError

    def double(x):
        return 2 * x

    def outcome(futures):
        try:
            if isinstance(futures, list):
                return [f.result(timeout=60) for f in futures]
            return list(futures)
        except Exception as exc:
            return {"error": type(exc).__name__,
                    "notes": "\\n".join(getattr(exc, "__notes__", []))}

    if __name__ == "__main__":
        out = {}
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            executor = loky.get_reusable_executor(1)
            out["mode"] = executor._pickle_check
            for name, submit in [
                ("submit", lambda: [executor.submit(double, n) for n in range(3)]),
                ("map", lambda: executor.map(double, range(3))),
            ]:
                try:
                    out[name] = outcome(submit())
                except PicklingCheckError as exc:
                    out[name] = {"raised": [f.category for f in exc.report.findings]}
            executor.shutdown(wait=True)
        out["warnings"] = [
            {"line": w.lineno, "file": w.filename,
             "findings": [(f.severity, f.argument, f.category) for f in w.message.report.findings]}
            for w in caught if issubclass(w.category, LokyPicklingWarning)
        ]
        print(json.dumps(out))
    """
)


def run_script(tmp_path, pickler: str, mode: str) -> dict:
    script = tmp_path / "job.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "LOKY_PICKLE_CHECK": mode}
    env.pop("LOKY_PICKLER", None)
    if pickler == "pickle":
        env["LOKY_PICKLER"] = "pickle"
    proc = subprocess.run(
        [sys.executable, str(script)],
        env=env,
        capture_output=True,
        text=True,
        timeout=100,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["script"] = str(script)
    return out


def sites(out):
    return sorted(w["line"] for w in out["warnings"])


def test_pickle_pickler_warn(tmp_path):
    out = run_script(tmp_path, "pickle", "warn")
    assert out["mode"] == "warn"
    # one warning per call site (the submit loop, the map), at the user's line
    assert len(out["warnings"]) == 2 and len(set(sites(out))) == 2
    assert all(w["file"] == out["script"] for w in out["warnings"])
    assert out["warnings"][0]["findings"] == [["error", "fn", "main_module"]]
    # the call proceeds and fails to load in the worker: diagnosed there
    assert out["submit"]["error"] == "AttributeError"
    notes = out["submit"]["notes"]
    assert "cannot be loaded in the worker" in notes
    assert "__main__.double  [main_module]" in notes and "fix:" in notes
    notes = out["map"]["notes"]
    assert "loky-check  __main__:double" in notes and "error    fn   fn" in notes


def test_pickle_pickler_error(tmp_path):
    out = run_script(tmp_path, "pickle", "error")
    assert out["submit"] == {"raised": ["main_module"]}
    assert out["map"] == {"raised": ["main_module"]}
    assert out["warnings"] == []


def test_pickle_pickler_wrap(tmp_path):
    out = run_script(tmp_path, "pickle", "wrap")
    # wrapped: the __main__ function now reaches the workers by value
    assert out["submit"] == [0, 2, 4]
    assert out["map"] == [0, 2, 4]
    assert len(out["warnings"]) == 2
    assert {tuple(f) for w in out["warnings"] for f in w["findings"]} == {
        ("error", "fn", "main_module")
    }


@pytest.mark.parametrize("mode", ["warn", "error"])
def test_cloudpickle_pickler_main_function_is_a_portability_warning(tmp_path, mode):
    out = run_script(tmp_path, "cloudpickle", mode)
    assert out["submit"] == [0, 2, 4] and out["map"] == [0, 2, 4]
    assert [w["findings"] for w in out["warnings"]] == [
        [["warning", "fn", "main_module"]],
        [["warning", "fn", "main_module"]],
    ]


def test_notes_fallback_for_python_310():
    class Old(Exception):
        pass

    exc = Old("could not pickle")
    _append_note_py310(exc, "path: result.lock")
    _append_note_py310(exc, "second")
    assert exc.__notes__ == ["path: result.lock", "second"]
    # 3.10's traceback does not print __notes__: the message carries them
    assert str(exc) == "could not pickle\npath: result.lock\nsecond"
    modern = ValueError("x")
    _add_note(modern, "note")
    assert modern.__notes__ == ["note"]
