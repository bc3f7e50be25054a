"""The usage example of the README's "The executor" section runs as shown."""

from __future__ import annotations

import subprocess
import sys

README_EXAMPLE = """
from loky import get_reusable_executor
from loky.process_executor import TerminatedWorkerError


def slow_square(x):
    return x * x


def crash():
    import os

    os._exit(3)


if __name__ == "__main__":
    # The calling thread's executor: created once, then reused (and resized).
    executor = get_reusable_executor(max_workers=2, timeout=10)
    print(list(executor.map(slow_square, range(8), chunksize=4)))
    # Functions defined in __main__ (and lambdas) travel by value.
    print(executor.submit(lambda x: x + 1, 41).result())

    # A worker that dies never hangs the caller: the futures fail instead...
    try:
        executor.submit(crash).result()
    except TerminatedWorkerError as e:
        print("worker died:", str(e).splitlines()[2])
    # ...and the next call gives a fresh, working executor.
    executor = get_reusable_executor(max_workers=2, timeout=10)
    print(executor.submit(slow_square, 12).result())
"""

EXPECTED = """\
[0, 1, 4, 9, 16, 25, 36, 49]
42
worker died: The exit codes of the workers are {EXIT(3)}
144
"""


def test_readme_example(tmp_path):
    script = tmp_path / "example.py"
    script.write_text(README_EXAMPLE)
    proc = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == EXPECTED
    assert proc.stderr == ""
