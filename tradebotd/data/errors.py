"""Errors of the historical-data layer (CSV files, the store's ``market_data``, downloads).

MarketDataError (tradebotd.errors)
└── DataError
    ├── CandleDataError          a CSV or stored series is unusable; the message names the
    │                            file (and line) and what is wrong
    └── DownloadError
        ├── DownloadRejected     the exchange refused the request: unknown symbol, interval
        │                        or parameters. Fix the command; retrying will not help
        └── DownloadUnavailable  network failure, timeout, HTTP 5xx, rate limit, after the
                                 retries ran out. Re-run the same command: it resumes
"""

from __future__ import annotations

from tradebotd.errors import MarketDataError

__all__ = ["CandleDataError", "DataError", "DownloadError", "DownloadRejected", "DownloadUnavailable"]


class DataError(MarketDataError):
    """Historical candle data could not be read, written or fetched."""


class CandleDataError(DataError):
    """A candle series (CSV file or store rows) is malformed or inconsistent."""


class DownloadError(DataError):
    """A download failed."""


class DownloadRejected(DownloadError):
    """The exchange rejected the request (bad symbol, interval or parameters)."""


class DownloadUnavailable(DownloadError):
    """The exchange could not be reached or answered with a transient error; safe to re-run."""
