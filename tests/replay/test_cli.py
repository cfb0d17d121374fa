"""The replay server's command-line entry."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path

import aiohttp
import orjson
import pytest

from tradebotd.replay.cli import main, serve_replay
from tradebotd.replay.series import format_csv

from .conftest import series


class Announcements(io.StringIO):
    """Captures what serve_replay prints and lets a test await the PORT line."""

    def __init__(self) -> None:
        super().__init__()
        self.port_printed = asyncio.Event()

    def write(self, text: str) -> int:
        written = super().write(text)
        if "PORT=" in self.getvalue():
            self.port_printed.set()
        return written


async def test_prints_the_port_and_serves_the_replay_clock(tmp_path: Path) -> None:
    path = tmp_path / "BTCUSDT_1m.csv"
    path.write_text(format_csv(series(count=30).candles), encoding="utf-8")
    out = Announcements()
    task = asyncio.create_task(serve_replay(path, speed=1.0, past=20, out=out))
    async with asyncio.timeout(10):
        await out.port_printed.wait()
    [line] = out.getvalue().splitlines()
    port = int(line.removeprefix("PORT="))

    url = f"http://127.0.0.1:{port}/api/v3/klines"
    async with (
        aiohttp.ClientSession() as http,
        http.get(url, params={"symbol": "BTCUSDT", "interval": "1m"}) as response,
    ):
        rows = orjson.loads(await response.read())
    assert len(rows) == 21

    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


def test_bad_data_is_one_line_and_exit_code_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "BTCUSDT_1m.csv"
    bad.write_text("time,open\n", encoding="utf-8")
    assert main(["--data", str(bad)]) == 2
    assert main(["--data", str(tmp_path / "missing_BTCUSDT_1m.csv")]) == 2
    errors = capsys.readouterr().err.splitlines()
    assert len(errors) == 2 and all(line.startswith("replay-server: ") for line in errors)
    assert "expected the header" in errors[0]


async def test_symbols_serves_a_synthetic_market_of_that_many_symbols() -> None:
    out = Announcements()
    task = asyncio.create_task(serve_replay(symbols=3, speed=1.0, past=20, out=out))
    async with asyncio.timeout(10):
        await out.port_printed.wait()
    port = int(out.getvalue().splitlines()[0].removeprefix("PORT="))
    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{port}/api/v3/exchangeInfo") as response:
            info = orjson.loads(await response.read())
        async with http.get(
            f"http://127.0.0.1:{port}/api/v3/klines", params={"symbol": "BNBUSDT", "interval": "15m"}
        ) as response:
            rows = orjson.loads(await response.read())
    assert [s["symbol"] for s in info["symbols"]] == ["BNBUSDT", "BTCUSDT", "ETHUSDT"]
    assert len(rows) == 2  # 20 closed minutes and one in progress: one whole quarter hour, one begun
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


def test_symbols_and_data_together_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--symbols", "2", "--data", str(tmp_path / "BTCUSDT_1m.csv")]) == 2
    assert "--symbols replaces --data" in capsys.readouterr().err
