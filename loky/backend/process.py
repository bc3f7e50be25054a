"""Process classes started by loky's own launchers (fork+exec on POSIX)."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Mapping
from multiprocessing.context import get_spawning_popen
from multiprocessing.process import BaseProcess
from typing import Any

__all__ = ["LokyProcess", "LokyInitMainProcess", "AuthenticationKey"]


class LokyProcess(BaseProcess):
    """A ``multiprocessing`` process started in a fresh interpreter.

    ``env`` holds environment variables set in the child before its
    interpreter starts (``{**os.environ, **env}``). With
    ``init_main_module=False`` (the default) the parent's ``__main__`` is not
    re-run in the child.
    """

    _start_method = "loky"

    def __init__(
        self,
        group: None = None,
        target: Callable[..., Any] | None = None,
        name: str | None = None,
        args: Iterable[Any] = (),
        kwargs: Mapping[str, Any] = {},  # noqa: B006 - BaseProcess signature
        daemon: bool | None = None,
        init_main_module: bool = False,
        env: Mapping[str, str] | None = None,
    ):
        super().__init__(
            group=group,
            target=target,
            name=name,
            args=args,
            kwargs=kwargs,
            daemon=daemon,
        )
        self.env = {} if env is None else env
        # Re-wrap the inherited key so that it can only be pickled while
        # spawning this process.
        self.authkey = self.authkey
        self.init_main_module = init_main_module

    @staticmethod
    def _Popen(process_obj: LokyProcess):
        if sys.platform == "win32":
            from .popen_loky_win32 import Popen
        else:
            from .popen_loky_posix import Popen
        return Popen(process_obj)

    @property
    def authkey(self) -> AuthenticationKey:
        return self._config["authkey"]

    @authkey.setter
    def authkey(self, authkey: bytes) -> None:
        self._config["authkey"] = AuthenticationKey(authkey)


class LokyInitMainProcess(LokyProcess):
    """A :class:`LokyProcess` that re-runs the parent's ``__main__`` module
    (as ``__mp_main__``) in the child, like the ``spawn`` start method."""

    _start_method = "loky_init_main"

    def __init__(
        self,
        group: None = None,
        target: Callable[..., Any] | None = None,
        name: str | None = None,
        args: Iterable[Any] = (),
        kwargs: Mapping[str, Any] = {},  # noqa: B006 - BaseProcess signature
        daemon: bool | None = None,
    ):
        super().__init__(
            group=group,
            target=target,
            name=name,
            args=args,
            kwargs=kwargs,
            daemon=daemon,
            init_main_module=True,
        )


class AuthenticationKey(bytes):
    """Process authentication key that refuses to be pickled except to be
    sent to a child being spawned."""

    def __reduce__(self):
        if get_spawning_popen() is None:
            raise TypeError(
                "Pickling an AuthenticationKey object is "
                "disallowed for security reasons"
            )
        return AuthenticationKey, (bytes(self),)
