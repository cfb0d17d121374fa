"""``tradebotd data download`` against the replay server (Binance's REST on 127.0.0.1) through ccxt:
exact strings, paging, resuming, gaps, and errors people can act on."""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from tradebotd.data import download
from tradebotd.data.candles import read_csv, read_store
from tradebotd.data.download import CcxtKlines, CsvSink, StoreSink
from tradebotd.data.errors import CandleDataError, DownloadUnavailable
from tradebotd.model import Candle, StreamKey
from tradebotd.replay.demo import generate
from tradebotd.replay.series import Series
from tradebotd.replay.server import ReplayServer

KEY = StreamKey("BTCUSDT", "1m")
MIN = 60_000
T0 = 1_700_000_040_000
COUNT = 2_600
OUTAGE = range(1_500, 1_510)  # candles the exchange does not have


def candles() -> list[Candle]:
    every = generate(COUNT, seed=3, start_ms=T0)
    return [c for i, c in enumerate(every) if i not in OUTAGE]


@pytest.fixture
async def server() -> AsyncIterator[ReplayServer]:
    # past = every slot: the whole series has closed, as history on a real exchange
    async with ReplayServer([Series(KEY, tuple(candles()))], past=COUNT, ping_interval_s=None) as replay:
        yield replay


def klines_requests(server: ReplayServer) -> list[dict[str, str]]:
    return [query for path, query in server.rest_requests if path == "/api/v3/klines"]


async def command(server: ReplayServer, tmp_path: Path, *argv: str, retry_delay_s: float = 0.0) -> int:
    config = tmp_path / "t.toml"
    config.write_text(f'[market]\nrest_url = "{server.rest_url}"\n[store]\npath = "{tmp_path / "store.db"}"\n')
    parser = argparse.ArgumentParser()
    parser.add_argument("--config")
    download.add_arguments(parser)
    args = parser.parse_args(["--config", str(config), *argv])
    return await download.run_async(args, progress=False, retry_delay_s=retry_delay_s)


async def test_csv_holds_the_exchanges_exact_strings_paged_from_since(
    server: ReplayServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "BTCUSDT_1m.csv"
    assert await command(server, tmp_path, "btc/usdt", "1m", "--since", str(T0), "--out", str(out)) == 0
    lines = out.read_text().splitlines()
    assert lines[0] == "time,open,high,low,close,volume,time_iso"
    # Binance's strings as sent (8 decimals), not floats printed back; the open time for people
    assert lines[1] == (
        "1700000040000,42000.00000000,42038.27000000,41987.66000000,42034.36000000,3.44399000,2023-11-14T22:14:00Z"
    )
    table = read_csv(out, KEY)
    expected = candles()
    assert len(table) == len(expected) == COUNT - len(OUTAGE)
    assert table.missing == len(OUTAGE)  # left as a gap, nothing invented
    for i in (0, 1499, 1500, len(expected) - 1):
        assert table.candle(i) == expected[i]
    starts = [int(q["startTime"]) for q in klines_requests(server)]
    assert starts == [T0, T0 + 1000 * MIN, T0 + 2000 * MIN + len(OUTAGE) * MIN]  # 1000 per page, from since
    assert all(q["limit"] == "1000" for q in klines_requests(server))
    report = capsys.readouterr().out
    assert f"{COUNT - len(OUTAGE):,} candles downloaded" in report and "10 candle slots had no data" in report
    assert not (tmp_path / "store.db").exists()  # --out alone writes only the CSV


async def test_a_rerun_resumes_after_the_last_candle_and_repairs_a_torn_line(
    server: ReplayServer, tmp_path: Path
) -> None:
    out = tmp_path / "a.csv"
    middle = T0 + 1200 * MIN
    assert (
        await command(server, tmp_path, "BTCUSDT", "1m", "--since", str(T0), "--until", str(middle), "--out", str(out))
        == 0
    )
    assert len(read_csv(out, KEY)) == 1200
    with out.open("a") as f:
        f.write("1700072040000,42")  # an interrupted write
    server.rest_requests.clear()
    assert await command(server, tmp_path, "BTCUSDT", "1m", "--since", str(T0), "--out", str(out)) == 0
    assert int(klines_requests(server)[0]["startTime"]) == middle  # after the last complete candle
    table = read_csv(out, KEY)
    assert len(table) == COUNT - len(OUTAGE) and table.missing == len(OUTAGE)
    server.rest_requests.clear()
    assert await command(server, tmp_path, "BTCUSDT", "1m", "--since", str(T0), "--out", str(out)) == 0
    assert klines_requests(server) == []  # up to date: nothing to fetch


async def test_a_file_begun_without_the_iso_column_is_continued_without_it(
    server: ReplayServer, tmp_path: Path
) -> None:
    out = tmp_path / "old.csv"  # as an older tradebotd wrote it
    first = candles()[0]
    out.write_text(
        f"time,open,high,low,close,volume\n{first.open_time},{first.open},{first.high},{first.low},{first.close},"
        f"{first.volume}\n"
    )
    until = T0 + 10 * MIN
    argv = ["BTCUSDT", "1m", "--since", str(T0), "--until", str(until), "--out", str(out)]
    assert await command(server, tmp_path, *argv) == 0
    lines = out.read_text().splitlines()
    assert len(lines) == 11 and all(line.count(",") == 5 for line in lines)
    assert len(read_csv(out, KEY)) == 10


def test_a_file_that_is_not_a_candle_csv_is_left_alone(tmp_path: Path) -> None:
    out = tmp_path / "notes.csv"
    out.write_text("name,price\nbtc,1\n")
    with pytest.raises(CandleDataError, match=r"notes.csv:1: expected the header .* found 'name,price'; not appending"):
        CsvSink(out, KEY)
    assert out.read_text() == "name,price\nbtc,1\n"


async def test_store_download_fetches_only_its_holes(server: ReplayServer, tmp_path: Path) -> None:
    db = tmp_path / "store.db"
    recorded = StoreSink(db, KEY)  # candles the daemon recorded live, later in the range
    every = candles()
    recorded.write(
        [
            download.Row(c.open_time, str(c.open), str(c.high), str(c.low), str(c.close), str(c.volume))
            for c in every[2000:2100]
        ]
    )
    recorded.close()
    assert await command(server, tmp_path, "BTCUSDT", "1m", "--since", str(T0)) == 0
    requested = [(int(q["startTime"]), int(q["endTime"])) for q in klines_requests(server)]
    assert (every[2000].open_time, every[2099].open_time) not in requested
    assert all(not every[2000].open_time <= start <= every[2099].open_time for start, _ in requested)
    table = read_store(db, KEY)
    assert len(table) == len(every) and table.missing == len(OUTAGE)
    assert table.candle(1234) == every[1234]
    server.rest_requests.clear()
    assert await command(server, tmp_path, "BTCUSDT", "1m", "--since", str(T0)) == 0
    # the outage is the only hole left: asked about once more, still nothing invented
    assert [int(q["startTime"]) for q in klines_requests(server)] == [T0 + OUTAGE.start * MIN]
    assert len(read_store(db, KEY)) == len(every)


async def test_csv_and_store_together(server: ReplayServer, tmp_path: Path) -> None:
    out = tmp_path / "b.csv"
    assert (
        await command(
            server,
            tmp_path,
            "BTCUSDT",
            "1m",
            "--since",
            str(T0 + 100 * MIN),
            "--until",
            str(T0 + 400 * MIN),
            "--out",
            str(out),
            "--store",
        )
        == 0
    )
    assert len(read_csv(out, KEY)) == 300
    assert len(read_store(tmp_path / "store.db", KEY)) == 300


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["XYZUSDT", "1m", "--since", str(T0)], "unknown symbol (Invalid symbol. (code -1121))"),
        (["BTCUSDT", "7m", "--since", str(T0)], "unsupported kline interval '7m'"),
        (["BTC USDT", "1m", "--since", str(T0)], "not a Binance spot symbol"),
        (["BTCUSDT", "1m", "--since", "2024-01-02", "--until", "2024-01-01"], "--until must be after --since"),
        (["BTCUSDT", "1m", "--since", "2099-01-01"], "is in the future"),
    ],
)
async def test_bad_requests_are_explained(
    server: ReplayServer, tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    assert await command(server, tmp_path, *argv) == 2
    assert message in capsys.readouterr().err


def test_a_bad_date_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    download.add_arguments(parser)
    with pytest.raises(SystemExit):
        parser.parse_args(["BTCUSDT", "1m", "--since", "yesterday"])
    assert "use YYYY-MM-DD" in capsys.readouterr().err


async def test_transient_failures_are_retried(server: ReplayServer, tmp_path: Path) -> None:
    server.fail_rest(2)  # HTTP 503 twice, then fine
    out = tmp_path / "c.csv"
    assert (
        await command(
            server, tmp_path, "BTCUSDT", "1m", "--since", str(T0), "--until", str(T0 + 50 * MIN), "--out", str(out)
        )
        == 0
    )
    assert len(read_csv(out, KEY)) == 50


class FailingAfterOnePage:
    """The real ccxt source, but the server answers 503 to every request after the first page."""

    def __init__(self, server: ReplayServer) -> None:
        self.server = server
        self.inner = CcxtKlines(server.rest_url, rate_limit=False)
        self.pages = 0

    async def server_time(self) -> int:
        return await self.inner.server_time()

    async def klines(self, key: StreamKey, start: int, end: int, limit: int) -> list[Any]:
        self.pages += 1
        if self.pages > 1:
            self.server.fail_rest(1)
        return await self.inner.klines(key, start, end, limit)

    async def close(self) -> None:
        await self.inner.close()


async def test_a_network_failure_keeps_what_was_saved_and_a_rerun_resumes(server: ReplayServer, tmp_path: Path) -> None:
    out = tmp_path / "d.csv"
    source = FailingAfterOnePage(server)
    sink = CsvSink(out, KEY)
    try:
        with pytest.raises(DownloadUnavailable, match=r"OperationFailed: Internal error"):
            await download.download(source, KEY, T0, None, [sink], retries=2, retry_delay_s=0)
    finally:
        sink.close()
        await source.close()
    assert source.pages == 4  # one good page, then three failed attempts at the second
    assert len(read_csv(out, KEY)) == 1000  # the first page was written before the failure
    assert await command(server, tmp_path, "BTCUSDT", "1m", "--since", str(T0), "--out", str(out)) == 0
    assert len(read_csv(out, KEY)) == COUNT - len(OUTAGE)


async def test_an_unreachable_exchange_is_reported_with_the_way_out(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "t.toml"
    config.write_text('[market]\nrest_url = "http://127.0.0.1:9"\n')  # discard port: connection refused
    parser = argparse.ArgumentParser()
    parser.add_argument("--config")
    download.add_arguments(parser)
    args = parser.parse_args(
        ["--config", str(config), "BTCUSDT", "1m", "--since", "2024-01-01", "--out", str(tmp_path / "e.csv")]
    )
    assert await download.run_async(args, progress=False, retry_delay_s=0) == 1
    err = capsys.readouterr().err
    assert "ExchangeNotAvailable" in err and "run the same command again to resume" in err


def test_exact_decimal_strings_survive_the_store(tmp_path: Path) -> None:
    sink = StoreSink(tmp_path / "s.db", KEY)
    sink.write([download.Row(T0, "0.00000001", "0.00000003", "0.00000001", "0.00000002", "123456789.12345678")])
    sink.close()
    candle = read_store(tmp_path / "s.db", KEY).candle(0)
    assert candle.high == Decimal("0.00000003") and candle.volume == Decimal("123456789.12345678")
