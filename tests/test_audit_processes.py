"""Audit regressions: cpu_count, contexts, processes, process utilities."""

import os
import subprocess
import sys
from types import SimpleNamespace
from unittest import mock

import pytest

from loky.backend import context, utils


@pytest.fixture
def fresh_cache(monkeypatch):
    monkeypatch.setattr(context, "physical_cores_cache", {})


def test_affinity_falls_back_when_sched_getaffinity_fails_any_way(monkeypatch):
    def broken(pid):
        raise RuntimeError("not supported in this sandbox")

    monkeypatch.setattr(os, "sched_getaffinity", broken, raising=False)
    fake_psutil = SimpleNamespace(
        Process=lambda: SimpleNamespace(cpu_affinity=lambda: [0, 2])
    )
    monkeypatch.setitem(sys.modules, "psutil", fake_psutil)
    assert context._cpu_count_affinity_set() == {0, 2}


def test_win32_counters_replaced_by_mocks_still_chain(monkeypatch, fresh_cache):
    monkeypatch.setattr(sys, "platform", "win32")
    ctypes_counter = mock.Mock(side_effect=OSError("no kernel32"))
    powershell_counter = mock.Mock(return_value=6)
    monkeypatch.setattr(context, "_count_physical_cores_win32_ctypes", ctypes_counter)
    monkeypatch.setattr(
        context, "_count_physical_cores_win32_powershell", powershell_counter
    )
    assert context._count_physical_cores() == (6, None)
    assert ctypes_counter.call_count == 1
    assert powershell_counter.call_count == 1


def test_powershell_output_as_bytes_is_summed(monkeypatch):
    monkeypatch.setattr(subprocess, "CREATE_NO_WINDOW", 0x08000000, raising=False)
    monkeypatch.setattr(
        subprocess, "run", lambda *a, **k: SimpleNamespace(stdout=b"4\r\n4\r\n")
    )
    assert context._count_physical_cores_win32_powershell() == 8


def test_sysctl_fake_run_without_check_argument(monkeypatch, fresh_cache):
    calls = []

    def fake_run(cmd, capture_output, text):
        calls.append(cmd)
        return SimpleNamespace(stdout="6\n")

    monkeypatch.setattr(sys, "platform", "darwin")
    monkeypatch.setattr(subprocess, "run", fake_run)
    assert context._count_physical_cores() == (6, None)
    assert calls == [["sysctl", "-n", "hw.physicalcpu"]]


def test_kill_process_tree_kills_a_stand_in_process_object(monkeypatch):
    # A mock's exitcode attribute is a Mock, not an exit code: still killed.
    killed = []
    monkeypatch.setattr(utils, "_posix_recursive_kill", killed.append)
    monkeypatch.setattr(sys, "platform", "linux")
    process = mock.Mock(pid=123456789)
    utils.kill_process_tree(process, use_psutil=False)
    assert killed == [123456789]
    assert process.join.call_count == 1


def test_utils_psutil_set_to_none_means_psutil_is_missing(monkeypatch):
    assert utils.psutil is None or hasattr(utils.psutil, "Process")
    monkeypatch.setattr(utils, "psutil", None)
    killed = []
    monkeypatch.setattr(utils, "_posix_recursive_kill", killed.append)
    monkeypatch.setattr(sys, "platform", "linux")
    process = mock.Mock(pid=123456789)
    utils.kill_process_tree(process)
    assert killed == [123456789]
    assert process.join.call_count == 1


def test_malformed_loky_max_cpu_count_keeps_the_int_message(monkeypatch):
    monkeypatch.setenv("LOKY_MAX_CPU_COUNT", "abc")
    with pytest.raises(ValueError, match="invalid literal for int") as excinfo:
        context.cpu_count()
    assert "LOKY_MAX_CPU_COUNT" in str(excinfo.value)
