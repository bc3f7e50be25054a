"""pytest_loky: the pytest plugin behind ``pytest --loky-picklecheck``.

Registered through the ``pytest11`` entry point (``pytest_loky.plugin``);
disable it with ``-p no:pytest_loky``. It checks every call a test sends to a
process pool with the ``loky_check`` engine and reports, per test and call
site, which argument cannot cross the process boundary, where, why and how to
fix it. Nothing is imported beyond pytest until a check mode is on.
"""

__version__ = "0.1.0"
