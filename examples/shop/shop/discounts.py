"""Discount rules, built from the marketing team's campaign settings."""

from __future__ import annotations

from collections.abc import Callable

from .models import Order


def make_discount_rule(
    percent: float, min_quantity: int = 1
) -> Callable[[Order], float]:
    """A rule giving ``percent`` off orders of at least ``min_quantity`` items."""

    # Mistake: a nested function. Standard pickle stores functions by name and
    # `make_discount_rule.<locals>.rule` is no name a worker can import.
    def rule(order: Order) -> float:
        if order.quantity >= min_quantity:
            return order.subtotal * percent / 100
        return 0.0

    return rule


def no_discount(order: Order) -> float:
    return 0.0
