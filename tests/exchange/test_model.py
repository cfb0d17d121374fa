"""Market rules: rounding on the exchange's grid, and the refusals checked before sending."""

from __future__ import annotations

from decimal import ROUND_DOWN, ROUND_UP
from decimal import Decimal as D

from tradebotd.exchange.model import MarketRules


def rules(**overrides: object) -> MarketRules:
    fields: dict[str, object] = {
        "symbol": "BTCUSDT",
        "base": "BTC",
        "quote": "USDT",
        "status": "TRADING",
        "trading": True,
        "amount_step": D("0.00001000"),
        "min_amount": D("0.00001000"),
        "max_amount": D("9000"),
        "price_tick": D("0.01000000"),
        "min_price": D("0.01"),
        "max_price": D("1000000"),
        "min_notional": D("5.00000000"),
        **overrides,
    }
    return MarketRules(**fields)  # type: ignore[arg-type]


def test_amounts_round_down_to_the_step_with_its_decimals() -> None:
    r = rules()
    assert str(r.round_amount(D("0.00012345"))) == "0.00012"
    assert str(r.round_amount(D("0.00999999"))) == "0.00999"
    assert str(r.round_amount(D("1"))) == "1.00000"
    assert r.round_amount(D("0.000009")) == 0
    assert str(rules(amount_step=D("1")).round_amount(D("12.9"))) == "12"


def test_prices_round_to_the_tick_in_the_direction_asked() -> None:
    r = rules()
    assert str(r.round_price(D("41000.125"))) == "41000.12"  # half-even
    assert str(r.round_price(D("41000.125"), ROUND_UP)) == "41000.13"
    assert str(r.round_price(D("41000.129"), ROUND_DOWN)) == "41000.12"
    assert str(r.round_price(D("43000"))) == "43000.00"


def test_refusals_before_sending() -> None:
    r = rules()
    assert r.refusal(D("0.001"), D("42000"), market=True) is None
    assert (
        r.refusal(D("0.000123"), D("42000"), market=True)
        == "amount 0.000123 is not a positive multiple of the step 0.00001"
    )
    assert r.refusal(D("0.0001"), D("42000"), market=True) == "notional 4.2 USDT is below the minimum 5"
    assert r.refusal(D("0.0001"), D("42000"), market=True) != rules(min_notional_for_market=False).refusal(
        D("0.0001"), D("42000"), market=True
    )
    assert r.refusal(D("0.001"), D("42000.005"), market=False) == "price 42000.005 is not on the tick 0.01"
    assert (
        rules(trading=False, status="HALT").refusal(D("1"), D("1"), market=True)
        == "BTCUSDT is not trading (status HALT)"
    )
