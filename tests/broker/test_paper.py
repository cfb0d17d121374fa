"""Paper exchange: fill prices, fees, balances, positions, protection as a simulated OCO, limit
orders, deterministic ids; driven through the order desk as the backtest drives it."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from decimal import Decimal as D

import pytest

from tests.broker.intents import decision_intent
from tradebotd.broker.base import client_order_id
from tradebotd.broker.paper import PaperBroker
from tradebotd.model import Candle, Position, StreamKey
from tradebotd.orders.desk import Effects, OrderDesk, Venue, run_sync
from tradebotd.orders.ledger import Fill, Ledger
from tradebotd.orders.model import (
    Accepted,
    Cancelled,
    Filled,
    OrderRequest,
    ProtectRequest,
    Rejected,
)
from tradebotd.orders.validate import OrderPolicy, Refusal

KEY = StreamKey("BTCUSDT", "1m")


@dataclass
class Account:
    """The paper exchange behind an order desk (portfolio "p")."""

    broker: PaperBroker
    desk: OrderDesk
    outs: list[Effects] = field(default_factory=list)

    def order(
        self,
        side: str,
        price: str,
        t: int = 60_000,
        amount: str | None = None,
        tp: str | None = None,
        sl: str | None = None,
        sid: str = "s1",
        limit: str | None = None,
    ) -> Fill | Refusal | None:
        intent = decision_intent(
            sid, t, side, price, portfolio_id="p", key=KEY, amount=amount, tp=tp, sl=sl, limit=limit
        )
        out = Effects()
        job = self.desk.decide(intent, "paper", "now", out)
        if job is not None:
            out.jobs.append(("paper", job))
        run_sync(self.desk, self.broker, "now", out)
        self.outs.append(out)
        own = [f for f, _ in out.fills if f.client_order_id == intent.client_order_id]
        if own:
            return own[0]
        return out.refusals[0] if out.refusals else None

    def candle(self, t: int, high: str, low: str, close: str = "100", closed: bool = True) -> list[Fill]:
        self.broker.on_candle(Candle("BTCUSDT", "1m", t, D(close), D(high), D(low), D(close), D("1"), closed))
        out = Effects()
        run_sync(self.desk, self.broker, "now", out)
        self.outs.append(out)
        return [f for f, _ in out.fills]

    def position(self, sid: str = "s1") -> Position | None:
        return self.desk.position(sid)

    def cash(self) -> D:
        assert self.broker.cash("p") == self.desk.ledger.cash("p")  # the exchange and the ledger agree
        return self.desk.ledger.cash("p")


def account(cash: str = "10000", fee: str = "0.001", slippage: str = "0") -> Account:
    broker = PaperBroker(fee_rate=D(fee), slippage_bps=D(slippage), cash={"p": D(cash)})
    desk = OrderDesk(
        ledger=Ledger({"p": D(cash)}), policy=OrderPolicy(D("0.001")), venues={"paper": Venue("paper", broker.rules)}
    )
    return Account(broker, desk)


def test_client_order_id_is_deterministic_and_binance_compatible() -> None:
    a = client_order_id("0b7c6f1e-1111-4222-8333-944445555666", 1700000040000, "buy")
    assert a == client_order_id("0b7c6f1e-1111-4222-8333-944445555666", 1700000040000, "buy")
    assert a != client_order_id("0b7c6f1e-1111-4222-8333-944445555667", 1700000040000, "buy")
    assert a != client_order_id("0b7c6f1e-1111-4222-8333-944445555666", 1700000040000, "sell")
    for action in ("buy", "sell", "tp", "sl", "oco"):
        for attempt in (1, 2, 9) if action in ("tp", "sl", "oco") else (1,):
            coid = client_order_id("x" * 36, 9_999_999_999_999, action, attempt)  # type: ignore[arg-type]
            assert re.fullmatch(r"[.A-Z:/a-z0-9_-]{1,36}", coid), coid
    assert client_order_id("s", 1, "tp", 2).endswith("-tp-p2")
    for action, attempt in (("oco", 10), ("sell", 2)):
        with pytest.raises(ValueError):
            client_order_id("s", 1, action, attempt)  # type: ignore[arg-type]


def test_buy_fills_at_close_with_fee_and_debits_cash() -> None:
    a = account()
    fill = a.order("buy", "50000", amount="0.01")
    assert isinstance(fill, Fill)
    assert (fill.price, fill.amount, fill.fee, fill.fee_asset) == (D("50000"), D("0.01"), D("0.5"), "USDT")
    assert a.cash() == D("10000") - D("500") - D("0.5")
    assert fill.cash_after == a.cash()
    pos = a.position()
    assert pos is not None and pos.amount == D("0.01") and pos.entry_price == D("50000") and pos.entry_time == 60_000
    assert a.broker.base("p", "BTCUSDT") == D("0.01")


def test_default_amount_when_result_has_none() -> None:
    fill = account().order("buy", "100")
    assert isinstance(fill, Fill) and fill.amount == D("0.001")


def test_slippage_moves_fills_against_the_trader() -> None:
    a = account(slippage="10")  # 0.1 %
    buy = a.order("buy", "1000", amount="1")
    sell = a.order("sell", "1000", t=120_000)
    assert isinstance(buy, Fill) and isinstance(sell, Fill)
    assert buy.price == D("1001") and sell.price == D("999")


def test_insufficient_cash_is_rejected_and_changes_nothing() -> None:
    a = account(cash="100")
    out = a.order("buy", "50000", amount="0.01")
    assert isinstance(out, Refusal) and out.outcome == "rejected" and "insufficient cash" in out.reason
    assert a.cash() == D("100") and a.position() is None
    (order,) = a.outs[-1].orders.values()
    assert (order.status, order.error) == ("rejected", out.reason)  # recorded as a rejected order


def test_buy_adds_with_weighted_entry_price() -> None:
    a = account()
    a.order("buy", "100", t=60_000, amount="1")
    a.order("buy", "200", t=120_000, amount="3")
    pos = a.position()
    assert pos is not None
    assert pos.amount == D("4") and pos.entry_price == D("175") and pos.entry_time == 60_000


def test_sell_closes_all_by_default_and_credits_cash() -> None:
    a = account(fee="0")
    a.order("buy", "100", amount="2")
    fill = a.order("sell", "150", t=120_000)
    assert isinstance(fill, Fill) and fill.amount == D("2") and fill.position_after is None
    assert a.position() is None
    assert a.cash() == D("10100")


def test_partial_sell_keeps_the_rest() -> None:
    a = account(fee="0")
    a.order("buy", "100", amount="2")
    fill = a.order("sell", "100", t=120_000, amount="0.5")
    assert isinstance(fill, Fill) and fill.amount == D("0.5")
    pos = a.position()
    assert pos is not None and pos.amount == D("1.5")


def test_sell_while_flat_is_ignored() -> None:
    out = account().order("sell", "100")
    assert isinstance(out, Refusal) and out.outcome == "ignored"


def test_amounts_round_down_to_eight_decimals() -> None:
    fill = account().order("buy", "100", amount="0.123456789")
    assert isinstance(fill, Fill) and fill.amount == D("0.12345678")
    out = account().order("buy", "100", amount="0.000000001")
    assert isinstance(out, Refusal) and out.reason == "amount rounds to zero at 8 decimals"


@pytest.mark.parametrize(
    ("high", "low", "expect"),
    [("111", "95", "tp"), ("105", "89", "sl"), ("111", "89", "sl"), ("109", "91", None)],
)
def test_take_profit_and_stop_loss_touches(high: str, low: str, expect: str | None) -> None:
    a = account(fee="0")
    a.order("buy", "100", t=60_000, amount="1", tp="110", sl="90")
    fills = a.candle(120_000, high, low)
    if expect is None:
        assert fills == [] and a.position() is not None
        return
    (fill,) = fills
    assert fill.side == "sell" and fill.candle_time == 120_000
    assert fill.price == (D("110") if expect == "tp" else D("90"))
    # The leg was placed with the entry, on its candle: the id names that order (and its leg).
    assert fill.client_order_id == client_order_id("s1", 60_000, expect)  # type: ignore[arg-type]
    assert fill.reason == ("take-profit 110 touched" if expect == "tp" else "stop-loss 90 touched")
    assert a.position() is None and a.broker.resting() == []
    other = "sl" if expect == "tp" else "tp"
    statuses = {o.leg: o.status for o in a.outs[-1].orders.values()}
    assert statuses == {expect: "filled", other: "cancelled"}  # one leg fills, its OCO sibling is cancelled


def test_levels_only_watch_later_candles() -> None:
    a = account()
    a.order("buy", "100", t=60_000, amount="1", tp="101", sl="99")
    assert a.candle(60_000, "200", "1") == []  # the signal candle itself
    assert a.candle(120_000, "102", "100", closed=False)  # a later in-progress update


def test_levels_on_the_wrong_side_are_dropped_with_a_note() -> None:
    a = account()
    fill = a.order("buy", "100", amount="1", tp="90", sl="120")
    assert isinstance(fill, Fill)
    assert fill.position_after is not None
    assert fill.position_after.take_profit is None and fill.position_after.stop_loss is None
    assert len(fill.notes) == 2
    assert a.broker.resting() == []  # nothing to protect with


def test_watched_keys_follow_resting_protection() -> None:
    a = account()
    a.order("buy", "100", amount="1")
    assert a.broker.watched_keys() == set()
    a.order("buy", "100", t=120_000, amount="1", sl="50", sid="s2")
    assert a.broker.watched_keys() == {KEY}


def test_a_sell_cancels_the_protection_first_and_a_partial_sell_protects_the_rest() -> None:
    a = account(fee="0")
    a.order("buy", "100", t=60_000, amount="2", tp="110", sl="90")
    assert a.broker.base("p", "BTCUSDT") == D("2")
    fill = a.order("sell", "105", t=120_000, amount="0.5")
    assert isinstance(fill, Fill) and fill.amount == D("0.5")
    legs = {o.client_order_id: o for o in a.outs[-1].orders.values() if o.leg in ("tp", "sl")}
    old = [o for o in legs.values() if o.candle_time == 60_000]
    new = [o for o in legs.values() if o.candle_time == 120_000]
    assert {o.status for o in old} == {"cancelled"}
    assert {(o.leg, o.status, o.amount, o.level) for o in new} == {("tp", "open", D("1.5"), D("110")),
                                                                  ("sl", "open", D("1.5"), D("90"))}
    (fill,) = a.candle(180_000, "100", "89")
    assert (fill.amount, fill.price) == (D("1.5"), D("90")) and a.position() is None


def test_adding_to_a_protected_position_protects_all_of_it_at_the_new_levels() -> None:
    a = account(fee="0")
    a.order("buy", "100", t=60_000, amount="1", tp="110", sl="90")
    a.order("buy", "100", t=120_000, amount="1", sl="95")  # no take-profit: the old one stays
    pos = a.position()
    assert pos is not None and (pos.amount, pos.take_profit, pos.stop_loss) == (D("2"), D("110"), D("95"))
    assert a.candle(120_000, "200", "1") == []  # the add's candle does not count for its new legs
    (fill,) = a.candle(180_000, "100", "94")
    assert (fill.amount, fill.price) == (D("2"), D("95"))


def test_limit_orders_rest_until_crossed_and_hold_their_cash() -> None:
    a = account(cash="1000", fee="0")
    out = a.order("buy", "100", t=60_000, amount="5", limit="95")
    assert out is None  # accepted, resting: no fill, no refusal
    (order,) = a.outs[-1].orders.values()
    assert (order.status, order.type, order.limit_price) == ("open", "limit", D("95"))
    # its 475 are held: a market buy for more than the rest is refused
    refused = a.order("buy", "100", t=60_000, amount="6", sid="s2")
    assert isinstance(refused, Refusal) and "insufficient cash" in refused.reason
    # one order at a time: the same strategy's next buy is skipped while the limit rests
    assert a.order("buy", "100", t=120_000, amount="1") is None
    assert "still open" in a.outs[-1].notes[0].message
    assert a.candle(120_000, "100", "96") == []
    (fill,) = a.candle(180_000, "100", "94")
    assert (fill.price, fill.amount, fill.candle_time) == (D("95"), D("5"), 180_000)
    assert a.cash() == D("525")


def test_a_marketable_limit_fills_at_once_at_the_market_price() -> None:
    fill = account(fee="0").order("buy", "100", amount="1", limit="101")
    assert isinstance(fill, Fill) and fill.price == D("100")


@pytest.mark.parametrize("amount", ["1e300", "1e13", "Infinity"])
def test_absurd_amounts_are_rejected_not_errors(amount: str) -> None:
    a = account()
    for side in ("buy", "sell"):
        out = a.order(side, "100", amount=amount)
        assert isinstance(out, Refusal), out
    assert isinstance(a.order("buy", "100", amount=amount), Refusal)
    assert a.cash() == D("10000")


def test_restart_restores_the_book_from_the_records() -> None:
    a = account(fee="0")
    a.order("buy", "100", t=60_000, amount="1", tp="110", sl="90")
    records = [o.record() for o in a.desk.book.active()]
    assert {r.leg for r in records} == {"tp", "sl"}
    holding = a.desk.ledger.holding("s1")
    assert holding is not None
    fresh = PaperBroker(fee_rate=D(0), slippage_bps=D(0), cash={"p": a.cash()}, holdings=[holding])
    assert fresh.restore(records) == []
    assert sorted(fresh.resting()) == sorted(a.broker.resting())
    fresh.on_candle(Candle("BTCUSDT", "1m", 120_000, D(100), D(111), D(100), D(100), D(1)))
    events = fresh.drain()
    assert [type(e) for e in events] == [Filled, Cancelled]
    assert isinstance(events[0], Filled) and events[0].price == D("110")


def test_commands_answer_like_an_exchange() -> None:
    broker = PaperBroker(fee_rate=D("0.001"), slippage_bps=D(0), cash={"p": D(100)})
    buy = OrderRequest("c1", "s", "p", KEY, "buy", "market", "entry", D("0.5"), None, D("100"), 0, None, None, None)
    assert broker.execute(buy) == Accepted("c1", "c1", 59_999, D("0.5"))
    (fill,) = broker.drain()
    assert fill == Filled("c1", "c1", "1", D("0.5"), D("100.00000000"), D("0.05000000"), "USDT", 59_999, True)
    too_much = ProtectRequest("l", "t", None, "s", "p", KEY, D("1"), D("110"), None, 0)
    answer = broker.protect_now(too_much)
    assert isinstance(answer, Rejected) and "insufficient BTC" in answer.reason
    one_leg = ProtectRequest("l", "t", None, "s", "p", KEY, D("0.5"), D("110"), None, 0)
    assert broker.protect_now(one_leg) == Accepted("l", "t", 59_999, D("0.5"))  # one leg: the order's id
    broker.cancel_now("t")
    assert broker.drain() == [Cancelled("t", "cancelled on request", 59_999)]
    broker.cancel_now("t")  # gone: nothing happens
    assert broker.drain() == []
