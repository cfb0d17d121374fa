"""The stand-in's request pipeline without sockets: signatures over raw bytes, timing, strict
parameters, weights, 429 -> 418, order rate limits, faults and the request log."""

from __future__ import annotations

from decimal import Decimal as D

import pytest

from tradebotd.replay.exchange import ExchangeApi, RateLimits, RestRequest, SymbolSpec
from tradebotd.replay.exchange.matching import Account

from .conftest import KEY, SECRET, MsClock, SecondsClock, call, error_code, make_account, make_api

ORDER = {"symbol": "BTCUSDT", "side": "BUY", "type": "MARKET", "quantity": "0.001"}


# -- signatures and timing --------------------------------------------------------------------

# Binance's own worked example (rest-api.md, "SIGNED Endpoint Examples for POST /api/v3/order").
DOC_KEY = "vmPUZE6mv9SD5VNHk4HlWFsOr6aKE2zvsw0MuIgwCIPy6utIco14y7Ju91duEh8A"
DOC_SECRET = "NhqPtmdSJYdKjVHjA7PZj4Mge3R5YNiP1e3UZjInClVN65XAbvqqM6A7H5fATj0j"
DOC_TS = 1499827319559


def doc_api() -> ExchangeApi:
    ltc = SymbolSpec("LTCBTC", "LTC", "BTC", tick_size=D("0.000001"), min_price=D("0.000001"), step_size=D("0.01"),
                     min_qty=D("0.01"), min_notional=D("0.0001"))  # fmt: skip
    clock = MsClock(DOC_TS + 100)
    account = Account([ltc], balances={"BTC": D("1")}, clock=clock, prices={"LTCBTC": D("0.2")})
    return ExchangeApi(account, api_keys={DOC_KEY: DOC_SECRET}, clock=clock, limits_clock=SecondsClock())


def test_binance_documented_signature_as_body_and_as_mixed_query_and_body() -> None:
    body = (
        "symbol=LTCBTC&side=BUY&type=LIMIT&timeInForce=GTC&quantity=1&price=0.1&recvWindow=5000&timestamp=1499827319559"
    )
    signed = body + "&signature=c8db56825ae71d6d79447849e617115f4a920fa2acdcab2b053c4b2838bd6b71"
    api = doc_api()
    response = api.handle(RestRequest("POST", "/api/v3/order", "", signed.encode(), {"x-mbx-apikey": DOC_KEY}))
    assert response.status == 200, response.body
    # Example 3: part in the query string, part in the body; signed over their concatenation.
    query = "symbol=LTCBTC&side=BUY&type=LIMIT&timeInForce=GTC"
    rest = "quantity=1&price=0.1&recvWindow=5000&timestamp=1499827319559"
    rest += "&signature=0fd168b8ddb4876a0358a8d14d0c9f3da0e9b20c5d52b2a00fcf7d1c602f9a77"
    api = doc_api()
    response = api.handle(RestRequest("POST", "/api/v3/order", query, rest.encode(), {"x-mbx-apikey": DOC_KEY}))
    assert response.status == 200, response.body


def test_signature_is_checked_over_the_raw_percent_encoded_bytes() -> None:
    api = make_api()
    # A client id with ':' and '/' goes over the wire percent-encoded; the HMAC covers the encoding.
    response = call(api, "POST", "/api/v3/order", {**ORDER, "newClientOrderId": "bot:grid/1.a"})
    assert response.status == 200, response.body
    assert isinstance(response.body, dict) and response.body["clientOrderId"] == "bot:grid/1.a"


def test_wrong_secret_missing_and_unknown_key() -> None:
    api = make_api()
    assert error_code(call(api, "GET", "/api/v3/account", secret="wrong")) == -1022
    response = call(api, "GET", "/api/v3/account", key=None)
    assert (response.status, error_code(response)) == (401, -2014)
    response = call(api, "GET", "/api/v3/account", key="someone-else")
    assert (response.status, error_code(response)) == (401, -2015)


def test_timing_rule_from_the_docs() -> None:
    clock = MsClock()
    api = make_api(clock=clock)
    now = clock.ms
    assert call(api, "GET", "/api/v3/account", timestamp=now + 999).status == 200
    ahead = call(api, "GET", "/api/v3/account", timestamp=now + 1000)
    assert error_code(ahead) == -1021 and "ahead" in str(ahead.body)
    assert call(api, "GET", "/api/v3/account", timestamp=now - 5000).status == 200  # default recvWindow 5000
    assert error_code(call(api, "GET", "/api/v3/account", timestamp=now - 5001)) == -1021
    assert call(api, "GET", "/api/v3/account", timestamp=now - 9000, recv_window=10000).status == 200
    assert error_code(call(api, "GET", "/api/v3/account", recv_window=60001)) == -1131
    api.skew_ms = 20_000  # the server's clock ahead of the client's
    assert error_code(call(api, "GET", "/api/v3/account", timestamp=clock.ms, recv_window=10000)) == -1021


# -- strict parameters ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "code", "fragment"),
    [
        ({**ORDER, "takeProfit": "{'triggerPrice': 1}"}, -1104, "read '6' parameter(s) but was sent '7'"),
        (
            {"symbol": "BTCUSDT", "side": "BUY", "type": "LIMIT", "quantity": "0.001", "timeInForce": "GTC"},
            -1102,
            "'price'",
        ),
        ({**ORDER, "price": "42000"}, -1106, "'price' sent when not required"),
        ({**ORDER, "timeInForce": "GTC"}, -1114, "TimeInForce"),
        ({**ORDER, "side": "HOLD"}, -1117, "Invalid side."),
        ({**ORDER, "type": "BRACKET"}, -1116, "Invalid orderType."),
        ({**ORDER, "quantity": "1e-3"}, -1100, "'quantity'"),
        ({**ORDER, "newClientOrderId": "has space"}, -1100, "'newClientOrderId'"),
        ({**ORDER, "symbol": "NOPEUSDT"}, -1121, "Invalid symbol."),
        ({"symbol": "BTCUSDT", "side": "BUY", "type": "MARKET"}, -1102, "'quantity' or 'quoteOrderQty'"),
    ],
)
def test_order_parameters_are_strict(params: dict[str, str], code: int, fragment: str) -> None:
    response = call(make_api(), "POST", "/api/v3/order", params)
    assert error_code(response) == code, response.body
    assert fragment in str(response.body)


def test_duplicate_parameters_are_refused() -> None:
    response = call(make_api(), "GET", "/api/v3/openOrders", [("symbol", "BTCUSDT"), ("symbol", "ETHUSDT")])
    assert error_code(response) == -1101


def test_query_and_cancel_need_an_id_and_answer_2013_and_2011() -> None:
    api = make_api()
    assert error_code(call(api, "GET", "/api/v3/order", {"symbol": "BTCUSDT"})) == -1102
    assert error_code(call(api, "GET", "/api/v3/order", {"symbol": "BTCUSDT", "origClientOrderId": "x"})) == -2013
    assert error_code(call(api, "DELETE", "/api/v3/order", {"symbol": "BTCUSDT", "orderId": "99"})) == -2011
    assert error_code(call(api, "GET", "/api/v3/orderList", {"origClientOrderId": "x"})) == -2018


def test_response_types() -> None:
    api = make_api()
    full = call(api, "POST", "/api/v3/order", {**ORDER, "newClientOrderId": "f"}).body
    ack = call(api, "POST", "/api/v3/order", {**ORDER, "newClientOrderId": "a", "newOrderRespType": "ACK"}).body
    assert isinstance(full, dict) and isinstance(ack, dict)
    assert set(ack) == {"symbol", "orderId", "orderListId", "clientOrderId", "transactTime"}
    assert full["status"] == "FILLED" and full["fills"] and full["executedQty"] == "0.00100000"
    assert full["orderListId"] == -1 and isinstance(full["orderId"], int)


# -- weights, 429, 418 ------------------------------------------------------------------------


def test_every_answer_reports_the_used_weight() -> None:
    api = make_api()
    assert call(api, "GET", "/api/v3/exchangeInfo", signed=False).headers["X-MBX-USED-WEIGHT-1M"] == "20"
    assert call(api, "GET", "/api/v3/openOrders").headers["X-MBX-USED-WEIGHT-1M"] == "100"  # 80 without symbol
    failed = call(api, "GET", "/api/v3/account", secret="wrong")
    assert failed.headers["X-MBX-USED-WEIGHT-1M"] == "120"


def test_429_at_the_limit_then_418_for_not_backing_off_then_the_ban_ends() -> None:
    limits_clock = SecondsClock(6_000.0)  # the start of a minute
    api = make_api(limits=RateLimits(weight_per_minute=60), limits_clock=limits_clock, ban_s=120)
    for _ in range(3):
        assert call(api, "GET", "/api/v3/account").status == 200  # 3 x 20 = 60
    limits_clock.t += 15
    limited = call(api, "GET", "/api/v3/time", signed=False)
    assert (limited.status, error_code(limited), limited.headers["Retry-After"]) == (429, -1003, "45")
    limits_clock.t += 10  # still inside Retry-After: a client that does not back off is banned
    banned = call(api, "GET", "/api/v3/time", signed=False)
    assert (banned.status, error_code(banned), banned.headers["Retry-After"]) == (418, -1003, "120")
    limits_clock.t += 100
    assert call(api, "GET", "/api/v3/time", signed=False).headers["Retry-After"] == "20"
    limits_clock.t += 20
    assert call(api, "GET", "/api/v3/time", signed=False).status == 200


def test_a_client_that_waits_out_retry_after_is_not_banned() -> None:
    limits_clock = SecondsClock()
    api = make_api(limits_clock=limits_clock)
    api.faults.too_many_requests(retry_after_s=7)
    assert call(api, "GET", "/api/v3/account").headers["Retry-After"] == "7"
    limits_clock.t += 7
    assert call(api, "GET", "/api/v3/account").status == 200


def test_order_rate_limit_per_10_seconds() -> None:
    limits_clock = SecondsClock()
    account = make_account(balances={"USDT": D("100000")})
    api = make_api(account, limits=RateLimits(orders_per_10s=3), limits_clock=limits_clock)
    counts = [call(api, "POST", "/api/v3/order", {**ORDER, "newClientOrderId": f"o{i}"}) for i in range(3)]
    assert [r.headers["X-MBX-ORDER-COUNT-10S"] for r in counts] == ["1", "2", "3"]
    over = call(api, "POST", "/api/v3/order", {**ORDER, "newClientOrderId": "o4"})
    assert (over.status, error_code(over)) == (429, -1015)
    assert "Retry-After" not in over.headers  # Binance: order-count 429s carry none
    limits_clock.t += 10
    assert call(api, "POST", "/api/v3/order", {**ORDER, "newClientOrderId": "o5"}).status == 200


# -- faults and the log -----------------------------------------------------------------------


def test_faults_after_accept_leave_the_order_placed() -> None:
    api = make_api()
    api.faults.timeout_after_accept()
    held = call(api, "POST", "/api/v3/order", {**ORDER, "newClientOrderId": "t1"})
    assert held.action == "hold"
    api.faults.server_error(503, after_accept=True, path="/api/v3/order")
    failed = call(api, "POST", "/api/v3/order", {**ORDER, "newClientOrderId": "t2"})
    assert (failed.status, error_code(failed)) == (503, -1001)
    api.faults.server_error(502)
    before = call(api, "POST", "/api/v3/order", {**ORDER, "newClientOrderId": "t3"})
    assert before.status == 502
    api.faults.truncate_after_accept()
    cut = call(api, "POST", "/api/v3/order", {**ORDER, "newClientOrderId": "t4"})
    assert (cut.status, cut.action) == (200, "truncate") and isinstance(cut.body, dict)
    placed = [o.client_order_id for o in api.account.orders["BTCUSDT"]]
    assert placed == ["t1", "t2", "t4"]  # the 502 came before processing


def test_business_faults_apply_to_the_next_matching_request_only() -> None:
    api = make_api()
    call(api, "POST", "/api/v3/order", {**ORDER, "newClientOrderId": "b1"})
    api.faults.order_not_found()
    query = {"symbol": "BTCUSDT", "origClientOrderId": "b1"}
    assert error_code(call(api, "GET", "/api/v3/order", query)) == -2013
    assert call(api, "GET", "/api/v3/order", query).status == 200
    api.faults.insufficient_balance()
    assert error_code(call(api, "POST", "/api/v3/order", {**ORDER, "newClientOrderId": "b2"})) == -2010
    assert call(api, "POST", "/api/v3/order", {**ORDER, "newClientOrderId": "b2"}).status == 200
    assert api.faults.pending == 0


def test_the_request_log_records_decoded_params_without_the_signature() -> None:
    api = make_api()
    call(api, "POST", "/api/v3/order", {**ORDER, "quantity": "0.00012345", "newClientOrderId": "x"})
    last = api.requests[-1]
    assert (last.method, last.path, last.status, last.code, last.api_key) == ("POST", "/api/v3/order", 400, -1013, KEY)
    assert last.params["quantity"] == "0.00012345" and "signature" not in last.params
    assert SECRET not in str(last)


def test_exchange_info_lists_rate_limits_filters_and_status() -> None:
    account = make_account([SymbolSpec.named("BTCUSDT"), SymbolSpec.named("ETHUSDT", status="BREAK")])
    body = call(make_api(account), "GET", "/api/v3/exchangeInfo", signed=False).body
    assert isinstance(body, dict)
    limits = {(r["rateLimitType"], r["interval"]): r["limit"] for r in body["rateLimits"]}  # type: ignore[union-attr, index]
    assert limits[("REQUEST_WEIGHT", "MINUTE")] == 6000 and limits[("ORDERS", "SECOND")] == 50
    symbols = {s["symbol"]: s for s in body["symbols"]}  # type: ignore[union-attr, index]
    assert symbols["ETHUSDT"]["status"] == "BREAK"
    filters = {f["filterType"]: f for f in symbols["BTCUSDT"]["filters"]}
    assert filters["LOT_SIZE"]["stepSize"] == "0.00001000" and filters["NOTIONAL"]["minNotional"] == "5.00000000"
    assert "STOP_LOSS_LIMIT" in symbols["BTCUSDT"]["orderTypes"]
    one = call(make_api(account), "GET", "/api/v3/exchangeInfo", {"symbol": "NOPE"}, signed=False)
    assert error_code(one) == -1121


def test_my_trades_from_id_and_most_recent() -> None:
    api = make_api()
    for i in range(4):
        call(api, "POST", "/api/v3/order", {**ORDER, "newClientOrderId": f"m{i}"})
    recent = call(api, "GET", "/api/v3/myTrades", {"symbol": "BTCUSDT", "limit": "2"}).body
    since = call(api, "GET", "/api/v3/myTrades", {"symbol": "BTCUSDT", "fromId": "2", "limit": "2"}).body
    assert [t["id"] for t in recent] == [3, 4]  # type: ignore[index, union-attr]
    assert [t["id"] for t in since] == [2, 3]  # type: ignore[index, union-attr]
    bad = call(api, "GET", "/api/v3/myTrades", {"symbol": "BTCUSDT", "fromId": "1", "startTime": "1"})
    assert error_code(bad) == -1128
