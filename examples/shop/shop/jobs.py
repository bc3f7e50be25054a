"""The work the nightly settlement sends to loky workers."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import IO

from .config import ShopConfig
from .discounts import no_discount
from .models import Order


def settle_orders(
    orders: list[Order],
    config: ShopConfig,
    *,
    discount: Callable[[Order], float] = no_discount,
    on_progress: Callable[[int], None] | None = None,
    audit_log: IO[str] | None = None,
    receipt: Callable[[Order, float], str] = str,
) -> list[str]:
    """Total each order (VAT, discount), log it, and return the receipts."""
    receipts = []
    for done, order in enumerate(orders, 1):
        total = (order.subtotal - discount(order)) * (1 + config.vat_rate)
        if audit_log is not None:
            audit_log.write(f"{order.order_id}\t{total:.2f}\n")
        receipts.append(receipt(order, total))
        if on_progress is not None:
            on_progress(done)
    return receipts


def receipts_by_customer(orders: list[Order]) -> Iterator[tuple[str, float]]:
    """Mistake when run in a worker: the result is a generator, which cannot be
    pickled back to the parent."""
    return ((order.customer, order.subtotal) for order in orders)
