"""Configuration: a TOML file overridden by ``TRADEBOTD_<SECTION>__<KEY>`` environment variables.

The file is ``--config PATH``, else ``$TRADEBOTD_CONFIG``, else ``./tradebotd.toml``; a missing
default file just means "all defaults". Every section forbids unknown keys, so a typo is an
error that names the key and where it came from (the file or the env var), and the daemon does
not start. Secrets (``SecretStr`` fields) are accepted only from the environment and are masked
whenever the configuration is printed.

Errors: ``tradebotd.errors.ConfigError`` only.
"""

from __future__ import annotations

import hashlib
import os
import socket
import tomllib
from collections.abc import Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from .errors import ConfigError

__all__ = ["DEFAULT_CONFIG_FILE", "ENV_PREFIX", "Settings", "load_settings", "resolve_config_path"]

ENV_PREFIX = "TRADEBOTD_"
DEFAULT_CONFIG_FILE = Path("tradebotd.toml")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MarketSettings(_Section):
    ws_url: str = "wss://stream.binance.com:9443"
    rest_url: str = "https://api.binance.com"
    history: int = Field(500, ge=1, le=5000, description="closed candles fetched to warm up each stream")
    max_candle_lag_s: float = Field(
        30.0, ge=0, description="refuse to trade on a candle that closed longer ago than this; 0 disables"
    )
    start_window_s: float = Field(
        10.0,
        ge=0,
        description="a strategy that starts evaluates its stream's last closed candle at once if it closed at most "
        "this long ago (else it waits for the next candle); 0: always wait",
    )
    rotate_after_s: float = Field(23.5 * 3600, gt=0, description="reconnect before Binance's 24 h cut-off")
    reconnect_min_s: float = Field(1.0, gt=0)
    reconnect_max_s: float = Field(60.0, gt=0)
    streams_per_connection: int = Field(
        200, ge=1, le=1024, description="streams per WebSocket connection; more streams open more connections"
    )
    rest_weight_per_minute: int = Field(
        3000, ge=2, le=6000, description="Binance request weight the feed's REST calls may spend per minute"
    )
    connects_per_5min: int = Field(150, ge=1, le=300, description="new WebSocket connections per 5 minutes at most")

    @field_validator("ws_url", "rest_url")
    @classmethod
    def _strip_slash(cls, v: str) -> str:
        if not v.startswith(("ws://", "wss://", "http://", "https://")):
            raise ValueError("must be an http(s):// or ws(s):// URL")
        return v.rstrip("/")


class PaperSettings(_Section):
    cash: Decimal = Field(Decimal("10000"), gt=0, description="starting cash of the default paper portfolio")
    currency: str = "USDT"
    fee_rate: Decimal = Field(Decimal("0.001"), ge=0, lt=1)
    slippage_bps: Decimal = Field(Decimal("0"), ge=0, lt=10_000)
    default_amount: Decimal = Field(Decimal("0.001"), gt=0, description="buy amount when a result has none")


def default_eval_processes() -> int:
    """``sandbox.eval_processes`` unless set: one per CPU this process may run on beyond the first
    (which the daemon uses), at most 4; none on a 1-CPU machine, where a child would only cost
    memory."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(0, min(cpus - 1, 4))


class SandboxSettings(_Section):
    timeout_ms: int = Field(50, ge=1, le=60_000)
    memory_mb: int = Field(32, ge=4, le=1024)
    max_result_kb: int = Field(64, ge=1, le=16_384)
    max_candles: int = Field(500, ge=1, le=100_000, description="candles in each strategy's context")
    max_consecutive_errors: int = Field(3, ge=1)
    eval_threads: int = Field(
        2, ge=1, le=64, description="worker threads evaluating a candle's strategies in parallel; 1 = none"
    )
    eval_processes: int = Field(
        default_factory=default_eval_processes,
        ge=0,
        le=64,
        description="child processes holding a share of the strategies; 0 = none (then eval_threads); "
        "default: one per CPU beyond the first, at most 4",
    )
    daemon_weight: float = Field(
        6.0,
        ge=1.0,
        le=1000.0,
        description="with eval_processes: how much a strategy evaluated in the daemon counts against one in an "
        "evaluation process when placing them (the daemon also parses the feed, settles, records and logs every "
        "decision, so it takes fewer: 6 = a sixth as many as each process)",
    )


class StoreSettings(_Section):
    path: Path = Path("tradebotd.db")
    user_id: str = Field("00000000-0000-0000-0000-000000000000", description="owner of rows created locally")
    log_holds: bool = Field(False, description="also write a strategy_logs row for every 'hold' decision")
    backend: Literal["sqlite", "supabase"] = Field(
        "sqlite", description="supabase: also replicate to (and mirror strategies from) a Supabase project"
    )
    supabase_url: str | None = Field(
        None, description="project URL; else env SUPABASE_URL or NEXT_PUBLIC_SUPABASE_URL (the web app's)"
    )
    supabase_key: SecretStr | None = Field(
        None, description="service-role key, env only: TRADEBOTD_STORE__SUPABASE_KEY or SUPABASE_SERVICE_ROLE_KEY"
    )
    sync_market_data: bool = Field(True, description="replicate closed candles to market_data")
    outbox_warn_rows: int = Field(100_000, ge=1, description="warn (and flag the metric) when the outbox holds more")
    mirror_poll_s: float = Field(2.0, gt=0, description="how often Supabase strategies are polled for changes")

    @field_validator("supabase_url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("http://", "https://")):
            raise ValueError("must be an http(s):// URL")
        return None if v is None else v.rstrip("/")

    def resolved_supabase_url(self) -> str | None:
        """``supabase_url``, else the environment the web app already uses."""
        return self.supabase_url or os.environ.get("SUPABASE_URL") or os.environ.get("NEXT_PUBLIC_SUPABASE_URL") or None

    def resolved_supabase_key(self) -> SecretStr | None:
        if self.supabase_key is not None:
            return self.supabase_key
        key = os.environ.get("SUPABASE_SERVICE_ROLE_KEY")
        return SecretStr(key) if key else None


class WorkerSettings(_Section):
    """How several instances share one Supabase project (store.backend = "supabase")."""

    id: str | None = Field(None, description="this instance's lease owner id; default <hostname>:<hash of store.path>")
    symbols: list[str] | None = Field(None, description="evaluate only strategies on these symbols (e.g. BTCUSDT)")
    lease_s: float = Field(
        120.0, ge=1, le=3600, description="lease time: a crashed instance's strategies move on after this"
    )

    @field_validator("symbols")
    @classmethod
    def _symbols(cls, v: list[str] | None) -> list[str] | None:
        return None if v is None else [s.strip().upper() for s in v if s.strip()]

    def resolved_id(self, store_path: Path) -> str:
        if self.id:
            return self.id
        digest = hashlib.sha256(str(store_path.resolve()).encode()).hexdigest()[:8]
        return f"{socket.gethostname()}:{digest}"


class DaemonSettings(_Section):
    poll_interval_s: float = Field(2.0, gt=0, description="how often the strategies table is re-read")
    shutdown_timeout_s: float = Field(10.0, gt=0, description="bounded wait for in-flight work at shutdown")
    max_task_restarts: int = Field(
        5, ge=0, description="restarts of one background task allowed within restart_window_s; then exit non-zero"
    )
    restart_window_s: float = Field(300.0, gt=0, description="the window max_task_restarts counts crashes in")
    progress_timeout_s: float = Field(
        120.0,
        gt=0,
        description="a pipeline part (feed, evaluation, writer) with work but no progress for this long stops "
        "the systemd watchdog pings and turns /healthz red",
    )


class HttpSettings(_Section):
    listen: str = Field(
        "127.0.0.1:8787", description="host:port of /healthz, /metrics and the trigger ([v6]:port for IPv6)"
    )
    health_grace_s: float = Field(
        60.0, ge=0, description="a stream is stale when its last closed candle is older than one interval plus this"
    )
    outbox_threshold: int = Field(10_000, ge=1, description="/healthz turns red at this many unshipped outbox rows")

    @field_validator("listen")
    @classmethod
    def _host_port(cls, v: str) -> str:
        split_listen(v)
        return v

    @property
    def address(self) -> tuple[str, int]:
        return split_listen(self.listen)


def split_listen(value: str) -> tuple[str, int]:
    """``"host:port"`` or ``"[v6]:port"`` as (host, port); ``ValueError`` says what is wrong."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError("must be host:port, e.g. 127.0.0.1:8787 or [::1]:8787")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError("an IPv6 address needs brackets: [::1]:8787")
    return host, int(port)


class LogSettings(_Section):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "console"] = "auto"


class ExchangeSettings(_Section):
    """The exchange a ``live`` portfolio trades on. Credentials come from the environment only."""

    id: str = Field("binance", description="ccxt exchange id")
    mode: Literal["testnet", "live"] = Field("testnet", description="testnet: the exchange's sandbox; live: real money")
    rest_url: str | None = Field(None, description="replaces the exchange's REST base URL in both modes")
    max_order_quote: Decimal = Field(
        Decimal("1000"), gt=0, description="largest order notional in the quote currency; larger ones are refused"
    )
    poll_s: float = Field(5.0, gt=0, description="how often open orders and order lists are polled")
    reconcile_s: float = Field(60.0, gt=0, description="how often orders, fills and balances are reconciled")
    max_in_flight: int = Field(
        50,
        ge=1,
        le=100,
        description="exchange calls in flight at a time: a candle's orders go out concurrently, up to this many "
        "(Binance takes 50 new orders per 10 s per account, the request budget paces the rest; at most 100: "
        "ccxt's HTTP connection pool)",
    )
    api_key: SecretStr | None = None
    api_secret: SecretStr | None = None

    @field_validator("rest_url")
    @classmethod
    def _http_url(cls, v: str | None) -> str | None:
        if v is None:
            return None
        if not v.startswith(("http://", "https://")):
            raise ValueError("must be an http(s):// URL")
        return v.rstrip("/")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="forbid", frozen=True)

    market: MarketSettings = MarketSettings()
    paper: PaperSettings = PaperSettings()
    sandbox: SandboxSettings = SandboxSettings()
    store: StoreSettings = StoreSettings()
    daemon: DaemonSettings = DaemonSettings()
    http: HttpSettings = HttpSettings()
    log: LogSettings = LogSettings()
    exchange: ExchangeSettings = ExchangeSettings()
    worker: WorkerSettings = WorkerSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # init_settings carries the parsed TOML file (see load_settings); env overrides it.
        return (env_settings, init_settings)

    def masked(self) -> dict[str, Any]:
        """The effective configuration as plain data, secrets shown as ``'**********'``."""
        data: dict[str, Any] = self.model_dump(mode="json")
        for section, fields in data.items():
            for key in fields:
                value = getattr(getattr(self, section), key)
                if isinstance(value, SecretStr):
                    fields[key] = "**********"
        return data


def resolve_config_path(explicit: str | os.PathLike[str] | None) -> tuple[Path, bool]:
    """The config file to read and whether its absence is an error (it is, when named)."""
    if explicit is not None:
        return Path(explicit), True
    env = os.environ.get(f"{ENV_PREFIX}CONFIG")
    if env:
        return Path(env), True
    return DEFAULT_CONFIG_FILE, False


def _secret_paths() -> set[tuple[str, str]]:
    paths = set()
    for section, info in Settings.model_fields.items():
        model = info.annotation
        if isinstance(model, type) and issubclass(model, BaseModel):
            for key, field in model.model_fields.items():
                if _is_secret(field):
                    paths.add((section, key))
    return paths


def _is_secret(field: FieldInfo) -> bool:
    return "SecretStr" in repr(field.annotation)


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc.strerror}") from None


def _where(loc: tuple[int | str, ...], file_data: Mapping[str, Any], path: Path | None) -> str:
    """Say whether an invalid key came from the file or from an environment variable."""
    node: Any = file_data
    for part in loc:
        if isinstance(node, Mapping) and part in node:
            node = node[part]
        else:
            env = ENV_PREFIX + "__".join(str(p).upper() for p in loc)
            return f"environment variable {env}" if env in os.environ else f"{path or 'defaults'}"
    return str(path) if path else "defaults"


def load_settings(config: str | os.PathLike[str] | None = None) -> tuple[Settings, Path | None]:
    """Load and validate the configuration; returns it and the file it came from (if any)."""
    path, required = resolve_config_path(config)
    file_data: dict[str, Any] = {}
    used: Path | None = None
    if path.exists():
        file_data = _read_toml(path)
        used = path
    elif required:
        raise ConfigError(f"{path}: config file not found")

    for section, key in _secret_paths():
        if key in (file_data.get(section) or {}):
            env = f"{ENV_PREFIX}{section.upper()}__{key.upper()}"
            raise ConfigError(
                f"{path}: [{section}] {key} is a secret and must come from the environment ({env}), never from a file"
            )
    try:
        settings = Settings(**file_data)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            loc = tuple(err["loc"])
            key = ".".join(str(p) for p in loc)
            where = _where(loc, file_data, used)
            if err["type"] == "extra_forbidden":
                lines.append(f"{where}: unknown key {key!r}")
            else:
                value = "***" if any(loc[-1] == k for _, k in _secret_paths()) else repr(err.get("input"))
                lines.append(f"{where}: {key}: {err['msg']} (got {value})")
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(lines)) from None
    return settings, used
