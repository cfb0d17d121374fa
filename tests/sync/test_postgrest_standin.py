"""The PostgREST stand-in, exercised by the real async supabase client over HTTP: the calls the
daemon makes, PostgREST's status codes and error bodies, row level security per Clerk user, and
the fault controls the outage tests rely on."""

from __future__ import annotations

import uuid

import httpx
import psycopg
import pytest
from postgrest import APIError

from tests.standins.postgrest import PostgrestStandin, sign_jwt

from .conftest import ANON_KEY, client, user_jwt

ALICE, BOB = "user_2alice", "user_2bob"


def strategy(user: str, name: str = "s", **extra: object) -> dict[str, object]:
    return {"user_id": user, "name": name, "asset": "btcusdt", "interval": "1m", "typescript_code": "x", **extra}


async def test_reads_with_filters_casts_order_paging_and_counts(rest: PostgrestStandin) -> None:
    sb = await client(rest)
    rows = [
        {"symbol": "BTCUSDT", "interval": "1m", "open_time": t, "open": "1", "high": "2", "low": "0.5",
         "close": f"{t}.00000001", "volume": "0.10000000"}
        for t in range(1, 8)
    ]  # fmt: skip
    await sb.table("market_data").insert(rows).execute()
    res = (
        await sb.table("market_data")
        .select("open_time,close_text:close::text,volume::text", count="exact")
        .eq("symbol", "BTCUSDT")
        .in_("interval", ["1m", "5m"])
        .gte("open_time", 2)
        .order("open_time", desc=True)
        .range(1, 3)
        .execute()
    )
    assert res.data == [
        {"open_time": 6, "close_text": "6.00000001", "volume": "0.10000000"},
        {"open_time": 5, "close_text": "5.00000001", "volume": "0.10000000"},
        {"open_time": 4, "close_text": "4.00000001", "volume": "0.10000000"},
    ]
    assert res.count == 6
    assert rest.requests[-1].status == 206  # a page of a larger result
    either = (
        await sb.table("market_data")
        .select("open_time")
        .or_("open_time.eq.1,and(open_time.gt.5,open_time.lt.7)")
        .execute()
    )
    assert sorted(r["open_time"] for r in either.data) == [1, 6]
    head = await sb.table("market_data").select("*", count="exact", head=True).execute()
    assert head.count == 7 and head.data == []
    assert (await sb.table("market_data").select("id").is_("close", None).execute()).data == []


async def test_inserts_upserts_patch_delete_and_single(rest: PostgrestStandin) -> None:
    sb = await client(rest)
    inserted = await sb.table("strategies").insert(strategy(ALICE, parameters={"fast": 5})).execute()
    sid = inserted.data[0]["id"]
    assert inserted.data[0]["status"] == "draft" and inserted.data[0]["parameters"] == {"fast": 5}
    one = await sb.table("strategies").select("id,name").eq("id", sid).single().execute()
    assert one.data == {"id": sid, "name": "s"}
    assert await sb.table("strategies").select("*").eq("id", str(uuid.uuid4())).maybe_single().execute() is None

    await sb.table("strategies").update({"status": "running"}).eq("id", sid).execute()
    logs = [{"id": str(uuid.uuid4()), "strategy_id": sid, "level": "info", "message": f"m{i}", "data": {"i": i},
             "created_at": "2026-01-01T00:00:00.000Z"} for i in range(3)]  # fmt: skip
    await sb.table("strategy_logs").upsert(logs, on_conflict="id", ignore_duplicates=True).execute()
    again = await sb.table("strategy_logs").upsert(logs, on_conflict="id", ignore_duplicates=True).execute()
    assert again.data == []  # all duplicates: nothing inserted twice
    trade = {"id": str(uuid.uuid4()), "strategy_id": sid, "symbol": "BTCUSDT", "side": "buy", "amount": "0.00100000",
             "price": "30000.12345678", "fee": "0.03000012", "status": "filled", "client_order_id": "tb-1-abc-buy",
             "candle_time": 60_000, "created_at": "2026-01-01T00:00:00.000Z"}  # fmt: skip
    await sb.table("trades").upsert([trade], on_conflict="id").execute()
    await sb.table("trades").upsert([{**trade, "amount": "0.00200000"}], on_conflict="id").execute()
    back = await sb.table("trades").select("amount::text,price::text").eq("id", trade["id"]).execute()
    assert back.data == [{"amount": "0.00200000", "price": "30000.12345678"}]  # merged, exact

    deleted = await sb.table("strategy_logs").delete().eq("strategy_id", sid).execute()
    assert len(deleted.data) == 3
    assert (await sb.table("strategy_logs").select("id", count="exact").execute()).count == 0


async def test_rpc_table_scalar_void_and_raise(
    rest: PostgrestStandin, pg: psycopg.Connection[tuple[object, ...]]
) -> None:
    pg.execute("CREATE FUNCTION public.tb_test_add(a int, b int DEFAULT 1) RETURNS int LANGUAGE sql AS 'SELECT a + b'")
    pg.execute("CREATE FUNCTION public.tb_test_void() RETURNS void LANGUAGE sql AS 'SELECT'")
    pg.execute(
        "CREATE FUNCTION public.tb_test_raise() RETURNS int LANGUAGE plpgsql AS "
        "$$BEGIN RAISE EXCEPTION 'kaboom' USING HINT = 'h', DETAIL = 'd'; END$$"
    )
    rest.reset_catalog()
    sb = await client(rest)
    try:
        sid = (await sb.table("strategies").insert(strategy(ALICE, status="running")).execute()).data[0]["id"]
        claimed = await sb.rpc("tradebotd_claim_strategies", {"p_worker_id": "w1", "p_lease_s": 30}).execute()
        assert [r["strategy_id"] for r in claimed.data] == [sid]
        assert (await sb.rpc("tb_test_add", {"a": 41}).execute()).data == 42
        assert (await sb.rpc("tb_test_add", {"a": 40, "b": 2}, get=True).execute()).data == 42
        assert (await sb.rpc("tb_test_void", {}).execute()).data == []
        with pytest.raises(APIError) as err:
            await sb.rpc("tb_test_raise", {}).execute()
        assert (err.value.code, err.value.message, err.value.hint, err.value.details) == ("P0001", "kaboom", "h", "d")
        with pytest.raises(APIError) as err:
            await sb.rpc("tb_test_nope", {"a": 1}).execute()
        assert err.value.code == "PGRST202"
    finally:
        pg.execute("DROP FUNCTION tb_test_add, tb_test_void, tb_test_raise")


async def test_errors_have_postgrest_codes(rest: PostgrestStandin) -> None:
    sb = await client(rest)
    row = {"id": str(uuid.uuid4()), **strategy(ALICE)}
    await sb.table("strategies").insert(row).execute()
    cases = [
        (sb.table("strategies").insert(row), "23505", 409),
        (sb.table("strategies").insert({**strategy(ALICE), "colour": "red"}), "PGRST204", 400),
        (sb.table("nope").select("*"), "PGRST205", 404),
        (sb.table("strategies").select("*").eq("id", "abc"), "22P02", 400),
        (sb.table("strategies").insert({"user_id": ALICE}), "23502", 400),
        (sb.table("strategies").select("*, portfolios(*)"), "PGRST100", 400),  # embedding: not implemented
        (sb.table("strategies").select("*").contains("parameters", {"a": 1}), "PGRST100", 400),
        (sb.table("strategies").select("*").eq("portfolios.name", "x"), "PGRST108", 400),
    ]
    for query, code, status in cases:
        with pytest.raises(APIError) as err:
            await query.execute()
        assert (err.value.code, rest.requests[-1].status) == (code, status), err.value


async def test_row_level_security_per_clerk_user(rest: PostgrestStandin) -> None:
    service = await client(rest)
    alice = await client(rest, ANON_KEY, jwt=user_jwt(ALICE))
    bob = await client(rest, ANON_KEY, jwt=user_jwt(BOB))
    mine = (await alice.table("strategies").insert(strategy(ALICE, "mine")).execute()).data[0]["id"]
    with pytest.raises(APIError) as err:  # cannot create rows for someone else
        await alice.table("strategies").insert(strategy(BOB, "forged")).execute()
    assert err.value.code == "42501" and rest.requests[-1].status == 403
    await (
        service.table("strategy_logs")
        .insert({"strategy_id": mine, "level": "info", "message": "hello", "created_at": "2026-01-01T00:00:00Z"})
        .execute()
    )

    assert [r["name"] for r in (await alice.table("strategies").select("name").execute()).data] == ["mine"]
    assert (await bob.table("strategies").select("*").execute()).data == []
    assert (await bob.table("strategy_logs").select("*").execute()).data == []  # child rows via their strategy
    assert len((await alice.table("strategy_logs").select("*").execute()).data) == 1
    assert (await bob.table("strategies").update({"status": "running"}).eq("id", mine).execute()).data == []
    assert (await bob.table("strategies").delete().eq("id", mine).execute()).data == []
    assert (await alice.table("strategies").update({"status": "running"}).eq("id", mine).execute()).data[0][
        "status"
    ] == "running"
    anon = await client(rest, ANON_KEY)
    assert (await anon.table("strategies").select("*").execute()).data == []
    with pytest.raises(APIError) as err:  # the lease functions are the daemon's alone
        await alice.rpc("tradebotd_claim_strategies", {"p_worker_id": "evil", "p_lease_s": 30}).execute()
    assert err.value.code == "42501"
    assert len((await service.table("strategies").select("id").execute()).data) == 1


async def test_bad_or_missing_keys_are_refused(rest: PostgrestStandin) -> None:
    forged = sign_jwt({"role": "service_role"}, "not-the-project-secret-not-the-project-secret")
    with pytest.raises(APIError) as err:
        await (await client(rest, forged)).table("strategies").select("*").execute()
    assert err.value.code == "PGRST301" and rest.requests[-1].status == 401


async def test_fault_controls(rest: PostgrestStandin) -> None:
    sb = await client(rest)
    rest.fail_next(1, status=503)
    with pytest.raises(APIError):
        await sb.table("strategies").select("id").execute()
    await rest.go_down()
    with pytest.raises(httpx.TransportError):  # refused, or the kept-alive connection dropped
        await sb.table("strategies").select("id").execute()
    await rest.come_up()
    assert (await sb.table("strategies").select("id").execute()).data == []
    retrying = await client(rest, retry=True)
    rest.fail_next(1, status=503)
    assert (await retrying.table("strategies").select("id").execute()).data == []  # GET retried once (1 s)
    assert [r.status for r in rest.requests[-2:]] == [503, 200]
