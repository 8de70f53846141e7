"""The example flow's python tool prices orders and reports bad sizes as data."""

from bots.examples.pizza import price_order


async def test_price_order_totals_items():
    result = await price_order({"items": [{"size": "large", "topping": "ham", "quantity": 2},
                                          {"size": "small"}]})
    assert result["total"] == 2 * (15.0 + 1.5) + 9.0


async def test_price_order_unknown_size_is_an_error_value():
    assert "unknown size" in (await price_order({"items": [{"size": "huge"}]}))["error"]
    assert "no pizzas" in (await price_order({}))["error"]
