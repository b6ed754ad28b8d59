"""The compose stack (``deploy/compose/``), checked without a Docker engine:

- ``compose.yaml`` against the compose specification's JSON schema (the copy that
  check-jsonschema vendors: ``--builtin-schema vendor.compose-spec``, from
  github.com/compose-spec/compose-spec via SchemaStore; strict, so an unknown key fails);
- every file it mounts or builds from exists; the agent is built from the top-level
  ``Dockerfile``; published ports bind 127.0.0.1, do not collide, and reach the port the
  service listens on; no password is written anywhere (each comes from ``.env``, whose
  example defines them all, and ``.env`` itself is ignored by git);
- each tool's own checker on the files as the containers see them (the bind mounts are
  laid out under a temporary root at their container paths, so relative paths resolve
  as in the container): ``promtool check config`` (with the rules), ``amtool
  check-config``, ``hiw-monitor validate-config``, Grafana's provisioning paths;
- for real: the PostgreSQL init script sets the agent's password on a real server; the
  PgBouncer image (``deploy/compose/pgbouncer/``) is hadolint-clean, built with podman
  and, with the agent's image, gives ``hiw_up 1`` for a ``type: pgbouncer`` target
  (the images come from ``test_image.py``'s builder and cache).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers import http_get, sample, wait_for
from tools import require

from hiw_monitor.demo.cluster import free_port

REPO = Path(__file__).resolve().parents[2]
COMPOSE_DIR = REPO / "deploy" / "compose"
COMPOSE = COMPOSE_DIR / "compose.yaml"
PG_VERSIONS = ("pg15",)
VAR = re.compile(r"\$\{(\w+)(?::?[-?+][^}]*)?\}")
SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN", re.IGNORECASE)


def _compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def _services() -> dict[str, dict[str, Any]]:
    return _compose()["services"]


def _venv_tool(name: str) -> str:
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else require(name)


def _bind_mounts(service: dict[str, Any]) -> list[tuple[Path, str]]:
    """(host path, container path) of a service's bind mounts (short or long syntax)."""
    mounts = []
    for volume in service.get("volumes", []):
        if isinstance(volume, dict):
            if volume.get("type") != "bind":
                continue
            source, target = volume["source"], volume["target"]
        else:
            source, _, rest = volume.partition(":")
            target = rest.split(":")[0]
            if not source.startswith((".", "/")):
                continue  # a named volume
        mounts.append(((COMPOSE_DIR / source).resolve(), target))
    return mounts


def _container_view(service: str, root: Path) -> Path:
    """The service's bind mounts copied under ``root`` at their container paths."""
    for source, target in _bind_mounts(_services()[service]):
        dest = root / target.lstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, dest, dirs_exist_ok=True)
        else:
            shutil.copy(source, dest)
    return root


def test_compose_file_matches_the_compose_specification(tmp_path):
    check = [_venv_tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec"]
    result = subprocess.run([*check, str(COMPOSE)], capture_output=True, text=True,
                            timeout=120, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    # the schema is strict: a misspelt key is caught, so the pass above means something
    broken = _compose()
    broken["services"]["hiw-monitor"]["enviroment"] = {"X": "1"}
    bad = tmp_path / "compose.yaml"
    bad.write_text(yaml.safe_dump(broken))
    result = subprocess.run([*check, str(bad)], capture_output=True, text=True, timeout=120,
                            check=False)
    assert result.returncode != 0, result.stdout


def test_the_stack_has_every_piece():
    services = _services()
    assert set(services) >= {"postgres", "pgbouncer", "hiw-monitor", "prometheus",
                             "alertmanager", "grafana", "workload"}
    for name, service in services.items():
        assert "image" in service or "build" in service, name
        if "build" not in service:  # pinned, so that an upstream release never breaks it
            assert not service["image"].endswith(":latest"), name
            assert ":" in service["image"].rpartition("/")[2], name


def test_every_referenced_file_exists():
    for name, service in _services().items():
        for source, target in _bind_mounts(service):
            assert source.exists(), f"{name}: {source} (mounted at {target}) is missing"
            assert source.is_relative_to(REPO), f"{name}: {source} is outside the repository"
        build = service.get("build")
        if build:
            context = (COMPOSE_DIR / (build if isinstance(build, str) else build["context"]))
            dockerfile = "Dockerfile" if isinstance(build, str) else build.get(
                "dockerfile", "Dockerfile")
            assert (context / dockerfile).is_file(), f"{name}: no {context / dockerfile}"
        for env_file in service.get("env_file", []):
            path = env_file if isinstance(env_file, str) else env_file["path"]
            assert (COMPOSE_DIR / path).is_file(), f"{name}: env_file {path} is missing"
    # the files a bind mount brings must be readable by the container's user
    for path in (COMPOSE_DIR / "postgres" / "20-hiw-monitor-password.sh",
                 COMPOSE_DIR / "pgbouncer" / "entrypoint.sh"):
        assert os.access(path, os.X_OK), f"{path} is not executable"
    assert (COMPOSE_DIR / "README.md").is_file()


def test_the_agent_is_built_from_the_top_level_dockerfile():
    agent = _services()["hiw-monitor"]
    for name in ("hiw-monitor", "workload"):  # the workload runs from the agent's image
        service = _services()[name]
        build = service["build"]
        assert (COMPOSE_DIR / build["context"]).resolve() == REPO, name
        assert build.get("dockerfile", "Dockerfile") == "Dockerfile", name
        assert service["image"] == agent["image"], name
    assert "command" not in agent  # the image's `run`; nothing secret on a command line
    assert "entrypoint" not in agent
    assert agent["environment"]["HIW_MONITOR_CONFIG"] in [t for _, t in _bind_mounts(agent)]


def _published(service: dict[str, Any]) -> list[tuple[str, int, int]]:
    """(host address, host port, container port) of each published port."""
    out = []
    for port in service.get("ports", []):
        if isinstance(port, dict):
            out.append((port.get("host_ip", ""), int(port["published"]), int(port["target"])))
            continue
        parts = str(port).split("/")[0].split(":")
        assert len(parts) == 3, f"{port}: give the host address (127.0.0.1:HOST:CONTAINER)"
        out.append((parts[0], int(parts[1]), int(parts[2])))
    return out


def test_ports_are_published_on_loopback_only_and_do_not_collide():
    services = _services()
    seen: dict[int, str] = {}
    for name, service in services.items():
        for address, host_port, _ in _published(service):
            assert address == "127.0.0.1", f"{name}: {host_port} is published on {address!r}"
            assert host_port not in seen, f"{name} and {seen[host_port]} publish {host_port}"
            seen[host_port] = name
    # the UIs are published; the databases stay on the compose network
    listens = {"hiw-monitor": 9188, "prometheus": 9090, "alertmanager": 9093, "grafana": 3000}
    for name, port in listens.items():
        assert [(h, c) for _, h, c in _published(services[name])] == [(port, port)], name
    for name in ("postgres", "pgbouncer"):
        assert not services[name].get("ports"), f"{name} must not be published"


def test_no_password_is_written_down():
    """Every secret-looking setting is a ${VAR} that .env fills; .env.example names them
    all; .env is ignored by git."""
    example = dict(line.split("=", 1) for line in
                   (COMPOSE_DIR / ".env.example").read_text().splitlines()
                   if line.strip() and not line.startswith("#"))
    wanted = set()
    for name, service in _services().items():
        environment = service.get("environment", {})
        assert isinstance(environment, dict), f"{name}: write environment as a mapping"
        for key, value in environment.items():
            if SECRET_NAME.search(key):
                match = VAR.fullmatch(str(value))
                assert match, f"{name}: {key} must come from .env, not be written here"
                wanted.add(match.group(1))
        command = " ".join(map(str, service.get("command", [])))
        assert not SECRET_NAME.search(command), f"{name}: a secret on the command line"
    assert wanted <= set(example), f"missing from .env.example: {wanted - set(example)}"
    ignored = subprocess.run(["git", "-C", str(REPO), "check-ignore", "-q",
                              str(COMPOSE_DIR / ".env")], check=False, timeout=30)
    assert ignored.returncode == 0, "deploy/compose/.env must be ignored by git"
    agent = yaml.safe_load((COMPOSE_DIR / "hiw_monitor.yaml").read_text())
    for target in agent["targets"]:
        assert target.get("password_env") in _services()["hiw-monitor"]["environment"]
        assert "password" not in target


def test_prometheus_config_passes_promtool(tmp_path):
    promtool = require("promtool")
    root = _container_view("prometheus", tmp_path)
    config_path = _services()["prometheus"]["command"][0].removeprefix("--config.file=")
    config = root / config_path.lstrip("/")
    result = subprocess.run([promtool, "check", "config", str(config)], capture_output=True,
                            text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 1 rule files found" in result.stdout + result.stderr
    document = yaml.safe_load(config.read_text())
    jobs = {job["job_name"]: job for job in document["scrape_configs"]}
    # the bundled rules expect the job "hiw-monitor" (HiwAgentDown, HiwAgentAbsent)
    assert jobs["hiw-monitor"]["static_configs"][0]["targets"] == ["hiw-monitor:9188"]
    (manager,) = document["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"]
    assert manager == "alertmanager:9093"
    # Grafana's data source assumes this scrape interval ($__rate_interval)
    datasources = yaml.safe_load((REPO / "dashboards/provisioning/datasources.yml").read_text())
    assert datasources["datasources"][0]["jsonData"]["timeInterval"] == \
        document["global"]["scrape_interval"]


def test_alertmanager_config_passes_amtool(tmp_path):
    amtool = require("amtool")
    root = _container_view("alertmanager", tmp_path)
    flag = next(a for a in _services()["alertmanager"]["command"]
                if a.startswith("--config.file="))
    config = root / flag.removeprefix("--config.file=").lstrip("/")
    result = subprocess.run([amtool, "check-config", str(config)], capture_output=True,
                            text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_agent_config_is_valid_and_names_the_stack(tmp_path):
    root = _container_view("hiw-monitor", tmp_path)
    config = root / _services()["hiw-monitor"]["environment"]["HIW_MONITOR_CONFIG"].lstrip("/")
    hiw = Path(sys.executable).parent / "hiw-monitor"
    result = subprocess.run([str(hiw), "validate-config", str(config)], capture_output=True,
                            text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    targets = {t["name"]: t for t in yaml.safe_load(config.read_text())["targets"]}
    assert (targets["hiw-primary"]["host"], targets["hiw-primary"]["port"]) == ("postgres", 5432)
    assert targets["pgbouncer"]["type"] == "pgbouncer"
    ini = (COMPOSE_DIR / "pgbouncer" / "pgbouncer.ini").read_text()
    assert re.search(rf"(?m)^listen_port = {targets['pgbouncer']['port']}$", ini)
    assert re.search(r"(?m)^stats_users = .*\bhiw_monitor\b", ini)


def test_grafana_provisioning_points_at_the_mounts(tmp_path):
    root = _container_view("grafana", tmp_path)
    providers = yaml.safe_load(
        (root / "etc/grafana/provisioning/dashboards/hiw-monitor.yml").read_text())
    path = providers["providers"][0]["options"]["path"]
    dashboards = sorted(p.name for p in (root / path.lstrip("/")).glob("*.json"))
    assert dashboards == sorted(p.name for p in (REPO / "dashboards").glob("*.json"))
    assert dashboards
    home = _services()["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert (root / home.lstrip("/")).is_file()
    sources = yaml.safe_load(
        (root / "etc/grafana/provisioning/datasources/hiw-monitor.yml").read_text())
    assert sources["datasources"][0]["url"] == "http://prometheus:9090"


def test_postgres_init_scripts_are_mounted_in_order():
    mounts = [t for _, t in _bind_mounts(_services()["postgres"])
              if t.startswith("/docker-entrypoint-initdb.d/")]
    assert [Path(t).name for t in mounts] == ["10-hiw-schema.sql",
                                              "20-hiw-monitor-password.sh"]
    assert _services()["postgres"]["environment"]["POSTGRES_DB"] == "heroes_in_waiting"
    command = " ".join(_services()["postgres"]["command"])
    assert "shared_preload_libraries=pg_stat_statements" in command


@pytest.mark.integration
def test_postgres_password_script_sets_the_monitor_password(pg15_own):
    """The init script, run as the postgres image runs it (psql as the superuser, on
    the new database), gives hiw_monitor the password from HIW_MONITOR_PASSWORD, and
    the agent's role logs in with it."""
    import psycopg
    from conftest import HIW_DB

    password = f"compose-{uuid.uuid4().hex[:8]}-'quote\"s"
    cluster = pg15_own.cluster
    env = {**os.environ, "POSTGRES_USER": "postgres", "POSTGRES_DB": HIW_DB,
           "HIW_MONITOR_PASSWORD": password, "PGHOST": "127.0.0.1",
           "PGPORT": str(cluster.port)}
    result = subprocess.run(["sh", str(COMPOSE_DIR / "postgres/20-hiw-monitor-password.sh")],
                            env=env, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert password not in result.stdout + result.stderr
    with psycopg.connect(cluster.dsn(HIW_DB, user="hiw_monitor", password=None),
                         password=password, connect_timeout=10) as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("hiw_monitor",)


def test_pgbouncer_dockerfile_is_hadolint_clean():
    result = subprocess.run([_venv_tool("hadolint"), "--no-color",
                             str(COMPOSE_DIR / "pgbouncer" / "Dockerfile")],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


# --- for real: the PgBouncer image, watched by the agent's image, with podman ------------

@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The agent's image, built as test_image.py builds it (podman's layer cache makes a
    second build of the same tree take seconds)."""
    from test_image import build_image

    return build_image(tmp_path_factory)


@pytest.mark.integration
@pytest.mark.timeout(1800)
def test_pgbouncer_and_workload_images_watched_by_the_agent_image(image, pg15_own, tmp_path):
    """The compose stack's PgBouncer image (on the test's Debian base) in front of a real
    PostgreSQL (a server of the test's own: the workload writes), its entrypoint writing
    the auth_file from the environment; the workload service's own script (from
    compose.yaml) running through it from the agent's image; the agent's image watching
    PgBouncer's console as in the stack, and seeing the workload's pool. All on the host
    network, on 127.0.0.1 and free ports (the test's ini changes only the addresses)."""
    from conftest import HIW_DB, MONITOR_PASSWORD
    from test_image import (
        BUILD_TIMEOUT,
        PODMAN,
        _container,
        _inspect,
        _logs,
        _run,
        base_image,
        prune_old_builds,
    )

    pg = pg15_own
    # the committed files, as for the agent's image
    archive = tmp_path / "pgbouncer.tar"
    _run(["git", "-C", str(REPO), "archive", "--format=tar", f"--output={archive}", "HEAD",
          "deploy/compose/pgbouncer"])
    with tarfile.open(archive) as tar:
        tar.extractall(tmp_path / "context", filter="data")
    context = tmp_path / "context" / "deploy" / "compose" / "pgbouncer"
    assert (context / "Dockerfile").is_file(), "deploy/compose/pgbouncer is not committed"
    iidfile = tmp_path / "iid"
    _run([*PODMAN, "build", "--isolation=chroot", "--network", "host", "--format", "docker",
          "--volume", "/etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt:ro",
          "--build-arg", f"BASE_IMAGE={base_image()}", "--iidfile", str(iidfile),
          "--tag", "localhost/hiw-monitor-pgbouncer:test", str(context)],
         timeout=BUILD_TIMEOUT)
    bouncer_image = iidfile.read_text().strip()
    prune_old_builds()
    bouncer_port, agent_port = free_port(), free_port()
    ini = (COMPOSE_DIR / "pgbouncer" / "pgbouncer.ini").read_text()
    ini = ini.replace("host=postgres port=5432", f"host=127.0.0.1 port={pg.cluster.port}")
    ini = ini.replace("listen_addr = 0.0.0.0", "listen_addr = 127.0.0.1")
    ini = ini.replace("listen_port = 6432", f"listen_port = {bouncer_port}")
    (tmp_path / "pgbouncer.ini").write_text(ini)
    config = tmp_path / "hiw_monitor.yaml"
    document = yaml.safe_load((COMPOSE_DIR / "hiw_monitor.yaml").read_text())
    (target,) = [t for t in document["targets"] if t.get("type") == "pgbouncer"]
    target.update(host="127.0.0.1", port=bouncer_port)
    config.write_text(yaml.safe_dump({"targets": [target]}))
    for path in (tmp_path, tmp_path / "pgbouncer.ini", config):
        path.chmod(0o755 if path.is_dir() else 0o644)
    app_password = f"app-{uuid.uuid4().hex[:8]}"
    bouncer_options = ("--network", "host",
                       "--env", f"HIW_MONITOR_PASSWORD={MONITOR_PASSWORD}",
                       "--env", f"POSTGRES_PASSWORD={app_password}",
                       "--volume",
                       f"{tmp_path / 'pgbouncer.ini'}:/etc/pgbouncer/pgbouncer.ini:ro")
    agent_options = ("--network", "host", "--read-only",
                     "--env", f"HIW_MONITOR_LISTEN=127.0.0.1:{agent_port}",
                     "--env", "HIW_MONITOR_CONFIG=/etc/hiw-monitor/hiw_monitor.yaml",
                     "--env", f"HIW_DB_PASSWORD={MONITOR_PASSWORD}",
                     "--volume", f"{config}:/etc/hiw-monitor/hiw_monitor.yaml:ro")
    workload = _services()["workload"]
    workload_options = (
        "--network", "host", "--read-only",
        "--entrypoint", json.dumps(workload["entrypoint"]),
        "--env", f"WORKLOAD_DSN=host=127.0.0.1 port={bouncer_port} dbname={HIW_DB} "
        "user=postgres",
        "--env", f"PGPASSWORD={app_password}")
    with _container(bouncer_image, options=bouncer_options) as bouncer, \
            _container(image, options=agent_options) as agent, \
            _container(image, *workload["command"], options=workload_options) as app:
        url = f"http://127.0.0.1:{agent_port}/metrics"

        def metrics() -> str:
            try:
                return http_get(url, timeout=10).text
            except OSError:
                return ""

        def seen() -> bool:
            text = metrics()
            return (sample(text, "hiw_up", target=target["name"]) == 1
                    and (sample(text, "hiw_pgbouncer_pool_client_connections",
                                target=target["name"], database=HIW_DB, user="postgres",
                                state="active") or 0) >= 1)

        wait_for(seen, timeout=180, every=1,
                 what=f"the agent to see PgBouncer and the workload's pool\n"
                 f"{_logs(bouncer)}\n{_logs(agent)[-3000:]}\n{_logs(app)}")
        text = metrics()
        assert sample(text, "hiw_collector_up", target=target["name"],
                      collector="pgbouncer") == 1, _logs(agent)[-3000:]
        _run([*PODMAN, "stop", "--time", "60", app], timeout=120)
        assert _inspect(app, "{{.State.ExitCode}}") == "0", _logs(app)
        report = re.search(r"workload: (\d+) statements, (\d+) errors", _logs(app))
        assert report, _logs(app)
        assert int(report.group(1)) > 0, report.group(0)
        assert int(report.group(2)) == 0, report.group(0) + "\n" + _logs(bouncer)
        logs = _logs(bouncer) + _logs(agent) + _logs(app)
        assert MONITOR_PASSWORD not in logs
        assert app_password not in logs
