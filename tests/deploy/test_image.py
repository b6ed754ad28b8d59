"""The container image (top-level ``Dockerfile``), built and run for real with podman.

- ``hadolint`` finds nothing in the Dockerfile;
- the image builds from a clean copy of the committed tree (``git archive HEAD``: a dirty
  worktree, ``.venv`` or caches never enter the build context), from a Debian bookworm
  base made here with ``debootstrap`` (``localhost/debian-py:bookworm``, cached between
  runs: see :func:`base_image`);
- run against a real PostgreSQL (the ``pg`` fixture) with the config file and the
  password file mounted, ``/metrics`` shows ``hiw_up 1``; the process runs as uid 10001;
  the image's HEALTHCHECK passes; ``podman stop`` (SIGTERM) ends it with exit code 0,
  well before the SIGKILL that would follow 60 s later;
- with no network of its own, the agent listens on 0.0.0.0:9188 (the image's default) and
  the HEALTHCHECK finds it there.

How podman runs here: chroot isolation for the build, the runc runtime and cgroupfs for
the containers (crun fails in this sandbox), ``--network host`` (the agent then listens
on 127.0.0.1 and a free port, never on the host's 0.0.0.0). Everything needs root
(debootstrap, rootful podman); under ``CI=true`` a missing tool fails, elsewhere it skips.

Measured here (2 cores), this module and test_compose.py together: cold (no base image,
no layer cache) about 3 min, of which debootstrap 1.5 min and the builds 1 min; warm
after a commit that changed the package (the base cached, the pip step re-run) about
1 min; warm with the package unchanged about 35 s.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import http_get, sample, wait_for

from hiw_monitor import __version__
from hiw_monitor.demo.cluster import free_port

REPO = Path(__file__).resolve().parents[2]
IN_CI = os.environ.get("CI", "").lower() == "true"
PG_VERSIONS = ("pg15",)  # the image is what is tested here, not the server versions
BASE_IMAGE = "localhost/debian-py:bookworm"
# the debootstrapped base, saved with `podman save` (podman's own store keeps it too; the
# archive survives a `podman system reset` and serves a second store on the machine)
CACHE = Path(os.environ.get("HIW_IMAGE_CACHE") or "/var/cache/hiw-monitor/images")
BASE_ARCHIVE = CACHE / "debian-py-bookworm.tar"
PODMAN = ("podman", "--cgroup-manager=cgroupfs")
RUN = (*PODMAN, "run", "--runtime", "runc", "--ulimit", "nofile=1024:1024",
       "--ulimit", "nproc=4096:4096")
AGENT_UID = 10001
VENDOR_LABEL = "org.opencontainers.image.vendor=Heroes in Waiting"
BUILD_TIMEOUT = 1500  # a cold run: debootstrap, then the build with its pip downloads
# a hang guard wide enough for a cold run (debootstrap, then the build): whichever test
# first asks for the image pays for it
pytestmark = [pytest.mark.integration, pytest.mark.timeout(BUILD_TIMEOUT + 300)]


def _missing(what: str) -> None:
    if IN_CI:
        pytest.fail(what)
    pytest.skip(what)


def _require(binary: str, package: str) -> str:
    found = shutil.which(binary)
    if found is None:
        _missing(f"{binary} not found; apt-get install {package}")
    return found or binary


def _run(args: list[str] | tuple[str, ...], *, timeout: float = 120, check: bool = True,
         **kwargs) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout,
                            check=False, **kwargs)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({result.returncode}):\n"
                             f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


def _hadolint() -> str:
    beside = Path(sys.executable).parent / "hadolint"
    if beside.exists():
        return str(beside)
    return _require("hadolint", "(pip) the test extra: pip install -e '.[test]'")


def test_dockerfile_is_hadolint_clean():
    result = _run([_hadolint(), "--no-color", str(REPO / "Dockerfile")], check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_shape():
    """What a reader (and Kubernetes) relies on, stated in the file itself."""
    text = (REPO / "Dockerfile").read_text()
    assert re.search(r"(?m)^ARG BASE_IMAGE=python:3\.12-slim$", text)
    froms = re.findall(r"(?m)^FROM (\S+)", text)
    assert len(froms) >= 2  # multi-stage
    assert all(f == "${BASE_IMAGE}" for f in froms)
    assert re.search(r"(?m)^USER \d+:\d+$", text)  # numeric: runAsNonRoot can check it
    assert re.search(r"(?m)^EXPOSE 9188$", text)
    assert re.search(r"(?m)^HEALTHCHECK .*/healthz", text, re.DOTALL)
    # mirrors reach the build stage as build args, never as defaults baked into the file
    assert not re.search(r"(?m)^ARG PIP_\w+=", text)
    # .dockerignore is an allow-list: everything out, then the package back in
    rules = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    assert rules[0] == "*"
    assert {"!pyproject.toml", "!README.md", "!hiw_monitor/"} <= set(rules)


# --- the base image and the build ---------------------------------------------------------

@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive flock: parallel runs on one machine wait for each other's build."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _image_exists(name: str) -> bool:
    return _run([*PODMAN, "image", "exists", name], check=False).returncode == 0


def base_image() -> str:
    """``localhost/debian-py:bookworm``: Debian bookworm (minbase) with python3,
    python3-venv and ca-certificates, from the mirror the host's apt uses. Once per
    machine: podman's store keeps it; the archive under :data:`CACHE` restores it into an
    empty store in seconds; only without both does it run debootstrap (1-2 minutes)."""
    if _image_exists(BASE_IMAGE):
        return BASE_IMAGE
    with _locked(CACHE / ".debian-py.lock"):
        if _image_exists(BASE_IMAGE):  # built by a parallel run while we waited
            return BASE_IMAGE
        if BASE_ARCHIVE.is_file():
            _run([*PODMAN, "load", "--quiet", "--input", str(BASE_ARCHIVE)], timeout=600)
            if _image_exists(BASE_IMAGE):
                return BASE_IMAGE
        from hiw_monitor.demo.chroot import host_mirror

        debootstrap = _require("debootstrap", "debootstrap")
        root = Path(tempfile.mkdtemp(prefix="debian-py.", dir=CACHE))
        try:
            _run([debootstrap, "--variant=minbase",
                  "--include=python3,python3-venv,ca-certificates", "bookworm", str(root),
                  host_mirror()], timeout=BUILD_TIMEOUT)
            # the apt lists and .debs of the bootstrap are not part of the image
            for junk in ("var/cache/apt/archives", "var/lib/apt/lists"):
                for entry in (root / junk).glob("*"):
                    if entry.is_file():
                        entry.unlink()
            tar = subprocess.Popen(["tar", "-C", str(root), "-c", "."], stdout=subprocess.PIPE)
            try:
                _run([*PODMAN, "import", "--quiet", "-", BASE_IMAGE], stdin=tar.stdout,
                     timeout=600)
            finally:
                assert tar.stdout is not None
                tar.stdout.close()
                assert tar.wait(timeout=600) == 0
            partial = BASE_ARCHIVE.with_suffix(".tar.partial")
            _run([*PODMAN, "save", "--quiet", "--output", str(partial), BASE_IMAGE],
                 timeout=600)
            partial.replace(BASE_ARCHIVE)  # whole or absent, never half-written
        finally:
            shutil.rmtree(root, ignore_errors=True)
    return BASE_IMAGE


PIP_SETTINGS = ("index-url", "extra-index-url", "trusted-host", "cert")
SYSTEM_CA = "/etc/ssl/certs/ca-certificates.crt"  # mounted into the build: pip's mirror CA


def _pip_settings() -> dict[str, str]:
    """The pip index the host uses, as build args (env first, then pip's own config): only
    http(s) URLs (a file:// index of the host is not inside the build), and its CA bundle
    when it is the system one (the build mounts that)."""
    found: dict[str, str] = {}
    listing = _run([sys.executable, "-m", "pip", "config", "list"], check=False).stdout
    for line in listing.splitlines():
        key, _, raw = line.partition("=")
        name = key.rpartition(".")[2]
        value = raw.strip().strip("'\"")
        if name in PIP_SETTINGS and value:
            found["PIP_" + name.upper().replace("-", "_")] = value
    for name in ("PIP_" + s.upper().replace("-", "_") for s in PIP_SETTINGS):
        if os.environ.get(name):
            found[name] = os.environ[name]
    args = {}
    for name, value in found.items():
        words = value.split()
        if name in ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL"):
            words = [w for w in words if w.startswith(("http://", "https://"))]
        elif name == "PIP_CERT":
            words = [w for w in words if w == SYSTEM_CA]
        if words:
            args[name] = " ".join(words)
    return args


def test_the_hosts_pip_index_reaches_the_build(monkeypatch):
    monkeypatch.setenv("PIP_INDEX_URL", "https://mirror.example/simple")
    monkeypatch.setenv("PIP_EXTRA_INDEX_URL", "file:///opt/wheels https://extra.example/simple")
    monkeypatch.setenv("PIP_CERT", SYSTEM_CA)
    settings = _pip_settings()
    assert settings["PIP_INDEX_URL"] == "https://mirror.example/simple"
    assert settings["PIP_EXTRA_INDEX_URL"] == "https://extra.example/simple"
    assert settings["PIP_CERT"] == SYSTEM_CA
    text = (REPO / "Dockerfile").read_text()
    for name in settings:  # declared in the build stage, with no default
        assert re.search(rf"(?m)^ARG {name}$", text), name


def _clean_context(dest: Path, revision: str) -> Path:
    """The committed tree (HEAD, as ``revision``) only: what CI builds is what is in git."""
    dest.mkdir()
    archive = dest.parent / "context.tar"
    _run(["git", "-C", str(REPO), "archive", "--format=tar", f"--output={archive}", revision])
    with tarfile.open(archive) as tar:
        tar.extractall(dest, filter="data")
    archive.unlink()
    if not (dest / "Dockerfile").is_file():
        pytest.fail("the Dockerfile is not committed: the image is built from HEAD")
    return dest


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> str:
    return build_image(tmp_path_factory)


_BUILT: dict[str, str] = {}  # HEAD's commit -> the image built from it in this session


def build_image(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The image's ID, built from HEAD on the debootstrapped base, once per session and
    commit (test_compose.py asks for it too; pytest may also set up a module fixture twice
    when it groups tests by a session-scoped parameter). Podman's layer cache makes a
    rebuild of an unchanged tree take seconds anyway."""
    revision = _run(["git", "-C", str(REPO), "rev-parse", "HEAD"]).stdout.strip()
    if revision in _BUILT and _image_exists(_BUILT[revision]):
        return _BUILT[revision]
    if os.geteuid() != 0:
        _missing("the image test needs root (debootstrap, rootful podman)")
    _require("podman", "podman")
    _require("runc", "runc")
    base = base_image()
    context = _clean_context(tmp_path_factory.mktemp("image") / "context", revision)
    iidfile = context.parent / "iid"
    args = {"BASE_IMAGE": base, "VERSION": __version__, "REVISION": revision,
            **_pip_settings()}
    command = [*PODMAN, "build", "--isolation=chroot", "--network", "host", "--format", "docker",
               "--volume", f"{SYSTEM_CA}:{SYSTEM_CA}:ro",
               "--iidfile", str(iidfile), "--tag", "localhost/hiw-monitor:test"]
    for name, value in args.items():
        command += ["--build-arg", f"{name}={value}"]
    started = time.monotonic()
    _run([*command, str(context)], timeout=BUILD_TIMEOUT)
    print(f"image built in {time.monotonic() - started:.0f}s")  # shown with -s
    prune_old_builds()
    _BUILT[revision] = iidfile.read_text().strip()
    return _BUILT[revision]


def prune_old_builds() -> None:
    """Every build of a changed tree leaves the previous one's images behind, untagged
    (podman keeps them as its layer cache): remove those older than a day, ours only (the
    label both stages of the Dockerfile and the PgBouncer image set), so that a CI machine's
    disk does not fill up while today's cache, and any parallel run's image, stay."""
    _run([*PODMAN, "image", "prune", "--force", "--filter", "until=24h",
          "--filter", f"label={VENDOR_LABEL}"], check=False, timeout=600)


def _inspect(name: str, template: str) -> str:
    return _run([*PODMAN, "inspect", "--format", template, name]).stdout.strip()


@contextlib.contextmanager
def _container(image: str, *args: str, options: tuple[str, ...] = ()) -> Iterator[str]:
    """A detached container of ``image``; removed (stopped first if need be) at the end."""
    name = f"hiw-image-test-{uuid.uuid4().hex[:10]}"
    _run([*RUN, "--detach", "--name", name, *options, image, *args])
    try:
        yield name
    finally:
        _run([*PODMAN, "rm", "--force", "--time", "0", name], check=False, timeout=120)


def _pid(name: str) -> int:
    pid = int(_inspect(name, "{{.State.Pid}}"))
    assert pid > 0, f"{name} is not running"
    return pid


def _ids(pid: int, field: str) -> list[int]:
    status = Path(f"/proc/{pid}/status").read_text()
    return [int(x) for x in re.search(rf"(?m)^{field}:\s+(.*)$", status).group(1).split()]


def _logs(name: str) -> str:
    result = _run([*PODMAN, "logs", name], check=False)
    return result.stdout + result.stderr


def _stop_cleanly(name: str) -> None:
    """``podman stop`` sends SIGTERM, then SIGKILL after 60 s: exit code 0 means the
    agent stopped by itself (137 would be the kill)."""
    started = time.monotonic()
    _run([*PODMAN, "stop", "--time", "60", name], timeout=120)
    elapsed = time.monotonic() - started
    assert _inspect(name, "{{.State.ExitCode}}") == "0", _logs(name)
    assert elapsed < 30, f"the agent took {elapsed:.1f}s to stop"
    assert '"stopped"' in _logs(name)


def _healthcheck(name: str) -> subprocess.CompletedProcess[str]:
    return _run([*PODMAN, "healthcheck", "run", name], check=False, timeout=60)


def test_image_metadata(image):
    (data,) = json.loads(_run([*PODMAN, "image", "inspect", image]).stdout)
    config = data["Config"]
    assert config["User"] == f"{AGENT_UID}:{AGENT_UID}"
    assert config["Entrypoint"] == ["/opt/hiw-monitor/bin/hiw-monitor"]
    assert config["Cmd"] == ["run"]
    assert "HIW_MONITOR_LISTEN=0.0.0.0:9188" in config["Env"]
    assert "9188/tcp" in config["ExposedPorts"]
    assert config["StopSignal"] == "SIGTERM"
    labels = config["Labels"]
    for label in ("title", "description", "version", "revision", "licenses"):
        assert labels.get(f"org.opencontainers.image.{label}"), label
    assert labels["org.opencontainers.image.version"] == __version__
    # docker format: the OCI image format has no HEALTHCHECK (buildah drops it there)
    healthcheck = data.get("Healthcheck") or {}
    assert healthcheck.get("Test", [None])[0] == "CMD", healthcheck
    assert any("/healthz" in word for word in healthcheck["Test"]), healthcheck


def test_image_holds_no_build_tools_or_caches(image):
    """No compiler, no pip (nor its cache), no wheels, no build context in the final
    image; the agent runs from its venv."""
    script = (
        "set -u; bad=0\n"
        "for tool in gcc cc g++ make pip pip3; do\n"
        "  if command -v $tool >/dev/null; then echo found $tool; bad=1; fi; done\n"
        "for path in /opt/hiw-monitor/bin/pip /wheels /src /opt/build /root/.cache; do\n"
        "  if [ -e $path ]; then echo found $path; bad=1; fi; done\n"
        "ls /opt/hiw-monitor/lib/python3*/site-packages/hiw_monitor/demo/schema.sql >/dev/null"
        " || bad=1\n"
        "exit $bad\n")
    result = _run([*RUN, "--rm", "--network", "host", "--entrypoint", "/bin/sh", image,
                   "-c", script], check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    version = _run([*RUN, "--rm", "--network", "host", image, "--version"])
    assert version.stdout.strip() == f"hiw-monitor {__version__}"


def test_image_watches_a_real_postgresql(image, pg, tmp_path):
    """The config file and the password file mounted read-only, as a deployment would."""
    from conftest import HIW_DB, MONITOR_PASSWORD

    port = free_port()
    secret = tmp_path / "hiw_db_password"
    secret.write_text(MONITOR_PASSWORD + "\n")
    config = tmp_path / "hiw_monitor.yaml"
    config.write_text(
        "targets:\n"
        "  - name: image-test\n"
        f"    host: 127.0.0.1\n    port: {pg.cluster.port}\n    dbname: {HIW_DB}\n"
        "    user: hiw_monitor\n    password_file: /run/secrets/hiw_db_password\n")
    for path in (secret, config, tmp_path):
        path.chmod(0o755 if path.is_dir() else 0o644)  # readable by uid 10001
    # locked down as compose.yaml and a Kubernetes securityContext run it: read-only root
    # filesystem, no capabilities, no privilege escalation
    options = ("--network", "host", "--read-only", "--cap-drop", "all",
               "--security-opt", "no-new-privileges",
               "--env", f"HIW_MONITOR_LISTEN=127.0.0.1:{port}",  # never the host's 0.0.0.0
               "--env", "HIW_MONITOR_CONFIG=/etc/hiw-monitor/hiw_monitor.yaml",
               "--volume", f"{config}:/etc/hiw-monitor/hiw_monitor.yaml:ro",
               "--volume", f"{secret}:/run/secrets/hiw_db_password:ro")
    url = f"http://127.0.0.1:{port}"
    with _container(image, options=options) as name:
        pid = _pid(name)
        # the agent itself, as the image's user: real, effective, saved and fs ids
        assert Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[1].endswith(
            b"/opt/hiw-monitor/bin/hiw-monitor")
        assert set(_ids(pid, "Uid")) == {AGENT_UID}, _ids(pid, "Uid")
        assert set(_ids(pid, "Gid")) == {AGENT_UID}, _ids(pid, "Gid")
        capabilities = re.search(r"(?m)^CapEff:\s+(\w+)$",
                                 Path(f"/proc/{pid}/status").read_text()).group(1)
        assert int(capabilities, 16) == 0, f"effective capabilities {capabilities}"

        def up() -> bool:
            try:
                text = http_get(url + "/metrics", timeout=10).text
            except OSError:
                return False
            return sample(text, "hiw_up", target="image-test") == 1

        wait_for(up, timeout=120, what=f"hiw_up 1 from the container\n{_logs(name)}")
        assert http_get(url + "/healthz").status == 200
        check = _healthcheck(name)
        assert check.returncode == 0, check.stdout + check.stderr
        assert MONITOR_PASSWORD not in _logs(name)
        _stop_cleanly(name)


def test_image_listens_on_all_addresses_of_its_own_network(image):
    """No --listen and no HIW_MONITOR_LISTEN given: inside a network namespace of its own
    the agent listens on 0.0.0.0:9188, which the HEALTHCHECK finds. The target is
    unreachable on purpose: the agent keeps running and /healthz stays up."""
    options = ("--network", "none",
               "--env", "HIW_MONITOR_DSN=host=127.0.0.1 port=1 dbname=x user=hiw_monitor")
    with _container(image, options=options) as name:
        pid = _pid(name)

        def listening() -> bool:
            table = Path(f"/proc/{pid}/net/tcp").read_text().splitlines()[1:]
            # local address 00000000:23E4 (0.0.0.0:9188), state 0A (LISTEN)
            return any(line.split()[1] == "00000000:23E4" and line.split()[3] == "0A"
                       for line in table)

        wait_for(listening, timeout=60, what=f"0.0.0.0:9188 in the container\n{_logs(name)}")
        wait_for(lambda: _healthcheck(name).returncode == 0, timeout=60, every=1,
                 what="the HEALTHCHECK to pass")
        _stop_cleanly(name)
