"""Generate the synthetic demo series ``data/DEMO_BTCUSDT_1m.csv``. It is not market data.

A seeded random walk around 42,000 USDT made of alternating up and down trends of 15-45 minutes,
so that a 5/20 SMA cross strategy trades a handful of times within the first minutes of a replay
(at ``--speed 60`` a 1m candle closes every second). Only ``random.Random`` and decimal
arithmetic are used (no libm), so the file is byte-for-byte reproducible on any platform:

    python -m tradebotd.replay.demo            # rewrite the packaged file
    python -m tradebotd.replay.demo --check    # exit 1 if the packaged file differs
"""

from __future__ import annotations

import argparse
import random
import sys
from decimal import ROUND_HALF_EVEN, Decimal

from tradebotd.model import Candle, interval_ms
from tradebotd.replay.series import demo_csv, format_csv

__all__ = ["COUNT", "SEED", "START_MS", "generate", "main"]

SEED = 20240101
START_MS = 1_704_067_200_000  # 2024-01-01T00:00:00Z
COUNT = 3000
_CENT = Decimal("0.01")
_VOLUME_STEP = Decimal("0.00001")


def _noise(rng: random.Random) -> float:
    """Roughly normal, mean 0, sd 1 (Irwin-Hall of 12 uniforms): plain arithmetic, no libm."""
    return sum(rng.random() for _ in range(12)) - 6.0


def _decimal(value: float, step: Decimal) -> Decimal:
    return Decimal(repr(value)).quantize(step, rounding=ROUND_HALF_EVEN)


def generate(
    count: int = COUNT,
    *,
    seed: int = SEED,
    start_ms: int = START_MS,
    symbol: str = "BTCUSDT",
    interval: str = "1m",
    start_price: Decimal = Decimal("42000.00"),
) -> list[Candle]:
    """The demo series (defaults), or another synthetic one for tests."""
    step = interval_ms(interval)
    rng = random.Random(seed)
    close = start_price
    drift = 0.0
    trend_left = 0
    candles: list[Candle] = []
    for i in range(count):
        if trend_left == 0:  # a new trend: direction flips, strength and length are random
            trend_left = rng.randint(15, 45)
            direction = 1.0 if drift <= 0 else -1.0
            drift = direction * (0.0002 + 0.0004 * rng.random())
        trend_left -= 1
        change = drift + 0.0006 * _noise(rng)
        open_ = close
        close = (open_ * _decimal(1.0 + change, Decimal("0.0000001"))).quantize(_CENT)
        wick_up = _decimal(abs(0.0003 * _noise(rng)) * float(open_), _CENT)
        wick_down = _decimal(abs(0.0003 * _noise(rng)) * float(open_), _CENT)
        volume = _decimal(3.0 + 25.0 * rng.random() * rng.random(), _VOLUME_STEP)
        candles.append(
            Candle(
                symbol=symbol,
                interval=interval,
                open_time=start_ms + i * step,
                open=open_,
                high=max(open_, close) + wick_up,
                low=min(open_, close) - wick_down,
                close=close,
                volume=volume,
            )
        )
    return candles


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tradebotd.replay.demo", description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="compare with the packaged file instead of writing")
    args = parser.parse_args(argv)
    text = format_csv(generate())
    path = demo_csv()
    if args.check:
        same = path.exists() and path.read_text(encoding="utf-8") == text
        print(f"{path}: {'up to date' if same else 'DIFFERS from the generator'}")
        return 0 if same else 1
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    print(f"wrote {path} ({COUNT} candles)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
