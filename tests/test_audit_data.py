"""Audit regressions: serialisation, queues, synchronisation, resource tracker."""

from __future__ import annotations

import copyreg
import os
import sys

import pytest
from _helpers import PICKLER_ERROR_SUFFIX

from loky.backend import reduction

SUFFIX = PICKLER_ERROR_SUFFIX


pytestmark = pytest.mark.usefixtures("restore_loky_pickler")


class Replaced:
    pass


def _to_one(obj):
    return str, ("one",)


def _to_two(obj):
    return str, ("two",)


# --- §9.3: every new pickler copies the *current* tables -------------------------


@pytest.mark.parametrize("name", ["cloudpickle", "pickle"])
def test_replaced_copyreg_reducer_is_seen(name):
    # copyreg.pickle() of an already registered type keeps the table's size:
    # a size-keyed cache of the merged table missed the new reducer.
    reduction.set_loky_pickler(name)
    copyreg.pickle(Replaced, _to_one)
    try:
        assert reduction.loads(reduction.dumps(Replaced())) == "one"
        copyreg.pickle(Replaced, _to_two)
        assert reduction.loads(reduction.dumps(Replaced())) == "two"
    finally:
        del copyreg.dispatch_table[Replaced]
    assert isinstance(reduction.loads(reduction.dumps(Replaced())), Replaced)


@pytest.mark.parametrize("name", ["cloudpickle", "pickle"])
def test_direct_write_to_module_table_is_seen(name):
    reduction.set_loky_pickler(name)
    reduction.register(Replaced, _to_one)
    assert reduction.loads(reduction.dumps(Replaced())) == "one"
    reduction._dispatch_table[Replaced] = _to_two
    assert reduction.loads(reduction.dumps(Replaced())) == "two"


# --- §9.2: values that are neither a module name nor a pickler class --------------


@pytest.mark.parametrize("value", [42, 3.5, False, 0, int])
def test_invalid_pickler_values_raise_like_upstream(value):
    # Upstream hands such values to import_module, which fails with an
    # AttributeError carrying the suffix; we raise an error that is both a
    # TypeError and an AttributeError, with the same suffix.
    before = reduction.get_loky_pickler()
    with pytest.raises(AttributeError) as info:
        reduction.set_loky_pickler(value)
    assert isinstance(info.value, TypeError)
    assert info.value.args[0].endswith(SUFFIX.format(value))
    assert reduction.get_loky_pickler() is before
    assert reduction.get_loky_pickler_name() == "cloudpickle"


# --- §13.1 wire format: the 255-byte limit is on the name ------------------------


def test_json_names_up_to_255_bytes_are_accepted():
    from loky.backend import resource_tracker as rt

    for name in ("n\n" + "x" * 253, "\n" + "é" * 127):
        assert len(name.encode()) == 255
        msg = rt._encode_message("MAYBE_UNLINK", name, "semlock")
        assert msg.startswith(b"{") and len(msg) <= 512
        assert rt._decode_message(msg) == ("MAYBE_UNLINK", "semlock", name)
    with pytest.raises(ValueError):
        rt._encode_message("REGISTER", "n\n" + "x" * 254, "file")


@pytest.mark.parametrize("simple", [True, False])
def test_undecodable_path_names_round_trip(simple):
    from loky.backend import resource_tracker as rt

    name = os.fsdecode(b"/tmp/leak-\xff\xfe")
    msg = rt._encode_message("REGISTER", name, "file", simple)
    assert rt._decode_message(msg) == ("REGISTER", "file", name)


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX file names")
def test_tracker_cleans_a_file_with_an_undecodable_name(tmp_path, capfd):
    from loky.backend import resource_tracker as rt

    path = os.path.join(os.fsencode(tmp_path), b"leak-\xff")
    with open(path, "wb"):
        pass
    tracker = rt.ResourceTracker()
    try:
        tracker.register(os.fsdecode(path), "file")
    finally:
        tracker._stop()
    assert not os.path.exists(path)
    assert tracker._exitcode == 1  # reported as a leak, and cleaned
    assert "leaked file objects" in capfd.readouterr().err


@pytest.mark.parametrize("name", ["cloudpickle", "pickle"])
def test_tables_generation_tracks_every_table_change(name):
    # For callers reusing one pickler instance (the worker's result pipe):
    # the number changes exactly when a new instance would get another table.
    reduction.set_loky_pickler(name)
    cls = reduction.get_loky_pickler()
    start = cls._tables_generation()
    assert cls._tables_generation() == start
    copyreg.pickle(Replaced, _to_one)
    try:
        after_add = cls._tables_generation()
        assert after_add != start
        copyreg.pickle(Replaced, _to_two)  # same size, new reducer
        after_replace = cls._tables_generation()
        assert after_replace != after_add
        reduction.register(Replaced, _to_one)
        assert cls._tables_generation() != after_replace
    finally:
        del copyreg.dispatch_table[Replaced]


def test_ensure_running_probes_after_a_fresh_launch():
    # §13.1: without an fd, launch then write (PROBE:0:noop when only ensuring
    # it runs); with a live fd, ensure_running writes the probe only.
    from loky.backend import resource_tracker as rt

    tracker = rt.ResourceTracker()
    written = []
    real_write = tracker._write

    def recording_write(msg):
        written.append(msg)
        real_write(msg)

    tracker._write = recording_write
    try:
        tracker.ensure_running()
        assert written == [b"PROBE:0:noop\n"]
        tracker.ensure_running()
        tracker.register("/not-a-real-name", "dummy")
        assert written == [b"PROBE:0:noop\n"] * 2 + [
            b"REGISTER:/not-a-real-name:dummy\n"
        ]
    finally:
        tracker._stop()
    assert tracker._exitcode == 0
