"""Nightly settlement: `python nightly.py` totals yesterday's orders on loky workers.

`nightly_calls()` builds the calls this script submits; `loky-check` uses it too:

    loky-check shop/jobs.py:settle_orders --args-from nightly.py:nightly_calls
"""

from __future__ import annotations

import os
import tempfile

from shop.config import ShopConfig
from shop.discounts import make_discount_rule
from shop.models import Order

AUDIT_PATH = os.path.join(tempfile.gettempdir(), "shop-nightly-audit.log")


def yesterdays_orders() -> list[Order]:
    return [
        Order(1001, "ada", "KB-01", 2, 49.0),
        Order(1002, "grace", "MS-07", 1, 19.5),
        Order(1003, "ada", "CB-12", 5, 7.25),
        Order(1004, "linus", "KB-01", 1, 49.0),
    ]


def nightly_calls():
    """The (args, kwargs) of each settle_orders call, one per batch of orders."""
    config = ShopConfig(currency="EUR")
    summer_sale = make_discount_rule(10, min_quantity=2)
    # Mistake: an open file handle. Workers need the path, not the handle.
    audit_log = open(AUDIT_PATH, "a")  # noqa: SIM115 - closed when the script ends
    orders = yesterdays_orders()
    batches = [orders[:2], orders[2:]]
    return [
        (
            (batch, config),
            {
                "discount": summer_sale,
                # Mistake: a lambda callback (standard pickle cannot store it).
                "on_progress": lambda done: print(f"settled {done} orders"),
                "audit_log": audit_log,
                "receipt": format_receipt,
            },
        )
        for batch in batches
    ]


if __name__ == "__main__":
    from shop.jobs import settle_orders

    from loky import get_reusable_executor

    # Mistake: defined under the __main__ guard, so it lives in `__main__`; a
    # worker (whose __main__ is not this script) cannot load it by name.
    def format_receipt(order: Order, total: float) -> str:
        return f"#{order.order_id} {order.customer}: {total:.2f} EUR"

    executor = get_reusable_executor(max_workers=2)
    futures = [executor.submit(settle_orders, *a, **kw) for a, kw in nightly_calls()]
    for future in futures:
        print("\n".join(future.result()))
