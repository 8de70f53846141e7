"""Python tool handlers used by the example flow ``flows/pizza_order.yaml``."""

from __future__ import annotations

from typing import Any

PRICES = {"small": 9.0, "medium": 12.0, "large": 15.0}
TOPPING_PRICE = 1.5


async def price_order(arguments: dict[str, Any]) -> dict[str, Any]:
    """Price an order: each item is a size, an optional topping and a quantity.

    Unknown sizes come back as an ``error`` the bot can say, never an exception.
    """
    items = arguments.get("items") or []
    if not isinstance(items, list) or not items:
        return {"error": "no pizzas in the order"}
    total = 0.0
    priced = []
    for item in items:
        size = str((item or {}).get("size", "")).lower()
        if size not in PRICES:
            return {"error": f"unknown size {size!r}; choose small, medium or large"}
        quantity = max(1, int(item.get("quantity", 1) or 1))
        topping = item.get("topping")
        price = quantity * (PRICES[size] + (TOPPING_PRICE if topping else 0.0))
        priced.append({"size": size, "topping": topping, "quantity": quantity, "price": price})
        total += price
    return {"items": priced, "total": round(total, 2), "currency": "USD"}
