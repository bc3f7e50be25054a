"""Conformance (black-box): the loky namespace, import-time effects and every
semi-public name of the contract (loky_api.md §1.3, §1.4, §19)."""

from __future__ import annotations

import concurrent.futures
import importlib
import subprocess
import sys
import textwrap
import threading

import pytest

import loky

LOKY_ALL = {
    "get_reusable_executor": "loky.reusable_executor",
    "cpu_count": "loky.backend.context",
    "Future": "loky._base",
    "ProcessPoolExecutor": "loky.process_executor",
    "BrokenProcessPool": "loky.process_executor",
    "wrap_non_picklable_objects": "loky.cloudpickle_wrapper",
    "set_loky_pickler": "loky.backend.reduction",
}
STDLIB_REEXPORTS = [
    "wait",
    "as_completed",
    "Executor",
    "CancelledError",
    "TimeoutError",
    "FIRST_COMPLETED",
    "FIRST_EXCEPTION",
    "ALL_COMPLETED",
]


def test_all_is_exactly_the_fifteen_names():
    assert len(loky.__all__) == 15
    assert set(loky.__all__) == set(LOKY_ALL) | set(STDLIB_REEXPORTS)
    assert loky.__version__ == "3.7.0"
    for name in loky.__all__:
        assert hasattr(loky, name), name


@pytest.mark.parametrize("name", STDLIB_REEXPORTS)
def test_stdlib_reexports_are_identical(name):
    assert getattr(loky, name) is getattr(concurrent.futures, name)


@pytest.mark.parametrize("name, module", sorted(LOKY_ALL.items()))
def test_loky_names_come_from_their_modules(name, module):
    assert getattr(loky, name) is getattr(importlib.import_module(module), name)


def test_star_import_gives_the_fifteen_names():
    namespace: dict = {}
    exec("from loky import *", namespace)
    namespace.pop("__builtins__")
    assert set(namespace) == set(loky.__all__)


def test_exception_hierarchy():
    from concurrent.futures.process import BrokenProcessPool as StdBPP

    from loky import process_executor as pe

    assert issubclass(pe.BrokenProcessPool, StdBPP)
    assert issubclass(pe.TerminatedWorkerError, pe.BrokenProcessPool)
    assert issubclass(pe.ShutdownExecutorError, RuntimeError)
    assert issubclass(pe.LokyRecursionError, RuntimeError)
    assert pe.BrokenExecutor is pe.BrokenProcessPool
    assert issubclass(loky.Future, concurrent.futures.Future)


def test_arbitrary_attributes_on_the_package():
    loky.conformance_marker = object()
    try:
        assert loky.conformance_marker is not None
    finally:
        del loky.conformance_marker


# §1.4: checked in a fresh interpreter, so nothing else has run yet.
IMPORT_EFFECTS = textwrap.dedent(
    """
    import multiprocessing, multiprocessing.context as mc
    import multiprocessing.synchronize as ms
    import threading
    import loky
    from loky.backend import resource_tracker, context
    assert threading.active_count() == 1, threading.enumerate()
    assert multiprocessing.active_children() == []
    assert resource_tracker._resource_tracker._fd is None
    assert resource_tracker._resource_tracker._pid is None
    assert isinstance(mc._concrete_contexts["loky"], context.LokyContext)
    assert isinstance(mc._concrete_contexts["loky_init_main"], context.LokyInitMainContext)
    assert multiprocessing.get_context("loky").get_start_method() == "loky"
    import os
    name = ms.SemLock._make_name()
    assert name.startswith(f"/loky-{os.getpid()}-"), name
    # the stdlib primitives really get those names
    lock = multiprocessing.get_context("spawn").Lock()
    assert lock._semlock.name.startswith(f"/loky-{os.getpid()}-"), lock._semlock.name
    from loky.backend import reduction
    assert reduction.get_loky_pickler_name() == "cloudpickle"
    from loky import process_executor as pe
    assert pe.process_pool_executor_at_exit is None
    assert not any(
        getattr(f, "func", f) is pe._python_exit for f in threading._threading_atexits
    )
    assert pe._threads_wakeups == {} or len(pe._threads_wakeups) == 0
    assert multiprocessing.active_children() == []
    assert threading.active_count() == 1
    print("ok")
    """
)


def test_import_time_effects_in_a_fresh_interpreter():
    env = {k: v for k, v in __import__("os").environ.items() if k != "LOKY_PICKLER"}
    proc = subprocess.run(
        [sys.executable, "-c", IMPORT_EFFECTS],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "ok\n"
    assert proc.stderr == ""


def test_importing_only_the_backend_registers_contexts():
    code = (
        "import multiprocessing.context as mc, multiprocessing.synchronize as ms\n"
        "import loky.backend\n"
        "assert 'loky' in mc._concrete_contexts\n"
        "assert 'loky_init_main' in mc._concrete_contexts\n"
        "assert ms.SemLock._make_name().startswith('/loky-')\n"
        "print('ok')\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )
    assert proc.stdout == "ok\n", proc.stderr


# §19: every semi-public name, in its module.
SEMI_PUBLIC = {
    "loky": ["__version__", *LOKY_ALL, *STDLIB_REEXPORTS],
    "loky._base": ["Future"],
    "loky.process_executor": [
        "BrokenProcessPool",
        "TerminatedWorkerError",
        "ShutdownExecutorError",
        "LokyRecursionError",
        "BrokenExecutor",
        "_RemoteTraceback",
        "_ExceptionWithTraceback",
        "_rebuild_exc",
        "_WorkItem",
        "_CallItem",
        "_ResultItem",
        "_ThreadWakeup",
        "_ExecutorFlags",
        "_RecycledWorkerPid",
        "_SafeQueue",
        "_ExecutorManagerThread",
        "_process_worker",
        "_process_chunk",
        "_sendback_result",
        "_python_exit",
        "_check_max_depth",
        "_check_system_limits",
        "_get_memory_usage",
        "MAX_DEPTH",
        "_CURRENT_DEPTH",
        "EXTRA_QUEUED_CALLS",
        "_global_shutdown",
        "_global_shutdown_lock",
        "_threads_wakeups",
        "_MEMORY_LEAK_CHECK_DELAY",
        "_USE_PSUTIL",
        "_MAX_MEMORY_LEAK_SIZE",
        "ProcessPoolExecutor",
    ],
    "loky.reusable_executor": [
        "get_reusable_executor",
        "_ReusablePoolExecutor",
        "_executor_storage",
        "_ExecutorStorage",
        "_executor_lock",
        "_get_next_executor_id",
    ],
    "loky.backend": ["get_context"],
    "loky.backend.context": [
        "get_context",
        "START_METHODS",
        "_MAX_WINDOWS_WORKERS",
        "cpu_count",
        "set_start_method",
        "get_start_method",
        "LokyContext",
        "LokyInitMainContext",
        "physical_cores_cache",
        "_cpu_count_affinity_set",
        "_cpu_count_cgroup",
        "_count_physical_cores",
        "_count_physical_cores_linux",
        "_count_physical_cores_win32",
        "_count_physical_cores_win32_ctypes",
        "_count_physical_cores_win32_powershell",
        "_warn_physical_cores_not_found",
    ],
    "loky.backend.process": [
        "LokyProcess",
        "LokyInitMainProcess",
        "AuthenticationKey",
    ],
    "loky.backend.popen_loky_posix": ["Popen"],
    "loky.backend.spawn": ["get_preparation_data", "prepare", "get_executable"],
    "loky.backend.fork_exec": ["fork_exec"],
    "loky.backend.queues": ["Queue", "SimpleQueue", "Full"],
    "loky.backend.reduction": [
        "dump",
        "dumps",
        "loads",
        "register",
        "set_loky_pickler",
        "get_loky_pickler",
        "get_loky_pickler_name",
        "_dispatch_table",
        "_mk_inheritable",
        "ENV_LOKY_PICKLER",
    ],
    "loky.backend.synchronize": [
        "Lock",
        "RLock",
        "Semaphore",
        "BoundedSemaphore",
        "Condition",
        "Event",
        "SemLock",
        "sem_unlink",
    ],
    "loky.backend.utils": [
        "kill_process_tree",
        "recursive_terminate",
        "get_exitcodes_terminated_worker",
        "_format_exitcodes",
        "_get_exitcode_name",
    ],
    "loky.backend.resource_tracker": [
        "ResourceTracker",
        "_resource_tracker",
        "ensure_running",
        "register",
        "unregister",
        "maybe_unlink",
        "getfd",
        "VERBOSE",
        "_CLEANUP_FUNCS",
        "_decode_message",
        "main",
        "spawnv_passfds",
    ],
    "loky.cloudpickle_wrapper": [
        "wrap_non_picklable_objects",
        "CloudpickledObjectWrapper",
        "CallableObjectWrapper",
        "_wrap_non_picklable_objects",
        "_reconstruct_wrapper",
        "_wrap_objects_when_needed",
        "WRAP_CACHE",
    ],
    "loky.initializers": [
        "_prepare_initializer",
        "_make_viztracer_initializer_and_initargs",
        "_chain_initializers",
        "_ChainedInitializer",
        "_viztracer_init",
    ],
}

_SEMI_PUBLIC_PARAMS = [(m, n) for m, names in SEMI_PUBLIC.items() for n in names]


@pytest.mark.parametrize(
    "module, name",
    _SEMI_PUBLIC_PARAMS,
    ids=[f"{m}:{n}" for m, n in _SEMI_PUBLIC_PARAMS],
)
def test_semi_public_name_exists(module, name):
    assert hasattr(importlib.import_module(module), name)


def test_semi_public_values_have_the_stated_meaning():
    from loky import process_executor as pe
    from loky import reusable_executor as re_
    from loky.backend import context, reduction
    from loky.backend import resource_tracker as rt

    assert pe.EXTRA_QUEUED_CALLS == 1
    assert pe._CURRENT_DEPTH == 0
    assert isinstance(pe.MAX_DEPTH, int)
    assert pe._MEMORY_LEAK_CHECK_DELAY == 1.0
    assert isinstance(pe._MAX_MEMORY_LEAK_SIZE, int)
    assert pe._global_shutdown is False
    assert isinstance(pe._global_shutdown_lock, type(threading.Lock()))
    assert issubclass(pe._RecycledWorkerPid, int)
    assert issubclass(pe._SafeQueue, loky.backend.queues.Queue)
    assert issubclass(pe._ExecutorManagerThread, threading.Thread)
    assert issubclass(re_._ReusablePoolExecutor, pe.ProcessPoolExecutor)
    assert isinstance(re_._executor_storage, threading.local)
    assert isinstance(re_._executor_storage, re_._ExecutorStorage)
    assert re_._ExecutorStorage.executor is None
    assert re_._ExecutorStorage.executor_kwargs is None
    assert isinstance(re_._executor_lock, type(threading.RLock()))
    first = re_._get_next_executor_id()
    assert re_._get_next_executor_id() > first
    assert context.START_METHODS[:3] == ["loky", "loky_init_main", "spawn"]
    if sys.platform != "win32":
        assert context.START_METHODS == [
            "loky",
            "loky_init_main",
            "spawn",
            "fork",
            "forkserver",
        ]
    assert context._MAX_WINDOWS_WORKERS == 61
    assert isinstance(context.physical_cores_cache, dict)
    assert isinstance(reduction._dispatch_table, dict)
    assert set(reduction.__all__) >= {
        "dump",
        "dumps",
        "loads",
        "register",
        "set_loky_pickler",
    }
    assert rt.VERBOSE is False
    assert isinstance(rt._CLEANUP_FUNCS, dict)
    assert {"noop", "dummy", "folder", "file"} <= set(rt._CLEANUP_FUNCS)
    assert isinstance(rt._resource_tracker, rt.ResourceTracker)
    assert set(rt.__all__) == {"ensure_running", "register", "unregister"}
    from loky.backend import synchronize

    assert set(synchronize.__all__) == {
        "Lock",
        "RLock",
        "Semaphore",
        "BoundedSemaphore",
        "Condition",
        "Event",
    }


def test_helper_objects_constructors():
    from loky import process_executor as pe

    future = loky.Future()
    work_item = pe._WorkItem(future, len, ("ab",), {})
    assert (work_item.future, work_item.fn, work_item.args, work_item.kwargs) == (
        future,
        len,
        ("ab",),
        {},
    )
    assert not hasattr(work_item, "__dict__")  # slots
    result_item = pe._ResultItem(3)
    assert (result_item.work_id, result_item.exception, result_item.result) == (
        3,
        None,
        None,
    )
    call_item = pe._CallItem(1, len, ("abc",), {})
    assert call_item.loky_pickler == loky.backend.reduction.get_loky_pickler_name()
    assert call_item() == 3
    assert pe._process_chunk(pow, [(2, 3), (3, 2)]) == [8, 9]

    lock = threading.Lock()
    flags = pe._ExecutorFlags(lock)
    assert (flags.shutdown, flags.broken, flags.kill_workers) == (False, None, False)
    assert flags.shutdown_lock is lock
    flags.flag_as_shutting_down(kill_workers=True)
    assert flags.shutdown and flags.kill_workers
    err = pe.BrokenProcessPool("x")
    flags.flag_as_broken(err)
    assert flags.broken is err and flags.shutdown

    wakeup = pe._ThreadWakeup()
    wakeup.wakeup()
    assert wakeup._reader.poll()
    wakeup.clear()
    assert not wakeup._reader.poll()
    wakeup.close()
    wakeup.close()  # no-ops once closed
    wakeup.wakeup()
    wakeup.clear()


def test_remote_traceback_and_rebuild():
    from loky import process_executor as pe

    remote = pe._RemoteTraceback("line\n")
    assert remote.tb == '\n"""\nline\n"""'
    assert str(remote) == remote.tb
    assert isinstance(remote, Exception)
    try:
        raise KeyError("k")
    except KeyError as e:
        wrapped = pe._ExceptionWithTraceback(e)
    assert isinstance(wrapped.exc, KeyError)
    assert "raise KeyError" in wrapped.tb
    rebuild, args = wrapped.__reduce__()
    assert rebuild is pe._rebuild_exc
    exc = rebuild(*args)
    assert exc is wrapped.exc
    assert isinstance(exc.__cause__, pe._RemoteTraceback)
    assert "raise KeyError" in exc.__cause__.tb


# Parameter names (and order) that callers pass positionally or by keyword.
SIGNATURES = [
    (
        "loky.process_executor:ProcessPoolExecutor",
        "max_workers job_reducers result_reducers timeout context initializer "
        "initargs env",
    ),
    ("loky.process_executor:ProcessPoolExecutor.shutdown", "self wait kill_workers"),
    ("loky.process_executor:ProcessPoolExecutor.submit", "self fn *args **kwargs"),
    ("loky.process_executor:ProcessPoolExecutor.map", "self fn *iterables **kwargs"),
    (
        "loky.process_executor:_process_worker",
        "call_queue result_queue initializer initargs processes_management_lock "
        "timeout worker_exit_lock current_depth",
    ),
    (
        "loky.process_executor:_SafeQueue",
        "max_size ctx pending_work_items running_work_items thread_wakeup "
        "shutdown_lock executor_flags reducers",
    ),
    ("loky.process_executor:_WorkItem", "future fn args kwargs"),
    ("loky.process_executor:_ResultItem", "work_id exception result"),
    ("loky.process_executor:_CallItem", "work_id fn args kwargs"),
    ("loky.process_executor:_ExecutorFlags", "shutdown_lock"),
    ("loky.process_executor:_ExecutorFlags.flag_as_shutting_down", "self kill_workers"),
    ("loky.process_executor:_ExecutorFlags.flag_as_broken", "self"),
    ("loky.process_executor:_ExceptionWithTraceback", "exc"),
    ("loky.process_executor:_rebuild_exc", "exc tb"),
    ("loky.process_executor:_RemoteTraceback", "tb"),
    ("loky.process_executor:_process_chunk", "fn chunk"),
    ("loky.process_executor:_sendback_result", "result_queue work_id result exception"),
    ("loky.process_executor:_check_max_depth", "context"),
    ("loky.process_executor:_get_memory_usage", "pid force_gc"),
    ("loky.process_executor:_ExecutorManagerThread", "executor"),
    (
        "loky.reusable_executor:get_reusable_executor",
        "max_workers context timeout kill_workers reuse job_reducers "
        "result_reducers initializer initargs env",
    ),
    (
        "loky.reusable_executor:_ReusablePoolExecutor",
        "max_workers context timeout executor_id job_reducers result_reducers "
        "initializer initargs env",
    ),
    (
        "loky.reusable_executor:_ReusablePoolExecutor.get_reusable_executor",
        "max_workers context timeout kill_workers reuse job_reducers "
        "result_reducers initializer initargs env",
    ),
    ("loky.reusable_executor:_ReusablePoolExecutor._resize", "self max_workers"),
    ("loky.backend.context:cpu_count", "only_physical_cores"),
    ("loky.backend.context:get_context", "method"),
    ("loky.backend.context:set_start_method", "method force"),
    ("loky.backend:get_context", "method"),
    (
        "loky.backend.process:LokyProcess",
        "group target name args kwargs daemon init_main_module env",
    ),
    (
        "loky.backend.process:LokyInitMainProcess",
        "group target name args kwargs daemon",
    ),
    ("loky.backend.spawn:get_preparation_data", "name init_main_module"),
    ("loky.backend.spawn:prepare", "data parent_sentinel"),
    ("loky.backend.fork_exec:fork_exec", "cmd keep_fds env"),
    ("loky.backend.queues:Queue", "maxsize reducers ctx"),
    ("loky.backend.queues:SimpleQueue", "reducers ctx"),
    ("loky.backend.reduction:dump", "obj file reducers protocol"),
    ("loky.backend.reduction:dumps", "obj reducers protocol"),
    ("loky.backend.reduction:set_loky_pickler", "loky_pickler"),
    ("loky.backend.utils:kill_process_tree", "process use_psutil"),
    ("loky.backend.utils:recursive_terminate", "process use_psutil"),
    ("loky.backend.utils:get_exitcodes_terminated_worker", "processes"),
    ("loky.backend.resource_tracker:main", "fd verbose"),
    ("loky.backend.resource_tracker:spawnv_passfds", "path args passfds"),
    ("loky.cloudpickle_wrapper:CloudpickledObjectWrapper", "obj keep_wrapper"),
    ("loky.cloudpickle_wrapper:wrap_non_picklable_objects", "obj keep_wrapper"),
    ("loky.cloudpickle_wrapper:_wrap_non_picklable_objects", "obj keep_wrapper"),
    ("loky.initializers:_prepare_initializer", "initializer initargs"),
]


def _signature_names(sig):
    names = []
    for p in sig.parameters.values():
        if p.kind is p.VAR_POSITIONAL:
            names.append("*" + p.name)
        elif p.kind is p.VAR_KEYWORD:
            names.append("**" + p.name)
        elif p.kind is not p.KEYWORD_ONLY:
            names.append(p.name)
    return names


@pytest.mark.parametrize("target, params", SIGNATURES, ids=[t for t, _ in SIGNATURES])
def test_signature_prefix(target, params):
    import inspect

    module_name, _, qualname = target.partition(":")
    obj = importlib.import_module(module_name)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    expected = params.split()
    actual = _signature_names(inspect.signature(obj))
    # Extra trailing parameters (e.g. pickle_check) are allowed.
    assert actual[: len(expected)] == expected, actual
