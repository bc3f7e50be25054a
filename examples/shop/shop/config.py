"""Settings shared by every settlement job."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field


@dataclass
class ShopConfig:
    currency: str = "EUR"
    vat_rate: float = 0.2
    rates: dict[str, float] = field(default_factory=lambda: {"EUR": 1.0, "USD": 1.08})
    # Mistake: a lock guarding the rate table travels with the config. A lock
    # belongs to one process; no pickler can send it to a worker.
    rates_lock: threading.Lock = field(default_factory=threading.Lock)

    def convert(self, amount: float, currency: str) -> float:
        with self.rates_lock:
            return amount * self.rates[currency] / self.rates[self.currency]
