"""Process targets for the launcher tests (no tests here).

They live in a module that imports neither pytest nor the test modules, so
that children (which import it to unpickle their target) start fast.
"""

import multiprocessing
import os
import sys

from loky.backend.process import LokyProcess


def report_identity(conn):
    parent = multiprocessing.parent_process()
    conn.send(
        {
            "start_method": multiprocessing.get_start_method(),
            "pid": os.getpid(),
            "name": multiprocessing.current_process().name,
            "parent_pid": parent.pid if parent is not None else None,
            "parent_alive": parent.is_alive() if parent is not None else None,
            "authkey": bytes(multiprocessing.current_process().authkey),
            "daemon": multiprocessing.current_process().daemon,
        }
    )
    conn.close()


def exit_with(code):
    sys.exit(code)


def raise_error():
    raise RuntimeError("boom from the child")


def block_on(conn):
    """Tell the parent we run, then block until killed."""
    conn.send("ready")
    conn.recv()


def echo_back(conn_in, conn_out):
    conn_out.send(("echo", conn_in.recv()))
    conn_in.close()
    conn_out.close()


def report_len(conn, payload):
    conn.send(len(payload))
    conn.close()


def report_env(conn, names):
    conn.send(
        {
            "env": {name: os.environ.get(name) for name in names},
            "hash_randomization": sys.flags.hash_randomization,
        }
    )
    conn.close()


def pipe_fds():
    """{fd: target} of the pipes this process holds, stdio excluded."""
    fds = {}
    for entry in os.listdir("/proc/self/fd"):
        fd = int(entry)
        try:
            target = os.readlink(f"/proc/self/fd/{entry}")
        except OSError:  # the fd of the listdir itself
            continue
        if fd > 2 and target.startswith("pipe:"):
            fds[fd] = target
    return fds


def report_fds(conn, extra_fd=None):
    fds = pipe_fds()
    has_extra = False
    if extra_fd is not None:
        try:
            os.fstat(extra_fd)
            has_extra = True
        except OSError:
            pass
    conn.send({"pipe_fds": fds, "conn_fd": conn.fileno(), "has_extra": has_extra})
    conn.close()


def start_grandchild(conn, depth):
    """Pass the Connection down a chain of LokyProcesses."""
    if depth == 0:
        conn.send(("leaf", os.getpid()))
    else:
        child = LokyProcess(target=start_grandchild, args=(conn, depth - 1))
        child.start()
        child.join()
        if child.exitcode != 0:
            conn.send(("failed", child.exitcode))
    conn.close()


def report_parent_death(conn_to_test, depth):
    """depth 1: start a grandchild then die; depth 0: wait for the parent's
    death through parent_process() and report it."""
    if depth == 1:
        child = LokyProcess(target=report_parent_death, args=(conn_to_test, 0))
        child.start()
        conn_to_test.close()
        os._exit(0)
    parent = multiprocessing.parent_process()
    parent.join(timeout=60)
    conn_to_test.send(("parent alive", parent.is_alive()))
    conn_to_test.close()


class Unpicklable:
    def __reduce__(self):
        return (_fail_to_rebuild, ())


def _fail_to_rebuild():
    raise RuntimeError("cannot rebuild in the child")


def nested_chain(conn, depth):
    """Report this pid, start the next level (a LokyProcess) and wait for it;
    the deepest level blocks until killed."""
    conn.send(os.getpid())
    if depth == 0:
        conn.recv()
        return
    child = LokyProcess(target=nested_chain, args=(conn, depth - 1))
    child.start()
    child.join()


def fork_grandchild_then_exit(conn):
    """Start a forked grandchild that blocks, report its pid, exit at once."""
    ctx = multiprocessing.get_context("fork")
    grandchild = ctx.Process(target=block_on, args=(conn,))
    grandchild.start()
    conn.send(grandchild.pid)
    os._exit(0)


def report_trackers(conn):
    """The resource trackers this child uses, and whether it started any."""
    from multiprocessing.resource_tracker import _resource_tracker as mp_tracker

    import psutil

    from loky.backend.resource_tracker import _resource_tracker

    conn.send(
        {
            "loky_fd": _resource_tracker.getfd(),
            "loky_pid": _resource_tracker._pid,
            "mp_fd": mp_tracker._fd,
            "children": len(psutil.Process().children()),
        }
    )
    conn.close()


def report_flags(conn):
    conn.send(
        {"ignore_environment": sys.flags.ignore_environment, "argv0": sys.argv[0]}
    )
    conn.close()
