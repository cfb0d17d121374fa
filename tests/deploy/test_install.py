"""deploy/install.sh without root effects: --dry-run changes nothing and names every step;
DESTDIR lays the files out (secrets file 0600, config pointing at the state directory), and a
second run keeps what the operator has edited."""

from __future__ import annotations

import os
import stat
import subprocess
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "deploy" / "install.sh"


def run(*args: str, destdir: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "DESTDIR"}
    if destdir is not None:
        env["DESTDIR"] = str(destdir)
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, env=env, cwd=ROOT)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_dry_run_names_every_step_and_changes_nothing() -> None:
    places = ("/etc/tradebotd", "/opt/tradebotd", "/var/lib/tradebotd", "/etc/systemd/system/tradebotd.service")
    before = {p: os.path.exists(p) for p in places}
    result = run("--dry-run")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "+ useradd --system" in out or "user tradebotd exists" in out
    for step in (
        "+ install -d -m 0755 /opt/tradebotd /etc/tradebotd /etc/systemd/system",
        "+ install -d -m 0750 /var/lib/tradebotd",
        "+ install -d -m 0700 /var/lib/tradebotd/cache",
        "+ chown tradebotd:tradebotd /var/lib/tradebotd /var/lib/tradebotd/cache",
        f"+ /opt/tradebotd/venv/bin/python -m pip install --quiet --upgrade {ROOT}",
        "+ install -m 0644 " + str(ROOT / "systemd/tradebotd.service") + " /etc/systemd/system/tradebotd.service",
        "/opt/tradebotd/venv/bin/tradebotd db init",
    ):
        assert step in out, step
    for path, mode_text in (("/etc/tradebotd/config.toml", "0644"), ("/etc/tradebotd/tradebotd.env", "0600")):
        assert f"+ write {path} (mode {mode_text})" in out or f"keeping {path}" in out
    assert {p: os.path.exists(p) for p in places} == before


def test_destdir_lays_out_config_secrets_state_and_the_unit(tmp_path: Path) -> None:
    stage = tmp_path / "stage"
    result = run("--no-venv", destdir=stage)
    assert result.returncode == 0, result.stderr
    env_file = stage / "etc/tradebotd/tradebotd.env"
    assert mode(env_file) == 0o600
    assert "CRON_SECRET" in env_file.read_text()
    config = tomllib.loads((stage / "etc/tradebotd/config.toml").read_text())
    assert config["store"]["path"] == "/var/lib/tradebotd/tradebotd.db"
    assert mode(stage / "var/lib/tradebotd") == 0o750
    assert mode(stage / "var/lib/tradebotd/cache") == 0o700
    unit = stage / "etc/systemd/system/tradebotd.service"
    assert unit.read_text() == (ROOT / "systemd/tradebotd.service").read_text()
    assert (stage / "opt/tradebotd/examples/sma_crossover.js").is_file()


def test_a_second_run_keeps_the_operators_files_and_fixes_the_secrets_mode(tmp_path: Path) -> None:
    stage = tmp_path / "stage"
    assert run("--no-venv", destdir=stage).returncode == 0
    config = stage / "etc/tradebotd/config.toml"
    env_file = stage / "etc/tradebotd/tradebotd.env"
    config.write_text("[market]\nhistory = 1000\n")
    env_file.write_text("CRON_SECRET=operator-chosen-secret-value\n")
    env_file.chmod(0o644)
    again = run("--no-venv", destdir=stage)
    assert again.returncode == 0, again.stderr
    assert f"keeping {config}" in again.stdout and f"keeping {env_file}" in again.stdout
    assert config.read_text() == "[market]\nhistory = 1000\n"
    assert env_file.read_text() == "CRON_SECRET=operator-chosen-secret-value\n"
    assert mode(env_file) == 0o600


def test_unknown_options_are_refused() -> None:
    result = run("--frobnicate")
    assert result.returncode == 2
    assert "unknown option --frobnicate" in result.stderr


def test_make_install_service_runs_the_script() -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}  # under make test
    result = subprocess.run(
        ["make", "--no-print-directory", "-n", "install-service", "INSTALL_FLAGS=--dry-run"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines() == ["deploy/install.sh --dry-run"]
