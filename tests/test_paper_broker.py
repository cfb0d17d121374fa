"""Paper broker: fill prices, fees, cash, positions, protective levels, deterministic ids."""

from __future__ import annotations

import re
from decimal import Decimal as D

import pytest

from tradebotd.broker.base import Fill, Ignored, OrderIntent, Rejected, client_order_id
from tradebotd.broker.paper import PaperBroker
from tradebotd.model import Candle, StreamKey

KEY = StreamKey("BTCUSDT", "1m")


def broker(cash: str = "10000", fee: str = "0.001", slippage: str = "0") -> PaperBroker:
    return PaperBroker(fee_rate=D(fee), slippage_bps=D(slippage), default_amount=D("0.001"), cash={"p": D(cash)})


def intent(
    side: str,
    price: str,
    t: int = 60_000,
    amount: str | None = None,
    tp: str | None = None,
    sl: str | None = None,
    sid: str = "s1",
) -> OrderIntent:
    return OrderIntent(
        client_order_id=client_order_id(sid, t, side),  # type: ignore[arg-type]
        strategy_id=sid,
        portfolio_id="p",
        key=KEY,
        side=side,  # type: ignore[arg-type]
        amount=None if amount is None else D(amount),
        reference_price=D(price),
        candle_time=t,
        take_profit=None if tp is None else D(tp),
        stop_loss=None if sl is None else D(sl),
    )


def candle(t: int, high: str, low: str, close: str = "100", closed: bool = True) -> Candle:
    return Candle("BTCUSDT", "1m", t, D(close), D(high), D(low), D(close), D("1"), closed)


def test_client_order_id_is_deterministic_and_binance_compatible() -> None:
    a = client_order_id("0b7c6f1e-1111-4222-8333-944445555666", 1700000040000, "buy")
    assert a == client_order_id("0b7c6f1e-1111-4222-8333-944445555666", 1700000040000, "buy")
    assert a != client_order_id("0b7c6f1e-1111-4222-8333-944445555667", 1700000040000, "buy")
    assert a != client_order_id("0b7c6f1e-1111-4222-8333-944445555666", 1700000040000, "sell")
    for action in ("buy", "sell", "tp", "sl"):
        coid = client_order_id("x" * 36, 9_999_999_999_999, action)  # type: ignore[arg-type]
        assert re.fullmatch(r"[.A-Z:/a-z0-9_-]{1,36}", coid), coid


def test_buy_fills_at_close_with_fee_and_debits_cash() -> None:
    b = broker()
    fill = b.execute(intent("buy", "50000", amount="0.01"))
    assert isinstance(fill, Fill)
    assert (fill.price, fill.amount, fill.fee) == (D("50000"), D("0.01"), D("0.5"))
    assert b.cash("p") == D("10000") - D("500") - D("0.5")
    assert fill.cash_after == b.cash("p")
    pos = b.position("s1")
    assert pos is not None and pos.amount == D("0.01") and pos.entry_price == D("50000") and pos.entry_time == 60_000


def test_default_amount_when_result_has_none() -> None:
    fill = broker().execute(intent("buy", "100"))
    assert isinstance(fill, Fill) and fill.amount == D("0.001")


def test_slippage_moves_fills_against_the_trader() -> None:
    b = broker(slippage="10")  # 0.1 %
    buy = b.execute(intent("buy", "1000", amount="1"))
    sell = b.execute(intent("sell", "1000", t=120_000))
    assert isinstance(buy, Fill) and isinstance(sell, Fill)
    assert buy.price == D("1001") and sell.price == D("999")


def test_insufficient_cash_is_rejected_and_changes_nothing() -> None:
    b = broker(cash="100")
    out = b.execute(intent("buy", "50000", amount="0.01"))
    assert isinstance(out, Rejected) and "insufficient cash" in out.reason
    assert b.cash("p") == D("100") and b.position("s1") is None


def test_buy_adds_with_weighted_entry_price() -> None:
    b = broker()
    b.execute(intent("buy", "100", t=60_000, amount="1"))
    b.execute(intent("buy", "200", t=120_000, amount="3"))
    pos = b.position("s1")
    assert pos is not None
    assert pos.amount == D("4") and pos.entry_price == D("175") and pos.entry_time == 60_000


def test_sell_closes_all_by_default_and_credits_cash() -> None:
    b = broker(fee="0")
    b.execute(intent("buy", "100", amount="2"))
    fill = b.execute(intent("sell", "150", t=120_000))
    assert isinstance(fill, Fill) and fill.amount == D("2") and fill.position_after is None
    assert b.position("s1") is None
    assert b.cash("p") == D("10100")


def test_partial_sell_keeps_the_rest() -> None:
    b = broker(fee="0")
    b.execute(intent("buy", "100", amount="2"))
    fill = b.execute(intent("sell", "100", t=120_000, amount="0.5"))
    assert isinstance(fill, Fill) and fill.amount == D("0.5")
    pos = b.position("s1")
    assert pos is not None and pos.amount == D("1.5")


def test_sell_while_flat_is_ignored() -> None:
    out = broker().execute(intent("sell", "100"))
    assert isinstance(out, Ignored)


def test_amounts_round_down_to_eight_decimals() -> None:
    fill = broker().execute(intent("buy", "100", amount="0.123456789"))
    assert isinstance(fill, Fill) and fill.amount == D("0.12345678")
    assert isinstance(broker().execute(intent("buy", "100", amount="0.000000001")), Rejected)


@pytest.mark.parametrize(
    ("high", "low", "expect"),
    [("111", "95", "tp"), ("105", "89", "sl"), ("111", "89", "sl"), ("109", "91", None)],
)
def test_take_profit_and_stop_loss_touches(high: str, low: str, expect: str | None) -> None:
    b = broker(fee="0")
    b.execute(intent("buy", "100", t=60_000, amount="1", tp="110", sl="90"))
    fills = b.on_candle(candle(120_000, high, low))
    if expect is None:
        assert fills == [] and b.position("s1") is not None
        return
    (fill,) = fills
    assert fill.side == "sell" and fill.candle_time == 120_000
    assert fill.price == (D("110") if expect == "tp" else D("90"))
    assert fill.client_order_id == client_order_id("s1", 120_000, expect)  # type: ignore[arg-type]
    assert b.position("s1") is None


def test_levels_only_watch_later_candles() -> None:
    b = broker()
    b.execute(intent("buy", "100", t=60_000, amount="1", tp="101", sl="99"))
    assert b.on_candle(candle(60_000, "200", "1")) == []  # the signal candle itself
    assert b.on_candle(candle(120_000, "102", "100", closed=False))  # a later in-progress update


def test_levels_on_the_wrong_side_are_dropped_with_a_note() -> None:
    fill = broker().execute(intent("buy", "100", amount="1", tp="90", sl="120"))
    assert isinstance(fill, Fill)
    assert fill.position_after is not None
    assert fill.position_after.take_profit is None and fill.position_after.stop_loss is None
    assert len(fill.notes) == 2


def test_protected_keys_follow_open_positions_with_levels() -> None:
    b = broker()
    b.execute(intent("buy", "100", amount="1"))
    assert b.protected_keys() == set()
    b.execute(intent("buy", "100", t=120_000, amount="1", sl="50", sid="s2"))
    assert b.protected_keys() == {KEY}


@pytest.mark.parametrize("amount", ["1e300", "1e13", "Infinity"])
def test_absurd_amounts_are_rejected_not_errors(amount: str) -> None:
    b = broker()
    for side in ("buy", "sell"):
        out = b.execute(intent(side, "100", amount=amount))
        assert isinstance(out, (Rejected, Ignored)), out
    assert isinstance(b.execute(intent("buy", "100", amount=amount)), Rejected)
    assert b.cash("p") == D("10000")
