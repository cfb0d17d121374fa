"""Decision -> order: amounts, rounding with the market's precision, minimums, the cap hook."""

from __future__ import annotations

from decimal import Decimal as D

import pytest

from orders.binance import rules
from tradebotd.model import Position, StreamKey
from tradebotd.orders.ledger import Holding
from tradebotd.orders.model import MarketRules, OrderIntent, OrderRequest, client_order_id
from tradebotd.orders.validate import OrderPolicy, Refusal, max_quote_cap, validate

KEY = StreamKey("BTCUSDT", "1m")
T = 1700000040000
BTC = rules("exchange_info_btcusdt")
POLICY = OrderPolicy(D("0.001"))


def intent(side: str = "buy", amount: str | None = None, close: str = "42000", **kw: object) -> OrderIntent:
    return OrderIntent(client_order_id("s1", T, side), "s1", "p", KEY, side, None if amount is None else D(amount),  # type: ignore[arg-type]
                       D(close), T, **kw)  # type: ignore[arg-type]


def held(amount: str) -> Holding:
    return Holding("p", KEY, Position(D(amount), D("40000"), T))


def check(i: OrderIntent, holding: Holding | None = None, r: MarketRules = BTC, **kw: object) -> OrderRequest | Refusal:
    return validate(i, holding=holding, rules=r, policy=POLICY, **kw)  # type: ignore[arg-type]


def test_exchange_info_becomes_rules() -> None:
    assert (BTC.amount_step, BTC.price_tick, BTC.min_amount, BTC.min_notional) == (
        D("0.00001"), D("0.01"), D("0.00001"), D("5")
    )
    assert BTC.trading and not rules("exchange_info_halted").trading


def test_a_buy_gets_the_default_amount_and_its_amount_is_rounded_down_to_the_step() -> None:
    request = check(intent())
    assert isinstance(request, OrderRequest)
    assert (request.amount, request.leg, request.type, request.limit_price) == (D("0.00100"), "entry", "market", None)
    request = check(intent(amount="0.0012399"))
    assert isinstance(request, OrderRequest) and str(request.amount) == "0.00123"  # as it is sent
    odd = MarketRules("X", "X", "USDT", D("0.005"), D("0.01"))  # a step that is not a power of ten
    request = check(intent(amount="0.0149"), r=odd)
    assert isinstance(request, OrderRequest) and request.amount == D("0.010")


def test_a_sell_sells_the_whole_position_on_the_step_or_less_when_asked() -> None:
    request = check(intent("sell"), held("0.0019980"))
    assert isinstance(request, OrderRequest) and (request.amount, request.leg) == (D("0.00199"), "exit")
    request = check(intent("sell", amount="0.5"), held("0.002"))
    assert isinstance(request, OrderRequest) and request.amount == D("0.002")


def test_refusals_say_why() -> None:
    cases = [
        (check(intent("sell")), "ignored", "sell while flat: nothing to close"),
        (check(intent(amount="0.000001")), "rejected", "amount rounds to zero at 5 decimals"),
        (check(intent(amount="0.0001", close="42000")), "rejected",
         "order value 4.2 USDT is below the market's minimum of 5 USDT"),
        (check(intent("sell"), held("0.000009")), "rejected",
         "the position (0.000009) is dust: less than the market's quantity step (0.00001); it cannot be sold"),
        (check(intent(amount="1e13")), "rejected", "amount 1E+13 is not a plausible quantity"),
        (check(intent(amount="10000")), "rejected", "amount 10000.00000 is above the market's maximum quantity 9000"),
        (check(intent(), r=rules("exchange_info_halted")), "rejected", "LUNAUSDT is not trading on the exchange now"),
        (check(intent(type="limit")), "rejected", "a limit order needs a positive limitPrice"),
        (check(intent(type="limit", limit_price=D("0.001"))), "rejected", "limitPrice rounds to zero at the tick 0.01"),
    ]
    for refusal, outcome, reason in cases:
        assert isinstance(refusal, Refusal), reason
        assert refusal.outcome == outcome and refusal.reason.startswith(reason), (refusal.reason, reason)
    luna = rules("exchange_info_halted")
    small = check(intent(amount="0.001"), r=MarketRules("X", "X", "USDT", D("0.00001"), D("0.01"), D("0.01")))
    assert isinstance(small, Refusal) and small.reason == "amount 0.00100 is below the market's minimum quantity 0.01"
    assert luna.min_notional == D("10")


def test_prices_round_so_an_order_is_never_worse_than_asked() -> None:
    buy = check(intent(amount="0.001", type="limit", limit_price=D("41000.129"), take_profit=D("46000.009"),
                       stop_loss=D("40000.001")))
    assert isinstance(buy, OrderRequest)
    assert (buy.limit_price, buy.take_profit, buy.stop_loss) == (D("41000.12"), D("46000.00"), D("40000.01"))
    sell = check(intent("sell", type="limit", limit_price=D("43000.001")), held("0.001"))
    assert isinstance(sell, OrderRequest) and sell.limit_price == D("43000.01")


def test_the_minimum_notional_of_a_limit_order_uses_its_limit_price() -> None:
    refusal = check(intent(amount="0.00013", close="42000", type="limit", limit_price=D("38000")))
    assert isinstance(refusal, Refusal) and "order value 4.94 USDT" in refusal.reason
    assert isinstance(check(intent(amount="0.00013", close="42000")), OrderRequest)  # 5.46 at the close


@pytest.mark.parametrize(("amount", "refused"), [("0.02", False), ("0.03", True)])
def test_the_cap_refuses_entries_worth_more_than_the_limit(amount: str, refused: bool) -> None:
    cap = max_quote_cap(D("1000"))
    result = check(intent(amount=amount), cap=cap)
    if refused:
        assert isinstance(result, Refusal) and result.reason == (
            "order value 1260 USDT is above the per-order cap of 1000 USDT (exchange.max_order_quote)"
        )
    else:
        assert isinstance(result, OrderRequest)
    assert isinstance(check(intent("sell"), held("1"), cap=cap), OrderRequest)  # exits are never capped


def test_a_strategy_holding_one_symbol_cannot_trade_another() -> None:
    other = Holding("p", StreamKey("ETHUSDT", "1m"), Position(D("1"), D("2000"), T))
    refusal = check(intent(), other)
    assert isinstance(refusal, Refusal) and "holds a ETHUSDT position" in refusal.reason
