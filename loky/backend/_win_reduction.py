"""Windows reducers: sockets and (Pipe)Connections reuse the stdlib's reducers.

Only imported on Windows; the stdlib already knows how to duplicate handles for a
child (``DupHandle``) and how to share sockets (``socket.share``).
"""

from __future__ import annotations

import socket
from multiprocessing import connection
from multiprocessing.reduction import _reduce_socket, duplicate


def _mk_inheritable(fd: int) -> int:
    """Handles are made inheritable by the launcher on Windows: nothing to do."""
    return fd


def _platform_reducers() -> dict:
    """Reducers ``reduction`` pre-registers on Windows."""
    import _socket

    reducers = {
        socket.socket: _reduce_socket,
        connection.Connection: connection.reduce_connection,
        connection.PipeConnection: connection.reduce_pipe_connection,
    }
    if _socket.socket is not socket.socket:
        reducers[_socket.socket] = _reduce_socket
    return reducers


__all__ = ["duplicate", "_mk_inheritable"]
