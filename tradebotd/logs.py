"""Structured logging: JSON lines on stdout in production, a readable console on a TTY.

journald, Fly.io and Railway all collect stdout, so the daemon never writes log files itself.
Third-party libraries that use the standard ``logging`` module (websockets, aiohttp, asyncio)
are rendered by the same processors, so every line on stdout has the same shape.

Secrets never reach a log line: values registered with :func:`register_secret` are replaced
wherever they appear, and keys that look like credentials are masked whatever their value.
"""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import MutableMapping
from typing import Any, Literal, TextIO

import orjson
import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

__all__ = ["configure_logging", "mask_secrets", "redact_secrets", "register_secret"]

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
    structlog.configure(
        processors=[*shared, own_renderer],
        logger_factory=logger_factory,
        wrapper_class=structlog.make_filtering_bound_logger(numeric_level),
        cache_logger_on_first_use=cache,
    )
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
