"""deploy/Dockerfile, deploy/fly.toml and deploy/railway.json carry what issue 10 asks for, and
agree with each other and with the daemon's configuration; `docker build` where a Docker daemon
answers (skipped with the reason otherwise)."""

from __future__ import annotations

import json
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

from tradebotd.config import HttpSettings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"


def dockerfile() -> list[tuple[str, str]]:
    """(instruction, arguments) with continuation lines joined and comments dropped."""
    text = (DEPLOY / "Dockerfile").read_text()
    joined = text.replace("\\\n", " ")
    out = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            instruction, _, rest = line.partition(" ")
            out.append((instruction.upper(), " ".join(rest.split())))
    return out


def final_stage() -> list[tuple[str, str]]:
    steps = dockerfile()
    last_from = max(i for i, (ins, _) in enumerate(steps) if ins == "FROM")
    return steps[last_from:]


def test_the_image_is_slim_non_root_with_state_on_a_volume() -> None:
    final = final_stage()
    assert "slim" in final[0][1]
    users = [args for ins, args in final if ins == "USER"]
    assert users == ["tradebotd"]
    assert ("VOLUME", '["/data"]') in final
    env = " ".join(args for ins, args in final if ins == "ENV")
    assert "TRADEBOTD_STORE__PATH=/data/tradebotd.db" in env
    assert "TRADEBOTD_CACHE_DIR=/opt/tradebotd/cache" in env
    assert ("STOPSIGNAL", "SIGTERM") in final
    assert any(ins == "HEALTHCHECK" and "/healthz" in args for ins, args in final)
    cmd = next(args for ins, args in final if ins == "CMD")
    assert "exec tradebotd run" in cmd  # the daemon is PID 1 and gets SIGTERM itself


def test_the_sandbox_is_compiled_and_cached_at_build_time() -> None:
    steps = dockerfile()
    runs = " ".join(args for ins, args in steps if ins == "RUN")
    assert "pip install --no-cache-dir ." in runs  # builds tb_qjs.wasm through the package's build hook
    assert "WasmRuntime()" in runs and "TRADEBOTD_CACHE_DIR=/opt/tradebotd/cache" in runs
    copies = [args for ins, args in final_stage() if ins == "COPY"]
    assert any(a.startswith("--from=build --chown=tradebotd") and "/opt/tradebotd/cache" in a for a in copies)
    assert any(a == "--from=build /opt/tradebotd/venv /opt/tradebotd/venv" for a in copies)  # code stays root's


def test_the_build_stage_copies_everything_the_wheel_build_reads() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    wheel = pyproject["tool"]["hatch"]["build"]["targets"]["wheel"]
    needed = {"pyproject.toml", "hatch_build.py", pyproject["project"]["readme"], *wheel["packages"]}
    needed |= set(wheel.get("force-include", {}))
    copied = set()
    for ins, args in dockerfile():
        if ins == "COPY" and not args.startswith("--from"):
            *sources, _dest = args.split()
            copied |= set(sources)
    assert needed <= copied, needed - copied


def test_fly_toml_one_always_on_machine_checked_on_healthz() -> None:
    fly = tomllib.loads((DEPLOY / "fly.toml").read_text())
    assert fly["kill_signal"] == "SIGTERM"
    assert fly["kill_timeout"] > 2 * 10  # beyond the daemon's bounded shutdown
    assert fly["build"]["dockerfile"] == "Dockerfile"
    service = fly["http_service"]
    assert service["auto_stop_machines"] == "off" and service["auto_start_machines"] is False
    assert service["min_machines_running"] == 1
    (check,) = service["checks"]
    assert check["path"] == "/healthz" and check["method"] == "GET"
    (mount,) = fly["mounts"]
    assert mount["destination"] == "/data"
    assert fly["env"]["TRADEBOTD_STORE__PATH"].startswith(mount["destination"] + "/")
    listen = HttpSettings(listen=fly["env"]["TRADEBOTD_HTTP__LISTEN"])  # a valid http.listen ...
    assert listen.address == ("0.0.0.0", service["internal_port"])  # ... on the port Fly routes to
    for secret in ("CRON_SECRET", "TRADEBOTD_EXCHANGE__API_KEY", "TRADEBOTD_EXCHANGE__API_SECRET"):
        assert secret not in fly["env"]  # secrets via `fly secrets set`, never in the file
    assert "fly secrets set CRON_SECRET" in (DEPLOY / "fly.toml").read_text()


def test_railway_json_health_check_and_restart_policy() -> None:
    railway = json.loads((DEPLOY / "railway.json").read_text())
    assert railway["build"]["builder"] == "DOCKERFILE"
    assert (ROOT / railway["build"]["dockerfilePath"]).is_file()
    deploy = railway["deploy"]
    assert deploy["healthcheckPath"] == "/healthz"
    assert deploy["restartPolicyType"] == "ON_FAILURE"
    assert deploy["restartPolicyMaxRetries"] >= 1
    assert deploy["numReplicas"] == 1 and deploy["overlapSeconds"] == 0  # never two daemons at once
    assert deploy["drainingSeconds"] > 2 * 10


def test_the_build_context_leaves_local_state_out() -> None:
    ignored = (ROOT / ".dockerignore").read_text().split()
    for pattern in (".git", ".venv", "*.db"):
        assert pattern in ignored


def test_docker_build() -> None:
    docker = shutil.which("docker")
    if docker is None:
        print("docker not installed: skipping the image build")
        pytest.skip("docker is not installed")
    info = subprocess.run([docker, "info", "--format", "{{.ServerVersion}}"], capture_output=True, text=True)
    if info.returncode != 0:
        reason = (info.stderr.strip().splitlines() or ["no answer"])[-1]
        print(f"no Docker daemon ({reason}): skipping the image build")
        pytest.skip(f"no Docker daemon: {reason}")
    result = subprocess.run(
        [docker, "build", "-f", str(DEPLOY / "Dockerfile"), "-t", "tradebotd:test", str(ROOT)],
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    user = subprocess.run(
        [docker, "run", "--rm", "--entrypoint", "id", "tradebotd:test", "-u"], capture_output=True, text=True
    )
    assert user.stdout.strip() == "10001"
