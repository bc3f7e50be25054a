"""POSIX reducers for objects wrapping a file descriptor (sockets, Connections).

A file descriptor travels as a ``DupFd``: while a process is being spawned the
spawning Popen duplicates it for the child (``duplicate_for_child``); otherwise the
stdlib ``resource_sharer`` serves it over a Unix socket (SCM_RIGHTS), so sockets and
Pipe ends can also go through a ``SimpleQueue`` between live processes.
"""

from __future__ import annotations

import os
import socket
import sys
from multiprocessing.connection import Connection
from multiprocessing.context import get_spawning_popen

HAVE_SEND_HANDLE = (
    sys.platform == "win32"
    or (hasattr(socket, "CMSG_LEN") and hasattr(socket, "SCM_RIGHTS"))
    and hasattr(socket.socket, "sendmsg")
)


def _mk_inheritable(fd: int) -> int:
    """Mark ``fd`` inheritable so that an exec'ed child can use it; return it."""
    os.set_inheritable(fd, True)
    return fd


def DupFd(fd: int):
    """Return an object whose ``detach()`` gives a duplicate of ``fd`` in the receiver."""
    popen_obj = get_spawning_popen()
    if popen_obj is not None:
        return popen_obj.DupFd(popen_obj.duplicate_for_child(fd))
    if HAVE_SEND_HANDLE:
        from multiprocessing import resource_sharer

        return resource_sharer.DupFd(fd)
    raise TypeError(
        "Cannot pickle connection object. This object can only be passed when "
        "spawning a new process"
    )


def _reduce_socket(s: socket.socket):
    df = DupFd(s.fileno())
    return _rebuild_socket, (df, s.family, s.type, s.proto)


def _rebuild_socket(df, family, type_, proto) -> socket.socket:
    fd = df.detach()
    return socket.socket(family, type_, proto, fileno=fd)


def rebuild_connection(df, readable: bool, writable: bool) -> Connection:
    fd = df.detach()
    return Connection(fd, readable, writable)


def reduce_connection(conn: Connection):
    df = DupFd(conn.fileno())
    return rebuild_connection, (df, conn.readable, conn.writable)


def _platform_reducers() -> dict:
    """Reducers ``reduction`` pre-registers on POSIX."""
    import _socket

    reducers = {
        socket.socket: _reduce_socket,
        Connection: reduce_connection,
    }
    if _socket.socket is not socket.socket:
        reducers[_socket.socket] = _reduce_socket
    return reducers


__all__ = ["DupFd", "_mk_inheritable"]
