"""loky_check: say which argument of a call cannot cross a process boundary,
where inside it, why, and what to do.

Public names are loaded lazily so that ``import loky_check`` stays cheap (the
executor's check mode imports it on the submit path).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> submodule defining it
_EXPORTS = {
    "check_call": "engine",
    "check_object": "engine",
    "Report": "report",
    "Finding": "report",
    "check_return_value": "worker_probe",
    "diagnose_pickling_failure": "engine",
    "check_reducers": "reducers",
    "register_strategy": "reducers",
    "register_equality": "reducers",
    "ReducerResult": "reducers",
    "LokyPicklingWarning": "runtime",
    "PicklingCheckError": "runtime",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    try:
        module_name = _EXPORTS[name]
    except KeyError:
        raise AttributeError(f"module 'loky_check' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(f"{__name__}.{module_name}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
