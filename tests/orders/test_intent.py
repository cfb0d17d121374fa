"""Decision -> intent: exact decimals, deterministic ids, takeProfitPct / stopLossPct defaults."""

from __future__ import annotations

from decimal import Decimal as D

import pytest

from tradebotd.model import Candle, Decision
from tradebotd.orders.intent import LevelDefaults, level_defaults, order_intent
from tradebotd.orders.model import client_order_id

CANDLE = Candle("BTCUSDT", "1m", 60_000, D("100"), D("100"), D("100"), D("200"), D("1"))


def test_floats_become_the_decimals_they_print_as_and_the_id_names_strategy_candle_and_side() -> None:
    intent = order_intent(Decision("buy", amount=0.1, take_profit=110.1, stop_loss=95.3), strategy_id="s1",
                          portfolio_id="p", candle=CANDLE)
    assert (intent.amount, intent.take_profit, intent.stop_loss) == (D("0.1"), D("110.1"), D("95.3"))
    assert intent.client_order_id == client_order_id("s1", 60_000, "buy")
    assert (intent.reference_price, intent.candle_time, intent.type, intent.limit_price) == (D("200"), 60_000,
                                                                                           "market", None)
    limit = order_intent(Decision("sell", order_type="limit", limit_price=210.5), strategy_id="s1", portfolio_id="p",
                         candle=CANDLE)
    assert (limit.type, limit.limit_price, limit.side) == ("limit", D("210.5"), "sell")
    with pytest.raises(ValueError):
        order_intent(Decision("hold"), strategy_id="s1", portfolio_id="p", candle=CANDLE)


def test_percent_parameters_set_a_buys_levels_unless_the_result_names_them() -> None:
    defaults = level_defaults({"takeProfitPct": 5, "stopLossPct": 2.5, "fast": 3})
    assert defaults == LevelDefaults(D("5.0"), D("2.5"))
    intent = order_intent(Decision("buy"), strategy_id="s1", portfolio_id="p", candle=CANDLE, defaults=defaults)
    assert (intent.take_profit, intent.stop_loss) == (D("210"), D("195"))
    own = order_intent(Decision("buy", take_profit=250.0), strategy_id="s1", portfolio_id="p", candle=CANDLE,
                       defaults=defaults)
    assert (own.take_profit, own.stop_loss) == (D("250.0"), D("195"))
    sell = order_intent(Decision("sell"), strategy_id="s1", portfolio_id="p", candle=CANDLE, defaults=defaults)
    assert (sell.take_profit, sell.stop_loss) == (None, None)
    assert level_defaults({"fast": 3}) is None


@pytest.mark.parametrize(
    ("parameters", "message"),
    [
        ({"takeProfitPct": "5"}, "takeProfitPct must be a number"),
        ({"takeProfitPct": True}, "takeProfitPct must be a number"),
        ({"takeProfitPct": 0}, "takeProfitPct must be above 0"),
        ({"stopLossPct": 100}, "stopLossPct must be between 0 and 100"),
        ({"stopLossPct": float("nan")}, "stopLossPct must be a number"),
    ],
)
def test_bad_percent_parameters_are_refused_by_name(parameters: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        level_defaults(parameters)
