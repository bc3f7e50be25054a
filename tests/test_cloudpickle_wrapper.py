"""wrap_non_picklable_objects and the wrapper classes."""

from __future__ import annotations

import functools
import os
import pickle
import subprocess
import sys
import textwrap

import pytest

from loky import ProcessPoolExecutor, wrap_non_picklable_objects
from loky.cloudpickle_wrapper import (
    WRAP_CACHE,
    CallableObjectWrapper,
    CloudpickledObjectWrapper,
    _reconstruct_wrapper,
    _wrap_non_picklable_objects,
    _wrap_objects_when_needed,
)


def make_closure(base):
    def add_base(x):
        return x + base

    return add_base


class Point:
    def __init__(self, x, y):
        self.x = x
        self.y = y

    def norm1(self):
        return abs(self.x) + abs(self.y)


def module_level(x):
    return x


def test_lambda_wrapper_is_callable_and_survives_plain_pickle():
    wrapped = wrap_non_picklable_objects(lambda x: x * 3)
    assert isinstance(wrapped, CallableObjectWrapper)
    assert wrapped(2) == 6
    with pytest.raises((pickle.PicklingError, AttributeError)):
        pickle.dumps(lambda x: x)
    restored = pickle.loads(pickle.dumps(wrapped))
    # keep_wrapper=True by default: it comes back wrapped, still callable.
    assert isinstance(restored, CallableObjectWrapper)
    assert restored(5) == 15


def test_keep_wrapper_false_returns_the_bare_object():
    wrapped = wrap_non_picklable_objects(make_closure(10), keep_wrapper=False)
    restored = pickle.loads(pickle.dumps(wrapped))
    assert not isinstance(restored, CloudpickledObjectWrapper)
    assert restored(1) == 11


def test_instance_wrapper_delegates_and_is_not_callable():
    wrapped = wrap_non_picklable_objects(Point(3, -4))
    assert type(wrapped) is CloudpickledObjectWrapper
    assert wrapped.x == 3 and wrapped.norm1() == 7
    with pytest.raises(TypeError):
        wrapped()
    with pytest.raises(AttributeError):
        wrapped.missing_attribute  # noqa: B018
    restored = pickle.loads(pickle.dumps(wrapped))
    assert restored.norm1() == 7


def test_decorator_on_a_class():
    WrappedPoint = wrap_non_picklable_objects(Point)
    assert WrappedPoint.__name__ == "Point"
    assert issubclass(WrappedPoint, CloudpickledObjectWrapper)
    point = WrappedPoint(1, 2)
    assert point.x == 1 and point.norm1() == 3
    with pytest.raises(TypeError, match="'Point' object is not callable"):
        point()
    restored = pickle.loads(pickle.dumps(point))
    assert isinstance(restored, CloudpickledObjectWrapper)
    assert restored.norm1() == 3


def test_decorator_syntax_on_a_function():
    @wrap_non_picklable_objects
    def triple(x):
        return 3 * x

    assert triple(3) == 9
    assert pickle.loads(pickle.dumps(triple))(4) == 12


def test_reconstruct_and_wrap_helpers():
    import cloudpickle

    payload = cloudpickle.dumps(make_closure(1))
    rebuilt = _reconstruct_wrapper(payload, True)
    assert isinstance(rebuilt, CallableObjectWrapper) and rebuilt(1) == 2
    assert type(_wrap_non_picklable_objects(3, False)) is CloudpickledObjectWrapper
    assert rebuilt._keep_wrapper is True


def test_wrap_objects_when_needed():
    assert _wrap_objects_when_needed(module_level) is module_level
    nested = make_closure(2)
    wrapped = _wrap_objects_when_needed(nested)
    assert isinstance(wrapped, CallableObjectWrapper)
    assert _wrap_objects_when_needed(nested) is wrapped  # cached
    assert WRAP_CACHE[nested] is wrapped
    lam = lambda x: x  # noqa: E731
    assert isinstance(_wrap_objects_when_needed(lam), CallableObjectWrapper)
    part = _wrap_objects_when_needed(functools.partial(nested, 1))
    assert isinstance(part, functools.partial)
    assert isinstance(part.func, CallableObjectWrapper) and part() == 3
    assert pickle.loads(pickle.dumps(part))() == 3


def test_wrapped_objects_run_in_workers():
    WrappedPoint = wrap_non_picklable_objects(Point)
    with ProcessPoolExecutor(max_workers=1) as executor:
        closure = wrap_non_picklable_objects(make_closure(100))
        assert list(executor.map(closure, range(3))) == [100, 101, 102]
        point = WrappedPoint(2, 5)
        assert executor.submit(point.norm1).result(timeout=60) == 7


def test_wrapped_lambda_works_with_the_pickle_pickler(tmp_path):
    """With LOKY_PICKLER=pickle a __main__ lambda only travels when wrapped."""
    script = tmp_path / "pickle_pickler.py"
    script.write_text(
        textwrap.dedent(
            """
            from loky import ProcessPoolExecutor, BrokenProcessPool
            from loky import wrap_non_picklable_objects

            def main_function(x):
                return x + 1

            if __name__ == "__main__":
                with ProcessPoolExecutor(max_workers=1) as executor:
                    wrapped = wrap_non_picklable_objects(lambda x: x * 2)
                    print(list(executor.map(wrapped, [1, 2])))
                    wrapped_main = wrap_non_picklable_objects(main_function)
                    print(executor.submit(wrapped_main, 1).result())
                executor = ProcessPoolExecutor(max_workers=1)
                try:
                    executor.submit(main_function, 1).result()
                except BrokenProcessPool as e:
                    print("unwrapped:", str(e).split(".")[0])
                finally:
                    executor.shutdown(kill_workers=True)
            """
        )
    )
    env = {**os.environ, "LOKY_PICKLER": "pickle"}
    proc = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        "[2, 4]",
        "2",
        "unwrapped: A task has failed to un-serialize",
    ]
