"""The ledger: positions and cash changed only by fills, exact; fees in the asset they are paid in."""

from __future__ import annotations

from decimal import Decimal as D

from orders.binance import answer, order_events
from tradebotd.model import Position, StreamKey
from tradebotd.orders.ledger import Holding, Ledger
from tradebotd.orders.model import Filled

KEY = StreamKey("BTCUSDT", "1m")
T = 1700000040000


def fill(amount: str, price: str, fee: str = "0", asset: str | None = "USDT", trade: str = "1") -> Filled:
    return Filled("c", "1", trade, D(amount), D(price), D(fee), asset, T, True)


def apply(ledger: Ledger, f: Filled, side: str = "buy", **kw: object):  # type: ignore[no-untyped-def]
    return ledger.apply(f, "s1", "p", KEY, side, T, "why", "BTC", "USDT", **kw)  # type: ignore[arg-type]


def test_a_buy_with_its_fee_in_btc_holds_less_than_it_bought_and_the_exit_sells_what_is_left() -> None:
    ledger = Ledger({"p": D("1000")})
    _, *fills = order_events(answer("new_order_market_buy_full"))
    for f in fills:
        assert isinstance(f, Filled)
        apply(ledger, f)
    position = ledger.position("s1")
    assert position is not None
    assert position.amount == D("0.002") - D("0.000002")  # Binance took the fee in what was bought
    assert position.entry_price == D("42005")  # amount-weighted over both trades
    assert ledger.cash("p") == D("1000") - D("84.01")  # the fee was not paid in cash
    result = apply(ledger, fill("0.001998", "43000", "0.085914"), "sell")
    assert result.position_after is None and ledger.position("s1") is None
    assert ledger.cash("p") == D("1000") - D("84.01") + D("85.914") - D("0.085914")


def test_a_fee_in_the_quote_asset_comes_out_of_cash_rounded_to_8_decimals() -> None:
    ledger = Ledger({"p": D("100")})
    result = apply(ledger, fill("0.0005", "41000", "0.0205"))
    assert result.cash_after == ledger.cash("p") == D("100") - D("20.5") - D("0.0205")
    assert ledger.position("s1") == Position(D("0.0005"), D("41000"), T)
    ledger2 = Ledger({"p": D("1")})
    apply(ledger2, fill("0.00000003", "0.5"))
    assert ledger2.cash("p") == D("0.99999998")  # 0.999999985, half-even (half-up: ...99)


def test_a_fee_in_a_third_asset_changes_neither_and_says_so() -> None:
    ledger = Ledger({"p": D("100")})
    result = apply(ledger, fill("0.001", "40000", "0.0001", "BNB"))
    assert ledger.cash("p") == D("60") and ledger.position("s1") == Position(D("0.001"), D("40000"), T)
    assert result.notes == ("fee 0.0001 BNB paid in neither BTC nor USDT",)


def test_adding_averages_the_entry_and_keeps_the_first_entry_time_and_levels() -> None:
    ledger = Ledger({"p": D("1000")})
    apply(ledger, fill("0.001", "40000"), take_profit=D("44000"), stop_loss=D("38000"))
    ledger.apply(fill("0.003", "42000", trade="2"), "s1", "p", KEY, "buy", T + 60_000, None, "BTC", "USDT")
    position = ledger.position("s1")
    assert position == Position(D("0.004"), D("41500"), T, D("44000"), D("38000"))


def test_a_partial_sell_keeps_the_entry_and_an_oversell_is_noted() -> None:
    ledger = Ledger({"p": D("0")}, {"s1": Holding("p", KEY, Position(D("0.004"), D("41500"), T))})
    apply(ledger, fill("0.001", "42000"), "sell")
    assert ledger.position("s1") == Position(D("0.003"), D("41500"), T)
    result = apply(ledger, fill("0.005", "42000", trade="2"), "sell")
    assert result.position_after is None and result.notes == ("sold 0.005 but the ledger held 0.003",)
    flat = apply(ledger, fill("0.001", "42000", trade="3"), "sell")
    assert flat.notes == ("sold 0.001 while the ledger held nothing of it",)


def test_portfolios_keep_their_own_cash_and_a_taken_over_position_replaces_the_local_one() -> None:
    ledger = Ledger({"p": D("100"), "q": D("50")})
    ledger.apply(fill("0.001", "10000"), "s2", "q", KEY, "buy", T, None, "BTC", "USDT")
    assert (ledger.cash("p"), ledger.cash("q")) == (D("100"), D("40"))
    assert not ledger.has_cash("r")
    ledger.replace("s2", Holding("q", KEY, Position(D("0.5"), D("1"), T)))
    ledger.set_cash("q", D("7"))
    assert ledger.position("s2") == Position(D("0.5"), D("1"), T) and ledger.cash("q") == D("7")
    ledger.replace("s2", None)
    assert ledger.position("s2") is None
