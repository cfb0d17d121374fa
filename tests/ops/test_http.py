"""The HTTP server on 127.0.0.1 (ephemeral port) with aiohttp's client: health codes and bodies,
Prometheus text, the trigger's authentication, its 404 without a secret, size limits, and the
refusal to serve other machines without a secret."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tradebotd.errors import ConfigError
from tradebotd.logs import mask_secrets
from tradebotd.ops.health import Health, Problem
from tradebotd.ops.http import OpsServer, TriggerResult, bearer_matches, check_exposure, cron_secret, is_loopback
from tradebotd.ops.metrics import build_registry
from tradebotd.ops.status import Sources

SECRET = "s3cret-0123456789abcdef"
STALE = Health((Problem("stream", "BTCUSDT/1m", "last closed candle 200 s ago; expected within 120 s"),), ())


@dataclass
class Trigger:
    """Records what it was asked to run (the engine implements the real one)."""

    running: tuple[str, ...] = ("s1", "s2")
    calls: list[str] = field(default_factory=list)

    async def run_all(self) -> Sequence[TriggerResult]:
        self.calls.append("*")
        return [
            TriggerResult("s1", "evaluated", candle_time=60_000, signal="buy"),
            TriggerResult("s2", "already_evaluated", candle_time=60_000),
        ]

    async def run_one(self, strategy_id: str) -> TriggerResult | None:
        self.calls.append(strategy_id)
        if strategy_id not in self.running:
            return None
        return TriggerResult(strategy_id, "evaluated", candle_time=60_000, signal="hold")


@dataclass
class Fixture:
    server: OpsServer
    trigger: Trigger
    health: list[Health]
    session: aiohttp.ClientSession

    @property
    def url(self) -> str:
        return self.server.url


async def serve(secret: str | None) -> tuple[OpsServer, Trigger, list[Health]]:
    trigger = Trigger()
    health = [Health((), (("BTCUSDT/1m", 5.0),))]
    server = OpsServer(
        host="127.0.0.1",
        port=0,
        health=lambda: health[0],
        registry=build_registry(Sources(), server_now_ms=lambda: 0, health=lambda: health[0]),
        trigger=trigger,
        secret=secret,
    )
    await server.start()
    return server, trigger, health


@pytest.fixture
async def ops() -> AsyncIterator[Fixture]:
    server, trigger, health = await serve(SECRET)
    async with aiohttp.ClientSession() as session:
        yield Fixture(server, trigger, health, session)
    await server.close()


@pytest.fixture
async def no_secret() -> AsyncIterator[Fixture]:
    server, trigger, health = await serve(None)
    async with aiohttp.ClientSession() as session:
        yield Fixture(server, trigger, health, session)
    await server.close()


async def test_healthz_is_200_when_healthy_and_503_naming_what_is_stale(ops: Fixture) -> None:
    async with ops.session.get(ops.url + "/healthz") as resp:
        assert resp.status == 200
        assert await resp.json() == {"status": "ok", "problems": [], "streams": {"BTCUSDT/1m": 5.0}}
    ops.health[0] = STALE
    async with ops.session.get(ops.url + "/healthz") as resp:
        assert resp.status == 503
        body = await resp.json()
        assert body["status"] == "unhealthy"
        assert body["problems"] == [
            {
                "check": "stream",
                "subject": "BTCUSDT/1m",
                "detail": "last closed candle 200 s ago; expected within 120 s",
            }
        ]


async def test_metrics_parse_with_prometheus_clients_parser(ops: Fixture) -> None:
    async with ops.session.get(ops.url + "/metrics") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain; version=")
        text = await resp.text()
    names = {f.name for f in text_string_to_metric_families(text)}
    assert {"tradebotd_healthy", "tradebotd_build_info", "tradebotd_resident_memory_bytes"} <= names


async def test_the_trigger_runs_with_the_right_secret(ops: Fixture) -> None:
    headers = {"Authorization": f"Bearer {SECRET}"}
    async with ops.session.post(ops.url + "/api/cron/strategies", headers=headers, json={"source": "cron"}) as resp:
        assert resp.status == 200
        body = await resp.json()
    assert body == {
        "strategies": 2,
        "evaluated": 1,
        "already_evaluated": 1,
        "no_candle": 0,
        "error": 0,
        "results": [
            {"strategy_id": "s1", "outcome": "evaluated", "candle_time": 60_000, "signal": "buy", "detail": None},
            {
                "strategy_id": "s2",
                "outcome": "already_evaluated",
                "candle_time": 60_000,
                "signal": None,
                "detail": None,
            },
        ],
    }
    async with ops.session.post(ops.url + "/strategies/s2/run", headers={"authorization": f"bearer {SECRET}"}) as resp:
        assert resp.status == 200
        assert (await resp.json())["results"][0]["strategy_id"] == "s2"
    async with ops.session.post(ops.url + "/strategies/nope/run", headers=headers) as resp:
        assert resp.status == 404
    assert ops.trigger.calls == ["*", "s2", "nope"]


@pytest.mark.parametrize(
    "authorization",
    [None, "", "Bearer", "Bearer ", f"Basic {SECRET}", "Bearer wrong-secret-0123456789", f"Bearer {SECRET}x", SECRET],
)
async def test_a_wrong_or_missing_secret_is_401_and_runs_nothing(ops: Fixture, authorization: str | None) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    for path in ("/api/cron/strategies", "/strategies/s1/run"):
        async with ops.session.post(ops.url + path, headers=headers) as resp:
            assert resp.status == 401
            assert resp.headers["WWW-Authenticate"].startswith("Bearer")
            assert SECRET not in await resp.text()
    assert ops.trigger.calls == []


async def test_without_cron_secret_the_trigger_endpoints_do_not_exist(no_secret: Fixture) -> None:
    for path in ("/api/cron/strategies", "/strategies/s1/run"):
        async with no_secret.session.post(no_secret.url + path, headers={"Authorization": "Bearer x"}) as resp:
            assert resp.status == 404
    assert no_secret.trigger.calls == []
    async with no_secret.session.get(no_secret.url + "/healthz") as resp:
        assert resp.status == 200  # health and metrics do not need the secret


async def test_bodies_and_headers_are_bounded(ops: Fixture) -> None:
    headers = {"Authorization": f"Bearer {SECRET}"}
    async with ops.session.post(ops.url + "/api/cron/strategies", headers=headers, data=b"x" * 100_000) as resp:
        assert resp.status == 413
    assert ops.trigger.calls == []
    async with ops.session.get(ops.url + "/healthz", headers={"X-Big": "y" * 10_000}) as resp:
        assert resp.status in (400, 431)
    many = {f"X-H{i}": "v" for i in range(64)}
    async with ops.session.get(ops.url + "/healthz", headers=many) as resp:
        assert resp.status in (400, 431)


async def test_wrong_method_and_unknown_paths(ops: Fixture) -> None:
    async with ops.session.get(ops.url + "/api/cron/strategies") as resp:
        assert resp.status == 405
    async with ops.session.get(ops.url + "/nope") as resp:
        assert resp.status == 404


def test_no_public_address_without_a_secret() -> None:
    for host in ("0.0.0.0", "::", "192.168.1.5", "example.org"):
        with pytest.raises(ConfigError, match="CRON_SECRET"):
            check_exposure(host, 8787, None)
        check_exposure(host, 8787, SECRET)  # with a secret it is the operator's choice
    for host in ("127.0.0.1", "127.1.2.3", "::1", "localhost"):
        assert is_loopback(host)
        check_exposure(host, 8787, None)
    with pytest.raises(ConfigError, match=r"0\.0\.0\.0:8787"):
        OpsServer(host="0.0.0.0", port=8787, health=lambda: STALE, registry=None, trigger=None, secret=None)  # type: ignore[arg-type]


async def test_a_port_in_use_is_a_clear_error(ops: Fixture) -> None:
    assert ops.server.port is not None
    other = OpsServer(
        host="127.0.0.1",
        port=ops.server.port,
        health=lambda: STALE,
        registry=build_registry(Sources(), server_now_ms=lambda: 0),
        trigger=None,
        secret=None,
    )
    with pytest.raises(ConfigError, match=f"127.0.0.1:{ops.server.port}: cannot listen"):
        await other.start()


def test_cron_secret_comes_from_the_environment_and_is_masked() -> None:
    assert cron_secret({}) is None
    assert cron_secret({"CRON_SECRET": "  "}) is None
    value = "from-env-" + "9" * 20
    assert cron_secret({"CRON_SECRET": value}) == value
    assert mask_secrets(f"token {value} leaked") == "token ********** leaked"
    with pytest.raises(ConfigError, match="at least 16"):
        cron_secret({"CRON_SECRET": "short-secret"})


def test_bearer_comparison() -> None:
    import hashlib

    digest = hashlib.sha256(SECRET.encode()).digest()
    assert bearer_matches(f"Bearer {SECRET}", digest)
    assert bearer_matches(f"  bearer   {SECRET}  ", digest)
    assert not bearer_matches(None, digest)
    assert not bearer_matches(f"Token {SECRET}", digest)
    assert not bearer_matches(f"Bearer {SECRET[:-1]}", digest)
