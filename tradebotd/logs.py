"""Structured logging: JSON lines on stdout in production, a readable console on a TTY.

journald, Fly.io and Railway all collect stdout, so the daemon never writes log files itself.
Third-party libraries that use the standard ``logging`` module (websockets, aiohttp, asyncio)
are rendered by the same processors, so every line on stdout has the same shape.

Secrets never reach a log line: values registered with :func:`register_secret` are replaced
wherever they appear, and keys that look like credentials are masked whatever their value.
"""

from __future__ import annotations

import datetime
import functools
import logging
import sys
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TextIO

import orjson
import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

__all__ = ["configure_logging", "info_lines", "mask_secrets", "redact_secrets", "register_secret"]

_MASK = "**********"
_SECRET_KEY_PARTS = ("secret", "api_key", "apikey", "password", "token", "authorization")
_secrets: set[str] = set()


def register_secret(value: str | None) -> None:
    """Never print ``value``; call this for every credential as soon as it is read."""
    if value and len(value) >= 4:
        _secrets.add(value)


def _scrub(value: Any) -> Any:
    if isinstance(value, str):
        for secret in _secrets:
            if secret in value:
                value = value.replace(secret, _MASK)
        return value
    if isinstance(value, dict):
        return {k: _scrub(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_scrub(v) for v in value]
    return value


def mask_secrets(text: str) -> str:
    """``text`` with every registered secret masked: for what leaves the process other than as a
    log line (an error shown by ``/healthz``, a JSON answer)."""
    return str(_scrub(text)) if _secrets else text


@functools.lru_cache(maxsize=1024)
def _is_secret_key(key: str) -> bool:
    lowered = key.lower()
    return any(part in lowered for part in _SECRET_KEY_PARTS)


def redact_secrets(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    """structlog processor: mask credential-looking keys and any registered secret value.
    Runs on every log line (one per candle decision), so the key check is cached."""
    for key in list(event_dict):
        if _is_secret_key(key):
            event_dict[key] = _MASK
        elif _secrets:
            event_dict[key] = _scrub(event_dict[key])
    return event_dict


def _orjson_dumps(obj: Any, default: Any = None) -> bytes:
    return orjson.dumps(obj, default=default or str)


@dataclass(frozen=True, slots=True)
class _Bulk:
    """Where :func:`info_lines` writes JSON lines itself: the configuration it was made for
    (``processors``: structlog's list, to notice a reconfiguration such as a test's
    ``capture_logs``), whether info lines pass the level, and the output."""

    processors: tuple[Processor, ...]
    info: bool
    write: Callable[[bytes], object]
    flush: Callable[[], object]


_bulk: _Bulk | None = None


def info_lines(logger: Any, lines: Sequence[tuple[str, Mapping[str, Any]]]) -> None:
    """``logger.info(event, **fields)`` for each ``(event, fields)``, in order, with the same JSON
    lines as a result: the processors' work (level, timestamp, secrets) done once for all of
    them and the lines written in one go. The engine writes one line per strategy and candle
    (1,000 at a minute boundary), which structlog's per-line chain made a measurable share of
    the boundary. Falls back to ``logger.info`` per line for any other configuration (console,
    context variables bound, structlog reconfigured since :func:`configure_logging`)."""
    bulk = _bulk
    if (
        bulk is None
        or tuple(structlog.get_config()["processors"]) != bulk.processors
        or structlog.contextvars.get_contextvars()
    ):
        for event, fields in lines:
            logger.info(event, **fields)
        return
    if not bulk.info or not lines:
        return
    stamp = datetime.datetime.now(tz=datetime.UTC).isoformat().replace("+00:00", "Z")
    out: list[bytes] = []
    for event, fields in lines:
        line: dict[str, Any] = {}
        for key, value in fields.items():
            if _is_secret_key(key):
                line[key] = _MASK
            else:
                line[key] = _scrub(value) if _secrets else value
        line["event"] = _scrub(event) if _secrets else event
        line["level"] = "info"
        line["timestamp"] = stamp
        out.append(orjson.dumps(line, default=str))
    out.append(b"")
    bulk.write(b"\n".join(out))
    bulk.flush()


def configure_logging(
    level: str = "info",
    fmt: Literal["auto", "json", "console"] = "auto",
    stream: TextIO | None = None,
    *,
    cache: bool = True,
) -> None:
    """Configure structlog and the standard library's logging once, at start-up.

    ``cache`` binds each logger for good on first use (faster; what the daemon wants). Short-lived
    commands and tests pass ``cache=False`` so a later ``configure_logging`` still takes effect."""
    out = stream or sys.stdout
    use_console = fmt == "console" or (fmt == "auto" and out.isatty())
    numeric_level = logging.getLevelNamesMapping()[level.upper()]

    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        redact_secrets,
    ]
    renderer: Processor
    if use_console:
        renderer = structlog.dev.ConsoleRenderer(colors=out.isatty())
    else:
        shared.append(structlog.processors.dict_tracebacks)
        renderer = structlog.processors.JSONRenderer(serializer=_orjson_dumps)

    # Our own loggers take structlog's fast path (about 5 us a line with orjson: one line per
    # candle decision must not slow the hot path); library loggers go through the standard
    # library with the same processors. Both write whole lines and flush, so lines never mix.
    logger_factory: Any
    own_renderer: Processor = renderer
    if use_console:
        logger_factory = structlog.PrintLoggerFactory(out)
    elif hasattr(out, "buffer"):
        logger_factory = structlog.BytesLoggerFactory(out.buffer)
    else:  # a text-only stream (tests): same JSON, as str
        logger_factory = structlog.PrintLoggerFactory(out)
        own_renderer = _to_text(renderer)
    processors = [*shared, own_renderer]
    structlog.configure(
        processors=processors,
        logger_factory=logger_factory,
        wrapper_class=structlog.make_filtering_bound_logger(numeric_level),
        cache_logger_on_first_use=cache,
    )
    global _bulk
    _bulk = None
    if not use_console:
        info = numeric_level <= logging.INFO
        if hasattr(out, "buffer"):
            _bulk = _Bulk(tuple(processors), info, out.buffer.write, out.buffer.flush)
        else:
            _bulk = _Bulk(tuple(processors), info, lambda data: out.write(data.decode()), out.flush)
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, _to_text(renderer)],
    )
    handler = logging.StreamHandler(out)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(numeric_level)
    # Libraries narrate every frame at DEBUG; keep them at WARNING unless debugging the daemon.
    for noisy in ("websockets", "aiohttp", "asyncio", "ccxt", "urllib3"):
        logging.getLogger(noisy).setLevel(max(numeric_level, logging.WARNING))


def _to_text(renderer: Processor) -> Processor:
    """ProcessorFormatter needs ``str``; orjson renders ``bytes``."""

    def render(logger: WrappedLogger, name: str, event_dict: MutableMapping[str, Any]) -> str:
        out = renderer(logger, name, event_dict)
        return out.decode() if isinstance(out, bytes) else str(out)

    return render
