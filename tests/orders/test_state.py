"""The order state machine, driven by Binance's recorded answers (tests/fixtures/exchange)."""

from __future__ import annotations

from decimal import Decimal as D

import pytest

from orders.binance import answer, error_result, order_events
from tradebotd.model import StreamKey
from tradebotd.orders.model import (
    Accepted,
    Cancelled,
    Expired,
    Filled,
    OrderRequest,
    ProtectRequest,
    Rejected,
    Unknown,
    client_order_id,
)
from tradebotd.orders.state import CHANGED, DUPLICATE, FILL, ILLEGAL, Order, OrderBook

KEY = StreamKey("BTCUSDT", "1m")
T = 1700000040000
BUY = client_order_id("s1", T, "buy")
NOW = "2023-11-14T22:15:00.000Z"


def request(coid: str = BUY, side: str = "buy", type: str = "market", amount: str = "0.002",
            limit: str | None = None) -> OrderRequest:
    return OrderRequest(coid, "s1", "p", KEY, side, type, "entry" if side == "buy" else "exit",  # type: ignore[arg-type]
                        D(amount), None if limit is None else D(limit), D("42000"), T, "why", None, None)


def sent(book: OrderBook, req: OrderRequest) -> Order:
    order = Order.from_request(req, "binance", NOW)
    book.add(order)
    assert book.sent(req.client_order_id, NOW).outcome == CHANGED
    assert order.status == "pending"
    return order


def test_a_market_buy_answered_filled_in_two_trades() -> None:
    book = OrderBook()
    order = sent(book, request())
    accepted, *fills = order_events(answer("new_order_market_buy_full"))
    assert book.apply(accepted, NOW).outcome == CHANGED
    assert (order.status, order.exchange_order_id) == ("open", "28")
    first, second = fills
    assert isinstance(first, Filled) and not first.complete and isinstance(second, Filled) and second.complete
    assert book.apply(first, NOW).outcome == FILL and order.status == "partially_filled"
    assert book.apply(second, NOW).outcome == FILL and order.status == "filled"
    assert order.filled_amount == D("0.002")
    assert order.average_price == D("84.01") / D("0.002")  # volume-weighted: 42005
    assert (order.fee, order.fee_asset) == (D("0.000002"), "BTC")
    assert not order.active and book.active() == [] and book.get(BUY) is order


def test_fills_are_applied_once_however_often_they_are_reported() -> None:
    book = OrderBook()
    order = sent(book, request())
    events = order_events(answer("new_order_market_buy_full"))
    for event in events:
        book.apply(event, NOW)
    before = order.record()
    # The same trades again: from reconciliation's myTrades, and the answer replayed.
    again = order_events(answer("query_order_market_buy_filled"), answer("my_trades_market_buy"))
    outcomes = [book.apply(event, NOW).outcome for event in again + events]
    assert outcomes == [DUPLICATE, DUPLICATE, DUPLICATE] * 2
    assert order.record() == before


def test_a_resting_limit_order_fills_in_part_then_is_cancelled_and_keeps_its_fills() -> None:
    book = OrderBook()
    order = sent(book, request(type="limit", limit="41000"))
    (accepted,) = order_events(answer("new_order_limit_buy_new"))
    book.apply(accepted, NOW)
    assert order.status == "open" and order.filled_amount == 0
    later = order_events(answer("query_order_limit_buy_partially_filled"), answer("my_trades_limit_buy_partial"))
    assert [book.apply(e, NOW).outcome for e in later] == [DUPLICATE, FILL, FILL]
    assert (order.status, order.filled_amount, order.fee, order.fee_asset) == (
        "partially_filled", D("0.0008"), D("0.0328"), "USDT"
    )
    assert order.average_price == D("41000")
    *_, cancelled = order_events(answer("cancel_order_limit_buy"))
    assert isinstance(cancelled, Cancelled)
    assert book.apply(cancelled, NOW).outcome == CHANGED
    assert (order.status, order.filled_amount) == ("cancelled", D("0.0008"))
    assert book.apply(cancelled, NOW).outcome == DUPLICATE


def test_an_ambiguous_send_is_unknown_until_the_exchange_answers_filled() -> None:
    book = OrderBook()
    order = sent(book, request())
    assert book.apply(Unknown(BUY, "timeout after 10 s", T + 70_000), NOW).outcome == CHANGED
    assert order.status == "unknown" and order.active and book.awaiting("s1") is order
    assert book.blocking("s1", "buy") is order and book.blocking("s1", "sell") is order
    # Resolved by asking by origClientOrderId: it was placed and filled.
    for event in order_events(answer("query_order_market_buy_filled"), answer("my_trades_market_buy")):
        book.apply(event, NOW)
    assert (order.status, order.exchange_order_id, order.filled_amount) == ("filled", "28", D("0.002"))
    assert book.awaiting("s1") is None


def test_an_unknown_order_the_exchange_never_saw_is_rejected() -> None:
    book = OrderBook()
    order = sent(book, request())
    book.apply(Unknown(BUY, "connection reset after sending", T + 70_000), NOW)
    transition = book.apply(error_result(answer("error_order_does_not_exist"), BUY, T + 200_000), NOW)
    assert transition.outcome == CHANGED and transition.previous == "unknown"
    assert (order.status, order.error) == ("rejected", "Order does not exist. (code -2013)")


def test_a_definitive_error_rejects_the_order() -> None:
    book = OrderBook()
    order = sent(book, request(amount="1"))
    book.apply(error_result(answer("error_insufficient_balance"), BUY, T + 60_000), NOW)
    assert order.status == "rejected" and order.error is not None and "(code -2010)" in order.error
    assert book.apply(error_result(answer("error_insufficient_balance"), BUY, T), NOW).outcome == DUPLICATE


def test_an_expired_order_is_recorded_as_cancelled_with_the_reason() -> None:
    book = OrderBook()
    sell = client_order_id("s1", T, "sell")
    order = sent(book, request(sell, side="sell", type="limit", limit="43000"))
    accepted, expired = order_events(answer("new_order_limit_sell_expired"))
    assert isinstance(expired, Expired)
    book.apply(accepted, NOW)
    book.apply(expired, NOW)
    assert (order.status, order.error) == ("cancelled", "expired: IOC order expired")


def test_a_late_fill_of_a_cancelled_order_still_counts() -> None:
    book = OrderBook()
    order = sent(book, request(type="limit", limit="41000"))
    book.apply(Accepted(BUY, "29", T, D("0.002")), NOW)
    book.apply(Cancelled(BUY, "cancelled on request", T), NOW)
    late = Filled(BUY, "29", "71", D("0.0005"), D("41000"), D("0.0205"), "USDT", T, False)
    transition = book.apply(late, NOW)
    assert transition.outcome == FILL and (order.status, order.filled_amount) == ("cancelled", D("0.0005"))


@pytest.mark.parametrize(
    ("setup", "event", "why"),
    [
        ([], Filled(BUY, "28", "1", D("0.002"), D("1"), D(0), None, T, True), "never sent"),
        ([Accepted(BUY, "28", T, D("0.002"))], Filled(BUY, "99", "1", D("0.001"), D("1"), D(0), None, T, False),
         "exchange order 99"),
        ([Accepted(BUY, "28", T, D("0.002"))], Filled(BUY, "28", "1", D("0.003"), D("1"), D(0), None, T, True),
         "would make 0.003"),
        ([Accepted(BUY, "28", T, D("0.002"))], Unknown(BUY, "timeout", T),
         "ambiguous result for an order that is open"),
        ([Accepted(BUY, "28", T, D("0.002")), Filled(BUY, "28", "1", D("0.002"), D("1"), D(0), None, T, True)],
         Cancelled(BUY, "x", T), "but the order is filled"),
        ([Accepted(BUY, "28", T, D("0.002")), Filled(BUY, "28", "1", D("0.002"), D("1"), D(0), None, T, True)],
         Rejected(BUY, "x", None, T), "but the order is filled"),
        ([Rejected(BUY, "x", None, T)], Accepted(BUY, "28", T, D("0.002")), "accepted, but the order is rejected"),
    ],
)
def test_illegal_transitions_are_explicit_and_change_nothing(setup: list, event: object, why: str) -> None:
    book = OrderBook()
    order = Order.from_request(request(), "binance", NOW)
    book.add(order)
    if setup or not isinstance(event, Filled):
        book.sent(BUY, NOW)
    for e in setup:
        book.apply(e, NOW)
    before = order.record()
    transition = book.apply(event, NOW)  # type: ignore[arg-type]
    assert transition.outcome == ILLEGAL and why in transition.note
    assert order.record() == before


def test_commands_on_orders_in_the_wrong_state_are_illegal() -> None:
    book = OrderBook()
    assert book.apply(Accepted("tb-nobody", "1", T, D(1)), NOW).outcome == ILLEGAL
    assert book.sent("tb-nobody", NOW).outcome == ILLEGAL
    sent(book, request())
    assert book.sent(BUY, NOW).outcome == ILLEGAL  # already sent
    assert book.drop(BUY, "too late", NOW).outcome == ILLEGAL  # only a new order is dropped
    with pytest.raises(ValueError, match="already taken"):
        book.add(Order.from_request(request(), "binance", NOW))


def test_an_oco_protection_opens_both_legs_and_one_leg_filling_ends_the_other() -> None:
    oco, tp, sl = (client_order_id("s1", T, a) for a in ("oco", "tp", "sl"))  # type: ignore[arg-type]
    protect = ProtectRequest(oco, tp, sl, "s1", "p", KEY, D("0.00199"), D("46000"), D("40000"), T, BUY)
    book = OrderBook()
    legs = Order.legs_of(protect, "binance", D("42000"), NOW)
    assert [(o.leg, o.type, o.limit_price, o.stop_price) for o in legs] == [
        ("tp", "take_profit", D("46000"), None), ("sl", "stop_loss", None, D("40000"))
    ]
    for leg in legs:
        book.add(leg)
        book.sent(leg.client_order_id, NOW)
    placed = answer("oco_sell_placed")
    result = Accepted(oco, str(placed["orderListId"]), placed["transactionTime"], D("0.00199"))
    assert [t.outcome for t in book.apply_protect([tp, sl], result, NOW)] == [CHANGED, CHANGED]
    assert [(o.status, o.list_id, o.parent_id) for o in legs] == [("open", "7", BUY)] * 2
    for report in placed["orderReports"]:  # each leg learns its own exchange order id
        (accepted,) = order_events(report)
        assert book.apply(accepted, NOW).outcome == CHANGED
    assert [o.exchange_order_id for o in legs] == ["41", "40"]
    assert [o.client_order_id for o in book.protection("s1")] == [tp, sl]
    for event in order_events(answer("query_order_oco_tp_filled"), answer("my_trades_oco_tp")):
        book.apply(event, NOW)
    for event in order_events(answer("query_order_oco_sl_expired")):
        book.apply(event, NOW)
    assert [(o.status, o.filled_amount) for o in legs] == [("filled", D("0.00199")), ("cancelled", D(0))]
    assert book.protection("s1") == []


def test_a_rejected_protection_rejects_both_legs() -> None:
    oco, tp, sl = (client_order_id("s1", T, a) for a in ("oco", "tp", "sl"))  # type: ignore[arg-type]
    book = OrderBook()
    legs = Order.legs_of(ProtectRequest(oco, tp, sl, "s1", "p", KEY, D("1"), D("46000"), D("40000"), T), "x", D(1), NOW)
    for leg in legs:
        book.add(leg)
        book.sent(leg.client_order_id, NOW)
    rejected = error_result(answer("error_insufficient_balance"), oco, T)
    assert [t.outcome for t in book.apply_protect([tp, sl], rejected, NOW)] == [CHANGED, CHANGED]
    assert [o.status for o in legs] == ["rejected", "rejected"]


def test_an_order_restored_from_its_row_still_knows_its_fills() -> None:
    book = OrderBook()
    order = sent(book, request(type="limit", limit="41000"))
    events = order_events(answer("query_order_limit_buy_partially_filled"), answer("my_trades_limit_buy_partial"))
    for event in events:
        book.apply(event, NOW)
    restored = OrderBook([Order.from_record(order.record(), ["71", "74"])])
    again = restored.get(BUY)
    assert again is not None and again.record() == order.record()
    assert [restored.apply(e, NOW).outcome for e in events] == [DUPLICATE, DUPLICATE, DUPLICATE]
    more = Filled(BUY, "29", "80", D("0.0012"), D("41000"), D("0.0492"), "USDT", T, True)
    assert restored.apply(more, NOW).outcome == FILL
    assert (again.status, again.filled_amount, again.average_price) == ("filled", D("0.002"), D("41000"))


def test_the_book_forgets_the_oldest_finished_orders_beyond_its_bound() -> None:
    book = OrderBook(done_kept=2)
    ids = [client_order_id("s1", T + i * 60_000, "buy") for i in range(3)]
    for coid in ids:
        order = Order.from_request(request(coid), "paper", NOW)
        book.add(order)
        book.drop(coid, "not sent", NOW)
    assert [coid in book for coid in ids] == [False, True, True]
