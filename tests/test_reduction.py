"""loky.backend.reduction: pickler choice, reducer tables, dump/dumps/loads."""

from __future__ import annotations

import copyreg
import functools
import gc
import io
import multiprocessing
import os
import pickle
import socket
import types

import cloudpickle
import pytest
from _helpers import PICKLER_ERROR_SUFFIX
from _helpers import run_python as _run_python

from loky.backend import reduction

SUFFIX = PICKLER_ERROR_SUFFIX


pytestmark = pytest.mark.usefixtures("restore_loky_pickler")


class Point:
    def __init__(self, x):
        self.x = x

    def get(self):
        return self.x

    @classmethod
    def make(cls, x):
        return cls(x)


def _reduce_point_to_int(point):
    return int, (point.x * 100,)


# --- choosing the pickler -----------------------------------------------------


def test_default_pickler_is_cloudpickle():
    assert reduction.ENV_LOKY_PICKLER == os.environ.get("LOKY_PICKLER", "cloudpickle")
    reduction.set_loky_pickler(None)
    assert reduction.get_loky_pickler_name() == "cloudpickle"
    pickler_cls = reduction.get_loky_pickler()
    assert issubclass(pickler_cls, cloudpickle.CloudPickler)
    assert pickler_cls is not cloudpickle.CloudPickler


def test_empty_name_means_cloudpickle():
    reduction.set_loky_pickler("pickle")
    reduction.set_loky_pickler("")
    assert reduction.get_loky_pickler_name() == "cloudpickle"


def test_set_pickle_by_name_and_its_failure_mode():
    reduction.set_loky_pickler("pickle")
    assert reduction.get_loky_pickler_name() == "pickle"
    pickler_cls = reduction.get_loky_pickler()
    assert issubclass(pickler_cls, pickle.Pickler)
    assert not issubclass(pickler_cls, cloudpickle.CloudPickler)
    with pytest.raises((pickle.PicklingError, AttributeError)):
        reduction.dumps(lambda x: x)
    # Importable objects still work.
    assert reduction.loads(reduction.dumps(os.path.join)) is os.path.join


def test_same_name_is_a_noop():
    reduction.set_loky_pickler("pickle")
    cls = reduction.get_loky_pickler()
    reduction.set_loky_pickler("pickle")
    assert reduction.get_loky_pickler() is cls


def test_unknown_module_error_text():
    with pytest.raises(ImportError) as info:
        reduction.set_loky_pickler("no_such_pickler_module")
    expected = "No module named 'no_such_pickler_module'" + SUFFIX.format(
        "no_such_pickler_module"
    )
    assert type(info.value) is ModuleNotFoundError
    assert info.value.args[0] == expected
    assert info.value.msg == expected
    assert str(info.value) == expected
    # The previous pickler is kept.
    assert reduction.get_loky_pickler_name() == "cloudpickle"


def test_module_without_pickler_error_text():
    with pytest.raises(AttributeError) as info:
        reduction.set_loky_pickler("json")
    assert info.value.args[0] == (
        "module 'json' has no attribute 'Pickler'" + SUFFIX.format("json")
    )
    assert reduction.get_loky_pickler_name() == "cloudpickle"


def test_bad_argument_type():
    with pytest.raises(TypeError, match="module name"):
        reduction.set_loky_pickler(42)
    with pytest.raises(TypeError, match="dump"):
        reduction.set_loky_pickler(int)


def test_env_variable_chooses_pickler():
    code = (
        "from loky.backend import reduction as r; "
        "print(r.ENV_LOKY_PICKLER, r.get_loky_pickler_name(), "
        "r.get_loky_pickler().__mro__[1].__module__)"
    )
    out = _run_python(code, LOKY_PICKLER="pickle")
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["pickle", "pickle", "_pickle"]


def test_env_variable_unknown_module_fails_at_import_with_suffix():
    out = _run_python("import loky.backend.reduction", LOKY_PICKLER="no_such_mod_x")
    assert out.returncode != 0
    assert "ModuleNotFoundError: No module named 'no_such_mod_x'" in out.stderr
    assert SUFFIX.format("no_such_mod_x").strip() in out.stderr


def test_set_none_restores_env_choice():
    code = (
        "from loky.backend import reduction as r; r.set_loky_pickler('cloudpickle'); "
        "r.set_loky_pickler(None); print(r.get_loky_pickler_name())"
    )
    out = _run_python(code, LOKY_PICKLER="pickle")
    assert out.stdout.strip() == "pickle", out.stderr


# --- pickler classes (project extension) ---------------------------------------


class PlainCustomPickler(pickle.Pickler):
    pass


class Secret:
    pass


class OverridingPickler(pickle.Pickler):
    def reducer_override(self, obj):
        if isinstance(obj, Secret):
            return str, ("redacted",)
        return NotImplemented


def _make_nested():
    offset = 7

    def nested(x):
        return x + offset

    return nested


def test_pickler_class_becomes_base_and_keeps_by_value_handling():
    reduction.set_loky_pickler(PlainCustomPickler)
    name = reduction.get_loky_pickler_name()
    assert name == f"{__name__}:PlainCustomPickler"
    pickler_cls = reduction.get_loky_pickler()
    assert pickler_cls.__bases__ == (PlainCustomPickler,)
    # Lambdas and nested functions travel by value even though the base is
    # the plain pickle.Pickler.
    assert reduction.loads(reduction.dumps(lambda x: x * 3))(2) == 6
    assert reduction.loads(reduction.dumps(_make_nested()))(1) == 8
    # Importable objects are still pickled by reference.
    assert b"cloudpickle" not in bytes(reduction.dumps(Point))
    # Same class again: no-op.
    reduction.set_loky_pickler(PlainCustomPickler)
    assert reduction.get_loky_pickler() is pickler_cls
    reduction.set_loky_pickler(None)
    assert reduction.get_loky_pickler_name() == "cloudpickle"


def test_pickler_class_with_own_reducer_override_is_respected():
    reduction.set_loky_pickler(OverridingPickler)
    assert reduction.loads(reduction.dumps([Secret(), 1])) == ["redacted", 1]
    assert "reducer_override" not in reduction.get_loky_pickler().__dict__
    with pytest.raises((pickle.PicklingError, AttributeError)):
        reduction.dumps(lambda: 1)


def test_class_name_resolves_in_a_fresh_process():
    # The worker side receives only the name: an importable class is used...
    code = (
        f"import sys; sys.path.insert(0, {os.path.dirname(__file__)!r}); "
        "from loky.backend import reduction as r; "
        "r.set_loky_pickler('test_reduction:OverridingPickler'); "
        "print(r.get_loky_pickler_name(), r.get_loky_pickler().__bases__[0].__name__)"
    )
    out = _run_python(code)
    assert out.stdout.split() == [
        "test_reduction:OverridingPickler",
        "OverridingPickler",
    ], out.stderr


def test_unresolvable_class_name_falls_back_to_default():
    # ... and one the worker cannot import (e.g. defined in __main__) falls back
    # to the default serializer, keeping the parent's name.
    reduction.set_loky_pickler("__main__:NoSuchPickler")
    assert reduction.get_loky_pickler_name() == "__main__:NoSuchPickler"
    assert issubclass(reduction.get_loky_pickler(), cloudpickle.CloudPickler)
    assert reduction.loads(reduction.dumps(lambda: 5))() == 5


# --- reducer tables ------------------------------------------------------------


def test_register_applies_to_new_picklers():
    class Local:
        pass

    def reduce_local(obj):
        return str, ("local!",)

    before = reduction.get_loky_pickler()(io.BytesIO())
    reduction.register(Local, reduce_local)
    assert reduction._dispatch_table[Local] is reduce_local
    assert reduction.loads(reduction.dumps(Local())) == "local!"
    # Tables are copies: an existing pickler is not affected.
    assert Local not in before.dispatch_table


@pytest.mark.parametrize("name", ["cloudpickle", "pickle"])
def test_per_call_reducers(name):
    reduction.set_loky_pickler(name)
    payload = reduction.dumps(Point(3), reducers={Point: _reduce_point_to_int})
    assert reduction.loads(payload) == 300
    assert Point not in reduction._dispatch_table
    assert isinstance(reduction.loads(reduction.dumps(Point(3))), Point)


@pytest.mark.parametrize("name", ["cloudpickle", "pickle"])
def test_instance_register_is_private_to_the_instance(name):
    reduction.set_loky_pickler(name)
    pickler_cls = reduction.get_loky_pickler()
    buf = io.BytesIO()
    first = pickler_cls(buf)
    second = pickler_cls(io.BytesIO())
    first.register(Point, _reduce_point_to_int)
    assert Point in first.dispatch_table
    assert Point not in second.dispatch_table
    assert first.dispatch_table is not second.dispatch_table
    # The C pickler really uses the instance table (member-descriptor gotcha
    # with cloudpickle's class-level table).
    first.dump(Point(2))
    assert pickle.loads(buf.getvalue()) == 200
    assert reduction.get_loky_pickler()(io.BytesIO()).dispatch_table.get(Point) is None


def test_cloudpickle_instance_table_stored_in_c_slot():
    pickler = reduction.get_loky_pickler()(io.BytesIO())
    member = pickle.Pickler.__dict__["dispatch_table"]
    assert isinstance(member, types.MemberDescriptorType)
    assert member.__get__(pickler) is pickler.dispatch_table
    assert pickler.dispatch_table is not cloudpickle.CloudPickler.dispatch_table


def test_reducers_argument_of_constructor():
    buf = io.BytesIO()
    pickler = reduction.get_loky_pickler()(buf, reducers={Point: _reduce_point_to_int})
    pickler.dump([Point(1)])
    assert pickle.loads(buf.getvalue()) == [100]


def test_copyreg_changes_are_seen_by_new_picklers():
    reduction.set_loky_pickler("pickle")
    reduction.dumps(1)  # fill the merged-table cache

    class Late:
        pass

    copyreg.pickle(Late, lambda obj: (str, ("late",)))
    try:
        assert reduction.loads(reduction.dumps(Late())) == "late"
    finally:
        del copyreg.dispatch_table[Late]


# --- pre-registered reducers ---------------------------------------------------


@pytest.mark.parametrize("name", ["cloudpickle", "pickle"])
def test_methods_descriptors_and_partial(name):
    reduction.set_loky_pickler(name)
    p = Point(4)
    assert reduction.loads(reduction.dumps(p.get))() == 4
    assert reduction.loads(reduction.dumps(Point.make))(5).x == 5
    assert reduction.loads(reduction.dumps(list.append)) is list.append
    assert reduction.loads(reduction.dumps(int.__add__)) is int.__add__
    part = functools.partial(int, base=2)
    rebuilt = reduction.loads(reduction.dumps(part))
    assert isinstance(rebuilt, functools.partial)
    assert rebuilt("101") == 5
    for type_ in (
        types.MethodType,
        type(list.append),
        type(int.__add__),
        functools.partial,
    ):
        assert type_ in reduction._dispatch_table


def test_partial_with_no_keywords():
    rebuilt = reduction.loads(reduction.dumps(functools.partial(max, 3)))
    assert rebuilt(1) == 3


def test_dumps_returns_memoryview_over_one_buffer():
    data = {"a": list(range(100))}
    view = reduction.dumps(data)
    assert isinstance(view, memoryview)
    assert not view.readonly  # the BytesIO's own buffer, not a bytes copy
    assert bytes(view) == pickle.dumps(data, protocol=cloudpickle.DEFAULT_PROTOCOL)
    assert reduction.loads(view) == data
    assert reduction.loads is pickle.loads


def test_dumps_view_collected_in_a_cycle_reports_nothing(monkeypatch):
    # A view kept in a reference cycle (a script's namespace holding it and a
    # function whose globals are that namespace) dies in the garbage collector,
    # which may finalize the BytesIO behind it first (3.12+ sees that link);
    # closing a BytesIO with a live export raises BufferError, which would be
    # printed as "Exception ignored in: <_io.BytesIO ...>".
    unraisable = []
    monkeypatch.setattr("sys.unraisablehook", unraisable.append)
    namespace = {}
    exec("def f():\n    return view", namespace)
    namespace["view"] = reduction.dumps({"a": [1, 2, 3]})
    del namespace
    gc.collect()
    assert [(u.exc_type, u.object) for u in unraisable] == []


def test_protocol_argument():
    assert bytes(reduction.dumps(1, protocol=2))[:2] == b"\x80\x02"
    buf = io.BytesIO()
    reduction.dump([1, 2], buf, protocol=3)
    assert buf.getvalue()[:2] == b"\x80\x03"
    assert pickle.loads(buf.getvalue()) == [1, 2]


def test_dump_with_reducers():
    buf = io.BytesIO()
    reduction.dump(Point(7), buf, reducers={Point: _reduce_point_to_int})
    assert pickle.loads(buf.getvalue()) == 700


def test_module_all_and_helpers():
    assert reduction.__all__[:5] == [
        "dump",
        "dumps",
        "loads",
        "register",
        "set_loky_pickler",
    ]
    r, w = os.pipe()
    try:
        os.set_inheritable(r, False)
        assert reduction._mk_inheritable(r) == r
        assert os.get_inheritable(r)
    finally:
        os.close(r)
        os.close(w)


# --- fd-backed objects ---------------------------------------------------------


def test_socket_and_connection_reducers_registered():
    import _socket
    from multiprocessing.connection import Connection

    for type_ in (socket.socket, _socket.socket, Connection):
        assert type_ in reduction._dispatch_table


def test_connection_round_trip_outside_spawning():
    # Outside spawning the fd is served by the stdlib resource_sharer.
    reader, writer = multiprocessing.Pipe(duplex=False)
    try:
        clone = reduction.loads(reduction.dumps(writer))
        try:
            clone.send("through the clone")
            assert reader.recv() == "through the clone"
            assert clone.fileno() != writer.fileno()
        finally:
            clone.close()
    finally:
        reader.close()
        writer.close()


def test_socket_round_trip_outside_spawning():
    a, b = socket.socketpair()
    try:
        clone = reduction.loads(reduction.dumps(a))
        try:
            assert (clone.family, clone.type) == (a.family, a.type)
            clone.sendall(b"ping")
            assert b.recv(4) == b"ping"
        finally:
            clone.close()
    finally:
        a.close()
        b.close()


def test_dupfd_uses_the_spawning_popen():
    from multiprocessing.context import set_spawning_popen

    from loky.backend import _posix_reduction

    class FakePopen:
        def __init__(self):
            self.fds = []

        def duplicate_for_child(self, fd):
            self.fds.append(fd)
            return fd

        class DupFd:
            def __init__(self, fd):
                self.fd = fd

            def detach(self):
                return self.fd

    popen = FakePopen()
    reader, writer = multiprocessing.Pipe(duplex=False)
    set_spawning_popen(popen)
    try:
        rebuild, (df, readable, writable) = _posix_reduction.reduce_connection(writer)
    finally:
        set_spawning_popen(None)
        reader.close()
        writer.close()
    assert popen.fds == [df.fd]
    assert (readable, writable) == (False, True)
    assert rebuild is _posix_reduction.rebuild_connection


def _child_write(conn, sock):
    conn.send("via spawned Connection")
    conn.close()
    sock.sendall(b"via spawned socket")
    sock.close()


def test_fd_objects_passed_at_spawn_with_loky_context():
    from loky.backend.context import get_context

    ctx = get_context("loky")
    reader, writer = multiprocessing.Pipe(duplex=False)
    a, b = socket.socketpair()
    p = ctx.Process(target=_child_write, args=(writer, a))
    p.start()
    try:
        writer.close()
        a.close()
        assert reader.recv() == "via spawned Connection"
        assert b.recv(100) == b"via spawned socket"
    finally:
        p.join(timeout=60)
        reader.close()
        b.close()
    assert p.exitcode == 0


class PurePythonPickler(pickle._Pickler):
    pass


def test_pure_python_pickler_class():
    reduction.set_loky_pickler(PurePythonPickler)
    assert reduction.get_loky_pickler().__bases__ == (PurePythonPickler,)
    assert reduction.loads(reduction.dumps(lambda: 3))() == 3
    payload = reduction.dumps(Point(2), reducers={Point: _reduce_point_to_int})
    assert reduction.loads(payload) == 200
    assert reduction.loads(reduction.dumps(functools.partial(max, 9)))(1) == 9
