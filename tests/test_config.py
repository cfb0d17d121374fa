"""Configuration: file + env precedence, clear errors naming key and source, secrets env-only."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import pytest

from tradebotd.cli import main
from tradebotd.config import load_settings
from tradebotd.errors import ConfigError


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("TRADEBOTD_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "conf.toml"
    path.write_text(text)
    return path


def test_defaults_without_a_file() -> None:
    settings, used = load_settings(None)
    assert used is None
    assert settings.market.history == 500
    assert settings.paper.fee_rate == Decimal("0.001")
    assert settings.paper.cash == Decimal("10000")
    assert settings.daemon.poll_interval_s == 2.0


def test_file_then_env_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, '[market]\nhistory = 200\nws_url = "ws://127.0.0.1:9/"\n[paper]\nfee_rate = 0.002\n')
    monkeypatch.setenv("TRADEBOTD_MARKET__HISTORY", "300")
    settings, used = load_settings(path)
    assert used == path
    assert settings.market.history == 300  # env wins
    assert settings.market.ws_url == "ws://127.0.0.1:9"  # trailing slash stripped
    assert settings.paper.fee_rate == Decimal("0.002")


def test_config_path_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, "[market]\nhistory = 42\n")
    monkeypatch.setenv("TRADEBOTD_CONFIG", str(path))
    settings, used = load_settings(None)
    assert settings.market.history == 42 and used == path


def test_unknown_key_names_key_and_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[market]\nhistroy = 3\n")
    with pytest.raises(ConfigError) as err:
        load_settings(path)
    assert "market.histroy" in str(err.value)
    assert str(path) in str(err.value)


def test_unknown_section(tmp_path: Path) -> None:
    path = write(tmp_path, "[markets]\nhistory = 3\n")
    with pytest.raises(ConfigError, match="unknown key 'markets'"):
        load_settings(path)


def test_wrong_type_from_env_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRADEBOTD_SANDBOX__TIMEOUT_MS", "soon")
    with pytest.raises(ConfigError) as err:
        load_settings(None)
    assert "TRADEBOTD_SANDBOX__TIMEOUT_MS" in str(err.value)
    assert "sandbox.timeout_ms" in str(err.value)


def test_out_of_range_value(tmp_path: Path) -> None:
    path = write(tmp_path, "[paper]\nfee_rate = 1.5\n")
    with pytest.raises(ConfigError, match=r"paper\.fee_rate"):
        load_settings(path)


def test_invalid_toml_is_a_config_error(tmp_path: Path) -> None:
    path = write(tmp_path, "[market\nhistory = 3\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(path)


def test_named_file_must_exist(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "missing.toml")


def test_secret_in_file_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, '[exchange]\napi_key = "abc123"\n')
    with pytest.raises(ConfigError) as err:
        load_settings(path)
    assert "TRADEBOTD_EXCHANGE__API_KEY" in str(err.value)
    assert "abc123" not in str(err.value)


def test_check_config_masks_secrets(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("TRADEBOTD_EXCHANGE__API_SECRET", "very-secret-value")
    assert main(["check-config"]) == 0
    out = capsys.readouterr().out
    assert "very-secret-value" not in out
    data = json.loads(out.split("\n", 1)[1])
    assert data["exchange"]["api_secret"] == "**********"
    assert data["market"]["history"] == 500


def test_check_config_bad_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, "[sandbox]\nmemory = 3\n")
    assert main(["--config", str(path), "check-config"]) == 2
    err = capsys.readouterr().err
    assert "sandbox.memory" in err and str(path) in err


def test_example_config_is_valid_and_complete() -> None:
    example = Path(__file__).resolve().parents[1] / "config.example.toml"
    settings, _ = load_settings(example)
    text = example.read_text()
    # every key of every section is documented in the example
    for section, values in settings.model_dump().items():
        assert f"[{section}]" in text, section
        for key in values:
            assert f"{key} =" in text or f"# {key} =" in text, f"{section}.{key} missing from config.example.toml"


def test_exchange_defaults_and_validation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings, _ = load_settings(None)
    exchange = settings.exchange
    assert (exchange.id, exchange.mode, exchange.rest_url) == ("binance", "testnet", None)
    assert exchange.max_order_quote == Decimal("1000") and isinstance(exchange.max_order_quote, Decimal)
    assert (exchange.poll_s, exchange.reconcile_s) == (5.0, 60.0)
    text = '[exchange]\nmode = "live"\nrest_url = "http://127.0.0.1:9/exchange/"\nmax_order_quote = "250.5"\n'
    path = write(tmp_path, text)
    monkeypatch.setenv("TRADEBOTD_EXCHANGE__POLL_S", "2")
    settings, _ = load_settings(path)
    assert settings.exchange.mode == "live" and settings.exchange.rest_url == "http://127.0.0.1:9/exchange"
    assert settings.exchange.max_order_quote == Decimal("250.5") and settings.exchange.poll_s == 2.0
    for bad in ('mode = "paper"', 'rest_url = "ftp://x"', "max_order_quote = 0"):
        with pytest.raises(ConfigError) as err:
            load_settings(write(tmp_path, f"[exchange]\n{bad}\n"))
        assert "exchange." in str(err.value)



def test_example_config_shows_the_defaults() -> None:
    # config.example.toml documents the defaults: a default changed by accident (it happened to
    # market.start_window_s) must not leave the example, and the README, saying otherwise.
    example, _ = load_settings(Path(__file__).resolve().parents[1] / "config.example.toml")
    defaults, _ = load_settings(None)
    shown, actual = example.model_dump(), defaults.model_dump()
    assert {(s, k): v for s, keys in shown.items() for k, v in keys.items() if v != actual[s][k]} == {}
