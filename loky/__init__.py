"""loky: a robust, reusable process pool (drop-in loky 3.7)."""

__version__ = "3.7.0"
