"""The documented pickler examples, run as real scripts against the executor."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap


def _run_script(tmp_path, source: str, **env) -> subprocess.CompletedProcess:
    script = tmp_path / "example.py"
    script.write_text(textwrap.dedent(source))
    return subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=str(tmp_path),
        env={**os.environ, **env},
    )


def test_pickler_class_defined_in_main_script(tmp_path):
    out = _run_script(
        tmp_path,
        """
        import pickle

        from loky import get_reusable_executor, set_loky_pickler
        from loky.backend.reduction import get_loky_pickler_name


        class CountingPickler(pickle.Pickler):
            dumped = 0

            def dump(self, obj):
                CountingPickler.dumped += 1
                return super().dump(obj)


        def square(x):
            return x**2


        def pickler_name_in_worker():
            return get_loky_pickler_name()


        if __name__ == "__main__":
            set_loky_pickler(CountingPickler)
            executor = get_reusable_executor(max_workers=2)
            print(list(executor.map(square, [1, 2, 3])))
            print(executor.submit(lambda: "lambda ok").result())
            print(executor.submit(pickler_name_in_worker).result())
            print(CountingPickler.dumped > 0)
            set_loky_pickler(None)
            print(executor.submit(lambda: "default again").result())
            executor.shutdown()
        """,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [
        "[1, 4, 9]",
        "lambda ok",
        "__main__:CountingPickler",
        "True",
        "default again",
    ]


def test_job_reducers_and_pickle_failure_mode(tmp_path):
    out = _run_script(
        tmp_path,
        """
        from loky import get_reusable_executor
        from loky.backend.reduction import dumps, loads


        class Secret:
            def __init__(self, value):
                self.value = value


        def redact(secret):
            return str, ("<redacted>",)


        def describe(obj):
            return repr(obj)


        if __name__ == "__main__":
            print(loads(dumps(Secret("hunter2"), reducers={Secret: redact})))
            executor = get_reusable_executor(max_workers=1, job_reducers={Secret: redact})
            print(executor.submit(describe, Secret("hunter2")).result())
            executor.shutdown()
        """,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["<redacted>", "'<redacted>'"]


def test_loky_pickler_pickle_cannot_send_main_functions(tmp_path):
    out = _run_script(
        tmp_path,
        """
        from loky import get_reusable_executor
        from loky.process_executor import BrokenProcessPool


        def task():
            return 1


        if __name__ == "__main__":
            executor = get_reusable_executor(max_workers=1)
            try:
                executor.submit(task).result()
            except BrokenProcessPool as e:
                print(e)
            executor.shutdown()
        """,
        LOKY_PICKLER="pickle",
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == (
        "A task has failed to un-serialize. Please ensure that the arguments of "
        "the function are all picklable."
    )
