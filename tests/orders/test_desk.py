"""The order desk: one order at a time, checks just before sending, protection of what filled,
explicit notes for what cannot be applied. Driven by hand, as a slow exchange would answer."""

from __future__ import annotations

from decimal import Decimal as D

from orders.binance import answer, order_events, rules
from tradebotd.model import Position, StreamKey
from tradebotd.orders.desk import CancelRequest, Effects, OrderDesk, Venue
from tradebotd.orders.ledger import Holding, Ledger
from tradebotd.orders.model import Accepted, Cancelled, OrderIntent, OrderRequest, ProtectRequest, client_order_id
from tradebotd.orders.validate import OrderPolicy

KEY = StreamKey("BTCUSDT", "1m")
T = 1700000040000
NOW = "now"


def desk(holdings: dict[str, Holding] | None = None) -> OrderDesk:
    btc = rules("exchange_info_btcusdt")
    d = OrderDesk(ledger=Ledger({"p": D("1000")}, holdings), policy=OrderPolicy(D("0.002")),
                  venues={"binance": Venue("binance", lambda key: btc)})
    d.portfolio_venues["p"] = "binance"  # as the engine sets it from the portfolios' types
    return d


def intent(side: str, t: int = T, **kw: object) -> OrderIntent:
    return OrderIntent(client_order_id("s1", t, side), "s1", "p", KEY, side, None, D("42000"), t, **kw)  # type: ignore[arg-type]


def test_a_strategy_whose_order_awaits_an_answer_gets_no_second_one() -> None:
    d, out = desk(), Effects()
    (request,) = d.decide(intent("buy", take_profit=D("46000"), stop_loss=D("40000")), "binance", NOW, out) or []
    assert isinstance(request, OrderRequest) and d.before(request, NOW, out)
    assert d.book.get(request.client_order_id).status == "pending"  # type: ignore[union-attr]
    later = Effects()
    assert d.decide(intent("sell", T + 60_000), "binance", NOW, later) is None
    assert [n.message for n in later.notes] == [
        f"order {request.client_order_id} is still pending; this sell is skipped (one order at a time)"
    ]
    assert later.orders == {}  # nothing recorded for the skipped decision


def test_a_filled_entry_is_protected_with_its_levels_as_one_list() -> None:
    d, out = desk(), Effects()
    (request,) = d.decide(intent("buy", take_profit=D("46000"), stop_loss=D("40000")), "binance", NOW, out) or []
    assert isinstance(request, OrderRequest)
    d.before(request, NOW, out)
    accepted, *fills = order_events(answer("new_order_market_buy_full"))
    d.on_result(request, accepted, NOW, out)  # type: ignore[arg-type]
    for event in fills:
        d.on_event(event, NOW, out)
    assert len(out.fills) == 2
    position = d.position("s1")
    assert position is not None and (position.amount, position.take_profit, position.stop_loss) == (
        D("0.001998"), D("46000"), D("40000")
    )
    ((venue, job),) = out.jobs
    (protect,) = job
    assert venue == "binance" and isinstance(protect, ProtectRequest)
    assert (protect.amount, protect.take_profit, protect.stop_loss, protect.parent_id) == (
        D("0.001998"), D("46000"), D("40000"), request.client_order_id
    )
    assert protect.list_client_order_id == client_order_id("s1", T, "oco")
    legs = [out.orders[c] for c in (protect.tp_client_order_id, protect.sl_client_order_id) if c]
    assert [(o.status, o.leg) for o in legs] == [("new", "tp"), ("new", "sl")]  # recorded before they are sent


def test_a_sell_cancels_the_protection_first_and_is_not_sent_while_it_stands() -> None:
    held = {"s1": Holding("p", KEY, Position(D("0.002"), D("42000"), T, D("46000"), D("40000")))}
    d, out = desk(held), Effects()
    d.ensure_protection(NOW, out)
    ((_, (protect,)),) = out.jobs
    assert isinstance(protect, ProtectRequest) and d.before(protect, NOW, out)
    d.on_result(protect, Accepted(protect.list_client_order_id, "7", T, D("0.002")), NOW, out)
    job = d.decide(intent("sell", T + 60_000), "binance", NOW, Effects()) or []
    cancel, sell = job
    assert isinstance(cancel, CancelRequest) and cancel.client_order_id == protect.tp_client_order_id
    assert isinstance(sell, OrderRequest)
    # The cancel has not been seen: the sell would oversell the position, so it is not sent.
    after = Effects()
    assert not d.before(sell, NOW, after)
    assert d.book.get(sell.client_order_id).status == "rejected"  # type: ignore[union-attr]
    assert after.notes[0].message == "not sent: the position's protective orders could not be cancelled first"


def test_a_protection_placed_again_on_the_same_candle_gets_a_new_id() -> None:
    held = {"s1": Holding("p", KEY, Position(D("0.002"), D("42000"), T, D("46000"), None))}
    d, out = desk(held), Effects()
    d.ensure_protection(NOW, out)
    ((_, (first,)),) = out.jobs
    assert isinstance(first, ProtectRequest) and first.sl_client_order_id is None
    d.before(first, NOW, out)
    d.on_result(first, Accepted(first.list_client_order_id, "41", T, D("0.002")), NOW, out)
    d.on_event(Cancelled(first.tp_client_order_id or "", "cancelled on the exchange", T), NOW, out)
    again = Effects()
    d.ensure_protection(NOW, again)  # the invariant: the position is not protected any more
    ((_, (second,)),) = again.jobs
    assert isinstance(second, ProtectRequest)
    assert second.tp_client_order_id == client_order_id("s1", T, "tp", 2)


def test_an_event_that_cannot_be_applied_is_an_error_note_not_silence() -> None:
    d, out = desk(), Effects()
    d.on_event(Accepted("tb-1-000000000000-buy", "1", T, D(1)), NOW, out)
    (note,) = out.notes
    assert note.level == "error" and note.message == (
        "order tb-1-000000000000-buy: Accepted not applied: Accepted for an order we do not know"
    )
