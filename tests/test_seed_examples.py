"""Every example of the cloudpickle-integration guide runs, as written, on our loky.

The examples live in examples/seed_examples.py (the project's main command);
each one is run here as a ``__main__`` script and its printed output checked.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "examples" / "seed_examples.py"


def _load_examples():
    spec = importlib.util.spec_from_file_location("seed_examples", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


seed_examples = _load_examples()

EXPECTED_OUTPUT = {
    "wrapping_lambda_functions": "Lambda results: [1, 2, 5, 10, 17, 26, 37, 50, 65, 82]\n",
    "wrapping_interactively_defined_functions": (
        "Interactive function results: [4.0, 16.0, 36.0, 64.0, 100.0]\n"
    ),
    "wrapping_classes": (
        "Class processing results: "
        "[[2.5, 5.0, 7.5], [10.0, 12.5, 15.0], [17.5, 20.0, 22.5]]\n"
    ),
    "automatic_wrapping": "Partial function results: [10, 13, 16, 19, 22]\n",
    "custom_type_reduction": "".join(
        f"Object {i}: Processed {i} -> {i * 1000}\n" for i in range(5)
    ),
    "handling_closures": "Closure results: [100, 101, 102, 103, 104]\n",
    "nested_function_handling": "Nested function results: [[2, 4], [6, 8], [10, 12]]\n",
}


def test_every_example_of_the_guide_is_covered():
    assert set(seed_examples.EXAMPLES) == set(EXPECTED_OUTPUT) | {
        "custom_pickler_configuration",
        "manual_pickling_operations",
        "error_handling",
    }


@pytest.mark.parametrize("name", sorted(EXPECTED_OUTPUT))
def test_example_prints_its_results(name):
    output, _namespace = seed_examples.run_example(name)
    assert output == EXPECTED_OUTPUT[name]


def test_custom_pickler_example_runs_and_restores_the_default():
    from loky.backend.reduction import get_loky_pickler_name

    default = get_loky_pickler_name()
    _output, namespace = seed_examples.run_example("custom_pickler_configuration")
    assert namespace["results"] == [1, 4, 9]
    assert get_loky_pickler_name() == default


def test_manual_pickling_example_round_trips():
    import pickle

    output, namespace = seed_examples.run_example("manual_pickling_operations")
    size = len(namespace["serialized_bytes"])
    assert f"Serialized size: {size} bytes\n" in output
    assert f"File serialization size: {size} bytes\n" in output
    assert "Custom serialized size: " in output
    restored = pickle.loads(namespace["custom_serialized"])
    assert restored.data == [1, 2, 3, 4, 5]
    assert restored.process() == 15


def test_error_handling_example_takes_the_normal_path():
    output, namespace = seed_examples.run_example("error_handling")
    # problematic_function pickles fine (by value from __main__): no fallback.
    assert output == ""
    assert namespace["results"] == [1, 2, 3]


def test_wrapped_class_from_the_example_behaves_like_the_original():
    _output, namespace = seed_examples.run_example("wrapping_classes")
    processor = namespace["WrappedProcessor"](2.0)
    assert processor.process([1, 2]) == [2.0, 4.0]
    assert namespace["WrappedProcessor"].__name__ == "DataProcessor"
    with pytest.raises(TypeError, match="'DataProcessor' object is not callable"):
        processor()


def _processes_with_marker(marker):
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get("SEED_EXAMPLES_MARKER") == marker:
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def test_script_runs_every_example_and_leaves_no_process():
    marker = uuid.uuid4().hex
    env = {**os.environ, "SEED_EXAMPLES_MARKER": marker}
    proc = subprocess.run(
        [sys.executable, str(SCRIPT)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=str(ROOT),
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    for name in seed_examples.EXAMPLES:
        assert f"== {name}\n" in proc.stdout
    for expected in EXPECTED_OUTPUT.values():
        assert expected in proc.stdout
    assert "10 examples, all passed" in proc.stdout
    # Workers and the resource tracker are gone shortly after the script.
    deadline = time.monotonic() + 10
    while _processes_with_marker(marker) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _processes_with_marker(marker) == []


def test_script_rejects_an_unknown_example_name():
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "no_such_example"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        "seed_examples: unknown example 'no_such_example' (use --list to see the names)"
    )
