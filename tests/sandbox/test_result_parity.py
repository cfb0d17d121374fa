"""The host's quick result check (``result._certainly_valid``) never disagrees with the pydantic
model that defines a valid result: on edge cases and on random results, ``parse_decision`` gives
the decision the model gives (values and types) or the model's own InvalidResult."""

from __future__ import annotations

import random

import pytest

from tradebotd.model import Decision
from tradebotd.sandbox import InvalidResult
from tradebotd.sandbox.result import _certainly_valid, _validated_by_model, parse_decision

EDGE_CASES = [
    b'{"signal":"buy","amount":1}',
    b'{"signal":"buy","amount":true}',
    b'{"signal":"buy","amount":0}',
    b'{"signal":"buy","amount":-0.0}',
    b'{"signal":"buy","amount":5e-324}',
    b'{"signal":"buy","amount":1e-400}',
    b'{"signal":"buy","amount":1.7976931348623157e308}',
    b'{"signal":"buy","amount":9007199254740993}',
    b'{"signal":"buy","amount":123456789012345678901234567890}',
    b'{"signal":"buy","amount":"1"}',
    b'{"signal":"buy","amount":null,"takeProfit":null,"stopLoss":null,"reason":null,"indicators":null}',
    b'{"signal":"buy","amount":"x","amount":1}',
    b'{"signal":"moon","signal":"buy"}',
    b'{"signal":"buy","signal":"moon"}',
    b'{"signal":["buy"]}',
    b'{"signal":{"a":1}}',
    b'{"signal":null}',
    b'{"signal":"hold","x":NaN}',
    b'{"signal":"hold","x":1e400}',
    b'{"signal":"hold","x":' + b"[" * 300 + b"]" * 300 + b"}",
    b'{"signal":"hold","extra":1}',
    b'{"signal":"hold","reason":"\\ud800"}',
    b'{"signal":"hold","reason":"\\ud83d\\ude00"}',
    b'{"signal":"hold","reason":"' + b"r" * 1000 + b'"}',
    b'{"signal":"hold","reason":"' + b"r" * 1001 + b'"}',
    b'{"signal":"hold","reason":"' + "é".encode() * 1000 + b'"}',
    b'{"signal":"hold","reason":"' + "é".encode() * 1001 + b'"}',
    b'{"signal":"hold","reason":""}',
    b'{"signal":"hold","indicators":{}}',
    b'{"signal":"hold","indicators":[]}',
    b'{"signal":"hold","indicators":{"x":-0}}',
    b'{"signal":"hold","indicators":{"x":-0.0}}',
    b'{"signal":"hold","indicators":{"x":1E2}}',
    b'{"signal":"hold","indicators":{"x":2.0}}',
    b'{"signal":"hold","indicators":{"x":1e400}}',
    b'{"signal":"hold","indicators":{"x":9223372036854775807}}',
    b'{"signal":"hold","indicators":{"x":9223372036854775808}}',
    b'{"signal":"hold","indicators":{"x":18446744073709551615}}',
    b'{"signal":"hold","indicators":{"x":18446744073709551616}}',
    b'{"signal":"hold","indicators":{"x":-9223372036854775809}}',
    b'{"signal":"hold","indicators":{"x":123456789012345678901234567890}}',
    b'{"signal":"hold","indicators":{"x":1.2345678901234568e+29}}',
    b'{"signal":"hold","indicators":{"x":[]}}',
    b'{"signal":"hold","indicators":{"x":[1,2.5,-0,1e300]}}',
    b'{"signal":"hold","indicators":{"x":[true]}}',
    b'{"signal":"hold","indicators":{"x":[null]}}',
    b'{"signal":"hold","indicators":{"x":["1"]}}',
    b'{"signal":"hold","indicators":{"x":[[1]]}}',
    b'{"signal":"hold","indicators":{"x":[123456789012345678901234567890]}}',
    b'{"signal":"hold","indicators":{"x":null}}',
    b'{"signal":"hold","indicators":{"x":{"y":1}}}',
    b'{"signal":"hold","indicators":{"a":1,"a":"s"}}',
    b'{"signal":"hold","indicators":{"a":"s","a":null}}',
    b'{"signal":"hold","indicators":{"":true,"\\u0000":false}}',
    b'{"signal":"hold"} ',
    b' {"signal":"hold"}',
    b'{"signal":"hold"} x',
    b'\xef\xbb\xbf{"signal":"hold"}',
    b'{"signal":"hold","reason":"\xff"}',
    b"[]",
    b"null",
    b'"hold"',
    b"",
    b"not json",
]


def outcome(parse: object, payload: bytes) -> tuple[str, object]:
    """What ``parse`` made of ``payload``: the decision with every value's type, or the message."""
    try:
        decision = parse(payload)  # type: ignore[operator]
    except InvalidResult as exc:
        return "invalid", str(exc)
    assert isinstance(decision, Decision)
    indicators = None if decision.indicators is None else {k: typed(v) for k, v in decision.indicators.items()}
    fields = (decision.amount, decision.reason, decision.take_profit, decision.stop_loss)
    return "valid", (decision.signal, *(typed(v) for v in fields), indicators)


def typed(value: object) -> object:
    if isinstance(value, list):
        return [typed(x) for x in value]
    return type(value).__name__, repr(value)


def by_model(payload: bytes) -> Decision:
    return _validated_by_model(payload, 1)


@pytest.mark.parametrize("payload", EDGE_CASES)
def test_edge_cases_get_the_model_s_answer(payload: bytes) -> None:
    assert outcome(parse_decision, payload) == outcome(by_model, payload)


VALUES = [
    "null", "true", "false", "0", "-0", "1", "-1", "20", "0.5", "-0.5", "2.0", "1e-320", "1e300", "-1e300",
    "9007199254740993", "9223372036854775808", "123456789012345678901234567890", "1e400", "NaN", "Infinity",
    '"x"', '""', '"buy"', '"' + "r" * 1001 + '"', "[]", "[1]", "[1,2.5]", "[true]", "[null]", "[1e400]",
    '{"y":1}', "{}",
]


def random_result(rng: random.Random) -> bytes:
    fields = []
    for _ in range(rng.randint(0, 7)):
        key = rng.choice(["signal", "amount", "reason", "indicators", "takeProfit", "stopLoss", "extra"])
        if key == "signal":
            value = rng.choice(['"buy"', '"sell"', '"hold"', '"BUY"', "1", "null"])
        elif key == "indicators" and rng.random() < 0.8:
            entries = [f'"{rng.choice("abc")}":{rng.choice(VALUES)}' for _ in range(rng.randint(0, 4))]
            value = "{" + ",".join(entries) + "}"
        else:
            value = rng.choice(VALUES)
        fields.append(f'"{key}":{value}')
    if rng.random() < 0.7:
        fields.insert(0, '"signal":"' + rng.choice(["buy", "sell", "hold"]) + '"')
    return ("{" + ",".join(fields) + "}").encode()


def test_random_results_get_the_model_s_answer() -> None:
    rng = random.Random(20240601)
    quick = 0
    for _ in range(5_000):
        payload = random_result(rng)
        assert outcome(parse_decision, payload) == outcome(by_model, payload), payload
        quick += _certainly_valid(payload) is not None
    assert quick > 500  # the quick check answers a good share of them


def test_what_strategies_return_takes_the_quick_check() -> None:
    """The guest writes only the known keys, numbers as JSON.stringify does: no model needed."""
    for payload in (
        b'{"signal":"hold","indicators":{"fastSma":30012.254,"slowSma":30011.5}}',
        b'{"signal":"buy","amount":0.001,"reason":"fast SMA crossed above slow SMA","indicators":{"fastSma":1,"n":20}}',
        b'{"signal":"sell","takeProfit":110,"stopLoss":95.5,"indicators":{"up":true,"trend":"x","band":[99,103.5]}}',
    ):
        assert _certainly_valid(payload) == by_model(payload)
