"""The stand-in's account and price driver, without I/O: fills, fees, locks, stops, OCO, partial fills."""

from __future__ import annotations

from decimal import Decimal as D

import pytest

from tradebotd.replay.exchange import SymbolSpec
from tradebotd.replay.exchange.matching import INSUFFICIENT, Account, NewOcoLeg, NewOrder, Refusal

from .conftest import btc, make_account


def market(side: str, qty: str, cid: str = "m1") -> NewOrder:
    return NewOrder("BTCUSDT", side, "MARKET", cid, quantity=D(qty))


def limit(side: str, qty: str, price: str, cid: str = "l1", type_: str = "LIMIT") -> NewOrder:
    tif = "GTC" if type_ == "LIMIT" else None
    return NewOrder("BTCUSDT", side, type_, cid, quantity=D(qty), price=D(price), time_in_force=tif)


def oco(account: Account, qty: str = "0.01", tp: str = "43000.00", sl: str = "41000.00", sl_limit: str | None = None):  # type: ignore[no-untyped-def]
    below = (
        NewOcoLeg("STOP_LOSS_LIMIT", "sl", price=D(sl_limit), stop_price=D(sl), time_in_force="GTC")
        if sl_limit
        else NewOcoLeg("STOP_LOSS", "sl", stop_price=D(sl))
    )
    return account.place_oco("BTCUSDT", "SELL", D(qty), "list", NewOcoLeg("LIMIT_MAKER", "tp", price=D(tp)), below)


def test_market_buy_fills_at_the_price_fee_in_the_base_asset() -> None:
    account = make_account()
    order = account.place(market("BUY", "0.01"))
    assert (order.status, order.executed, order.cum_quote) == ("FILLED", D("0.01"), D("420.00"))
    [fill] = order.fills
    assert (fill.price, fill.commission, fill.commission_asset, fill.is_maker) == (
        D("42000.00"),
        D("0.00001"),
        "BTC",
        False,
    )
    assert account.free["BTC"] == D("0.00999")  # the fee comes out of what was bought
    assert account.free["USDT"] == D("9580.00")


def test_fee_in_quote_mode_is_charged_in_quote_on_buys() -> None:
    account = make_account(fee_mode="quote")
    account.place(market("BUY", "0.01"))
    assert account.free["BTC"] == D("0.01")
    assert account.free["USDT"] == D("10000") - D("420.00") - D("0.42")


def test_insufficient_balance_and_market_closed_are_refused() -> None:
    account = make_account([btc(), SymbolSpec.named("ETHUSDT", status="BREAK")])
    with pytest.raises(Refusal) as err:
        account.place(market("BUY", "1"))
    assert (err.value.code, err.value.msg) == (-2010, INSUFFICIENT)
    with pytest.raises(Refusal) as err:
        account.place(market("SELL", "0.001"))
    assert err.value.msg == INSUFFICIENT
    with pytest.raises(Refusal) as err:
        account.place(NewOrder("ETHUSDT", "BUY", "MARKET", "e", quantity=D("0.01")))
    assert (err.value.code, err.value.msg) == (-2010, "Market is closed.")


@pytest.mark.parametrize(
    ("qty", "price", "failure"),
    [
        ("0.000123", "41000.00", "Filter failure: LOT_SIZE"),  # not a multiple of the step 0.00001
        ("0.000001", "41000.00", "Filter failure: LOT_SIZE"),  # below minQty
        ("0.01", "41000.005", "Filter failure: PRICE_FILTER"),  # not on the tick 0.01
        ("0.0001", "41000.00", "Filter failure: NOTIONAL"),  # 4.1 < minNotional 5
    ],
)
def test_filters(qty: str, price: str, failure: str) -> None:
    with pytest.raises(Refusal) as err:
        make_account().place(limit("BUY", qty, price))
    assert (err.value.code, err.value.msg) == (-1013, failure)


def test_a_market_order_judges_notional_at_the_current_price() -> None:
    account = make_account()
    with pytest.raises(Refusal, match="NOTIONAL"):
        account.place(market("BUY", "0.0001"))  # 4.2 USDT
    account.place(market("BUY", "0.00012"))  # 5.04 USDT


def test_quote_order_qty_rounds_the_quantity_down_to_the_step() -> None:
    order = make_account().place(NewOrder("BTCUSDT", "BUY", "MARKET", "q", quote_order_qty=D("100")))
    assert order.quantity == D("0.00238")  # 100 / 42000 = 0.002380952...
    assert order.orig_quote_qty == D("100")


def test_a_resting_limit_locks_funds_fills_at_its_price_and_releases_the_rest() -> None:
    account = make_account()
    order = account.place(limit("BUY", "0.01", "41000.00"))
    assert order.status == "NEW" and order.resting
    assert (account.free["USDT"], account.locked["USDT"]) == (D("9590.00"), D("410.00"))
    assert account.set_price("BTCUSDT", D("41500.00")) == []
    [trade] = account.set_price("BTCUSDT", D("40900.00"))
    assert (trade.price, trade.is_maker) == (D("41000.00"), True)  # its own price, not the gap's
    assert order.status == "FILLED"
    assert account.locked["USDT"] == 0 and account.free["USDT"] == D("9590.00")


def test_a_marketable_limit_fills_at_once_at_the_better_price() -> None:
    account = make_account()
    order = account.place(limit("BUY", "0.01", "43000.00"))
    assert order.status == "FILLED" and order.fills[0].price == D("42000.00")
    assert account.locked["USDT"] == 0 and account.free["USDT"] == D("9580.00")


def test_limit_maker_that_would_take_and_stop_that_would_trigger_are_refused() -> None:
    account = make_account(balances={"BTC": D("1"), "USDT": D("0")})
    with pytest.raises(Refusal, match="Order would immediately match and take"):
        account.place(limit("SELL", "0.01", "41000.00", type_="LIMIT_MAKER"))
    with pytest.raises(Refusal, match="Order would trigger immediately"):
        account.place(NewOrder("BTCUSDT", "SELL", "STOP_LOSS", "s", quantity=D("0.01"), stop_price=D("43000.00")))


def test_client_order_id_is_unique_among_open_orders_only() -> None:
    account = make_account()
    account.place(limit("BUY", "0.01", "41000.00", cid="same"))
    with pytest.raises(Refusal) as err:
        account.place(limit("BUY", "0.01", "40000.00", cid="same"))
    assert (err.value.code, err.value.msg) == (-2010, "Duplicate order sent.")
    account.set_price("BTCUSDT", D("41000.00"))  # the first fills
    again = account.place(limit("BUY", "0.01", "40000.00", cid="same"))  # Binance accepts a reuse now
    assert account.find_order("BTCUSDT", order_id=None, client_order_id="same") is again


def test_cancel_releases_the_lock_and_twice_is_unknown_order() -> None:
    account = make_account()
    order = account.place(limit("BUY", "0.01", "41000.00"))
    account.cancel(order)
    assert order.status == "CANCELED"
    assert (account.free["USDT"], account.locked["USDT"]) == (D("10000"), 0)
    with pytest.raises(Refusal) as err:
        account.cancel(order)
    assert (err.value.code, err.value.msg) == (-2011, "Unknown order sent.")


def test_oco_take_profit_fills_and_the_stop_expires() -> None:
    account = make_account(balances={"BTC": D("0.01")})
    order_list = oco(account)
    sl, tp = order_list.orders
    assert (sl.type, tp.type) == ("STOP_LOSS", "LIMIT_MAKER")  # below first, as Binance lists them
    assert (account.free["BTC"], account.locked["BTC"]) == (0, D("0.01"))  # one lock for both legs
    assert sl.working_time == -1 and tp.working_time != -1
    [trade] = account.set_price("BTCUSDT", D("43000.00"))
    assert (trade.order_id, trade.price, trade.is_maker) == (tp.order_id, D("43000.00"), True)
    assert (tp.status, sl.status) == ("FILLED", "EXPIRED")
    assert (order_list.list_status_type, order_list.list_order_status) == ("ALL_DONE", "ALL_DONE")
    assert account.locked["BTC"] == 0 and account.free["USDT"] == D("430") - D("0.43")


def test_oco_stop_triggers_fills_at_the_market_and_the_take_profit_expires() -> None:
    account = make_account(balances={"BTC": D("0.01")})
    sl, tp = oco(account).orders
    [trade] = account.set_price("BTCUSDT", D("40500.00"))  # gapped through the stop
    assert (trade.order_id, trade.price, trade.is_maker) == (sl.order_id, D("40500.00"), False)
    assert (sl.status, tp.status) == ("FILLED", "EXPIRED")
    assert sl.working_time != -1


def test_oco_stop_limit_below_its_limit_rests_until_the_price_comes_back() -> None:
    account = make_account(balances={"BTC": D("0.01")})
    sl, tp = oco(account, sl="41000.00", sl_limit="40900.00").orders
    assert account.set_price("BTCUSDT", D("40800.00")) == []  # triggered, but 40800 < limit 40900
    assert (sl.triggered, sl.status, tp.status) == (True, "NEW", "EXPIRED")
    [trade] = account.set_price("BTCUSDT", D("40950.00"))
    assert (trade.price, trade.is_maker, sl.status) == (D("40900.00"), True, "FILLED")


def test_cancelling_one_leg_cancels_the_list() -> None:
    account = make_account(balances={"BTC": D("0.01")})
    order_list = oco(account)
    sl, tp = order_list.orders
    assert account.cancel(tp) == [sl, tp]
    assert (sl.status, tp.status, order_list.list_order_status) == ("CANCELED", "CANCELED", "ALL_DONE")
    assert (account.free["BTC"], account.locked["BTC"]) == (D("0.01"), 0)


@pytest.mark.parametrize(
    ("above", "below", "code"),
    [
        ("STOP_LOSS", "STOP_LOSS", -1197),
        ("LIMIT_MAKER", "LIMIT_MAKER", -1168),
        ("LIMIT", "STOP_LOSS", -1158),
        ("LIMIT_MAKER", "TAKE_PROFIT", -1199),
    ],
)
def test_oco_leg_types_are_checked(above: str, below: str, code: int) -> None:
    account = make_account(balances={"BTC": D("1")})
    with pytest.raises(Refusal) as err:
        account.place_oco(
            "BTCUSDT",
            "SELL",
            D("0.01"),
            "list",
            NewOcoLeg(above, "a", price=D("43000.00"), stop_price=D("43000.00")),
            NewOcoLeg(below, "b", price=D("41000.00"), stop_price=D("41000.00")),
        )
    assert err.value.code == code


def test_oco_prices_must_straddle_the_market() -> None:
    account = make_account(balances={"BTC": D("1")})
    with pytest.raises(Refusal) as err:
        oco(account, tp="41500.00", sl="41000.00")
    assert (err.value.code, err.value.msg) == (-2010, "The relationship of the prices for the orders is not correct.")


def test_partial_fill_of_a_resting_order_arrives_over_several_price_updates() -> None:
    account = make_account(balances={"BTC": D("0.03")})
    account.arm_partial_fill(3)
    sl, tp = oco(account, qty="0.03").orders
    first = account.set_price("BTCUSDT", D("43000.00"))
    assert [t.qty for t in first] == [D("0.01")]
    assert (tp.status, sl.status) == ("PARTIALLY_FILLED", "EXPIRED")  # the sibling goes at the first fill
    assert account.set_price("BTCUSDT", D("43100.00"))[0].qty == D("0.01")
    [last] = account.set_price("BTCUSDT", D("43050.00"))
    assert last.qty == D("0.01") and tp.status == "FILLED"
    assert account.locked["BTC"] == 0 and account.free["BTC"] == 0


def test_partial_fill_of_a_market_order_expires_the_rest() -> None:
    account = make_account()
    account.arm_partial_fill(4)
    order = account.place(market("BUY", "0.04"))
    assert (order.status, order.executed) == ("EXPIRED", D("0.01"))
    assert account.free["USDT"] == D("10000") - D("420.00")
