"""Historical market data: candle tables from CSV or the store (``candles``), and
``tradebotd data download`` (``download``)."""

from tradebotd.data.candles import CandleTable, read_csv, read_store
from tradebotd.data.errors import CandleDataError, DataError, DownloadError, DownloadRejected, DownloadUnavailable

__all__ = [
    "CandleDataError",
    "CandleTable",
    "DataError",
    "DownloadError",
    "DownloadRejected",
    "DownloadUnavailable",
    "read_csv",
    "read_store",
]
