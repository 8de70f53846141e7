"""Python tool handlers used by the example flow ``flows/pizza_order.yaml``."""

from __future__ import annotations

from typing import Any

PRICES = {"small": 9.0, "medium": 12.0, "large": 15.0}
TOPPING_PRICE = 1.5


async def price_order(arguments: dict[str, Any]) -> dict[str, Any]:
    """Price a pizza order: size plus toppings; unknown sizes are an error the bot can say."""
    size = str(arguments.get("size", "")).lower()
    if size not in PRICES:
        return {"error": f"unknown size {size!r}; choose small, medium or large"}
    toppings = [str(t) for t in arguments.get("toppings", []) or []]
    quantity = max(1, int(arguments.get("quantity", 1) or 1))
    total = quantity * (PRICES[size] + TOPPING_PRICE * len(toppings))
    return {"size": size, "toppings": toppings, "quantity": quantity, "total": round(total, 2)}
