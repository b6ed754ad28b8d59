"""The systemd unit (deploy/systemd/): checked by systemd's own tools, and the agent run
under the unit's sandbox as far as it can be without systemd as PID 1.

- ``systemd-analyze verify`` on a copy of the unit whose ExecStart is the agent installed
  here (verify needs the binary to exist; it does not need systemd running);
- ``systemd-analyze security --offline=yes``: the exposure score stays under a threshold;
- the hardening directives are there, the example env file holds no real secret;
- the sandbox: ``systemd-run`` cannot start a unit here (PID 1 is not systemd), so the
  agent runs under the unit's seccomp rules rebuilt from the unit itself (the system call
  allow-list expanded by ``systemd-analyze syscall-filter``, MemoryDenyWriteExecute,
  RestrictAddressFamilies, LockPersonality; the same errno), ``no_new_privs``, no
  capability, the unit's environment and env file, as an unprivileged user where the
  interpreter is reachable by one, against a real PostgreSQL; ExecReload's SIGHUP and
  KillSignal are sent as systemd would. The mount namespace settings are not emulated.
"""

from __future__ import annotations

import ctypes.util
import json
import os
import pwd
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import HIW_DB, MONITOR_PASSWORD
from helpers import http_get, samples, wait_for
from psycopg.conninfo import conninfo_to_dict
from tools import IN_CI

from hiw_monitor.collectors import ALL, PGBOUNCER_NAMES
from hiw_monitor.demo.cluster import free_port

ROOT = Path(__file__).parents[2]
UNIT = ROOT / "deploy" / "systemd" / "hiw-monitor.service"
ENV_EXAMPLE = ROOT / "deploy" / "systemd" / "hiw-monitor.env.example"
SYSTEMD_README = ROOT / "deploy" / "systemd" / "README.md"
INSTALLED_AT = "/opt/hiw-monitor/bin/hiw-monitor"  # ExecStart's binary (README's install)
MAX_EXPOSURE = 1.5  # systemd-analyze security: 1.1 now; "OK" ends at 3.9
PG_VERSIONS = ("pg15",)


# --- reading the unit -----------------------------------------------------------------


def directives(path: Path = UNIT) -> list[tuple[str, str, str]]:
    """(section, key, value) in file order; keys may repeat (Environment=, ...)."""
    out, section = [], ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        assert "=" in line, f"not a directive: {raw!r}"
        assert not line.endswith("\\"), "continuation lines are not read by this test"
        key, value = line.split("=", 1)
        out.append((section, key.strip(), value.strip()))
    return out


def service(key: str) -> list[str]:
    return [v for s, k, v in directives() if s == "Service" and k == key]


def one(key: str) -> str:
    values = service(key)
    assert len(values) == 1, f"{key}= set {len(values)} times"
    return values[0]


def seconds(text: str) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(ms|s|min|m)?", text)
    assert match, text
    factor = {"ms": 0.001, "s": 1, None: 1, "min": 60, "m": 60}[match[2]]
    return float(match[1]) * factor


def agent_binary() -> Path:
    """The agent of the venv running the tests (console script beside the interpreter)."""
    binary = Path(sys.executable).parent / "hiw-monitor"
    if not binary.exists():
        pytest.fail(f"{binary} missing: pip install -e '.[test]' installs it")
    return binary


def unit_for_here(tmp: Path, binary: Path) -> Path:
    """A copy of the unit whose ExecStart is ``binary`` (verify wants it to exist)."""
    text = UNIT.read_text()
    line = f"ExecStart={INSTALLED_AT} "
    assert text.count(line) == 1, "ExecStart is the README's install path"
    copy = tmp / UNIT.name  # same name: the unit's name is part of what verify checks
    copy.write_text(text.replace(line, f"ExecStart={binary} "))
    return copy


def systemd_analyze() -> str:
    found = shutil.which("systemd-analyze")
    if found:
        return found
    message = "systemd-analyze not found; apt-get install systemd"
    if IN_CI:
        pytest.fail(message)
    pytest.skip(message)
    raise AssertionError


# --- systemd's own checks ---------------------------------------------------------------


def test_systemd_analyze_verify_passes(tmp_path):
    copy = unit_for_here(tmp_path, agent_binary())
    result = subprocess.run([systemd_analyze(), "verify", str(copy)], capture_output=True,
                            text=True, timeout=120, check=False)
    # verify also loads the units it names (network-online.target, ...): only what it says
    # of ours counts, and any failure
    ours = [line for line in (result.stdout + result.stderr).splitlines()
            if UNIT.name in line or str(copy) in line]
    assert result.returncode == 0, result.stdout + result.stderr
    assert ours == [], "\n".join(ours)


def test_systemd_analyze_verify_catches_a_broken_unit(tmp_path):
    """The check above can fail: a misspelt directive and a missing binary are reported."""
    copy = unit_for_here(tmp_path, tmp_path / "no-such-binary")
    copy.write_text(copy.read_text().replace("ProtectSystem=strict", "ProtectSytem=strict"))
    result = subprocess.run([systemd_analyze(), "verify", str(copy)], capture_output=True,
                            text=True, timeout=120, check=False)
    said = result.stdout + result.stderr
    assert result.returncode != 0, said
    assert "ProtectSytem" in said
    assert "no-such-binary" in said


def test_security_exposure_stays_low(tmp_path):
    copy = unit_for_here(tmp_path, agent_binary())
    analyze = systemd_analyze()
    probe = subprocess.run([analyze, "security", "--help"], capture_output=True, text=True,
                           timeout=60, check=False)
    if "--offline" not in probe.stdout:
        message = "this systemd-analyze has no --offline (systemd < 250; Debian 12 has 252)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    result = subprocess.run(
        [analyze, "security", "--offline=yes", f"--threshold={MAX_EXPOSURE * 10:.0f}",
         "--no-pager", str(copy)], capture_output=True, text=True, timeout=120, check=False)
    said = result.stdout + result.stderr
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+) (\w+)", said)
    assert match, said
    assert float(match[1]) <= MAX_EXPOSURE, said
    assert result.returncode == 0, said  # --threshold: non-zero above it
    # README quotes the score
    assert f"rates it {match[1]}" in SYSTEMD_README.read_text()
    # what is still exposed is the network itself, not a missing directive
    exposed = {line.split()[1] for line in said.splitlines() if line.startswith("✗")}
    assert exposed <= {"RootDirectory=/RootImage=", "RestrictAddressFamilies=~AF_UNIX",
                       "RestrictAddressFamilies=~AF_(INET|INET6)", "PrivateNetwork=",
                       "DeviceAllow=", "IPAddressDeny="}, said


# --- the unit's content ---------------------------------------------------------------------


def test_unit_has_the_hardening_directives():
    expected = {
        "DynamicUser": "yes", "NoNewPrivileges": "yes", "ProtectSystem": "strict",
        "ProtectHome": "yes", "PrivateTmp": "yes", "PrivateDevices": "yes",
        "PrivateUsers": "yes", "ProtectKernelTunables": "yes",
        "ProtectKernelModules": "yes", "ProtectKernelLogs": "yes",
        "ProtectControlGroups": "yes", "ProtectClock": "yes", "ProtectHostname": "yes",
        "ProtectProc": "invisible", "RestrictNamespaces": "yes", "RestrictRealtime": "yes",
        "RestrictSUIDSGID": "yes", "LockPersonality": "yes", "MemoryDenyWriteExecute": "yes",
        "SystemCallArchitectures": "native", "CapabilityBoundingSet": "",
        "AmbientCapabilities": "", "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
        "Restart": "on-failure", "KillSignal": "SIGTERM", "Type": "exec",
        "EnvironmentFile": "/etc/hiw-monitor/hiw-monitor.env",
        "ExecReload": "/bin/kill -HUP $MAINPID",
    }
    found = {key: one(key) for key in expected}
    assert found == expected
    assert service("SystemCallFilter")[0] == "@system-service"
    assert shlex.split(one("ExecStart")) == [INSTALLED_AT, "run"]
    assert "HIW_MONITOR_CONFIG=/etc/hiw-monitor/hiw_monitor.yaml" in " ".join(
        service("Environment"))
    assert seconds(one("RestartSec")) >= 1
    assert 5 <= seconds(one("TimeoutStopSec")) <= 90
    assert one("RestartPreventExitStatus") == "2"  # a config error: a restart cannot help
    unit = {k: v for s, k, v in directives() if s == "Unit"}
    assert int(unit["StartLimitBurst"]) >= 2
    assert seconds(unit["StartLimitIntervalSec"]) > seconds(one("RestartSec")) * int(
        unit["StartLimitBurst"])
    assert {k: v for s, k, v in directives() if s == "Install"} == {
        "WantedBy": "multi-user.target"}
    # no User= beside DynamicUser, and nothing that gives privileges back
    assert not service("User") + service("Group") + service("SupplementaryGroups")
    assert not service("PermissionsStartOnly") + service("ExecStartPre")


def test_sighup_reloads_in_the_agent_as_execreload_says():
    """ExecReload sends SIGHUP: the agent must handle it (re-reading file_sd), not die."""
    cli = (ROOT / "hiw_monitor" / "cli.py").read_text()
    assert "signal.signal(signal.SIGHUP" in cli
    assert "signal.signal(signal.SIGTERM" in cli


def test_env_example_holds_no_real_secret():
    text = ENV_EXAMPLE.read_text()
    settings = {}
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            settings[key.strip()] = value.strip()
    assert settings == {"HIW_DB_PASSWORD": "CHANGE_ME"}
    # commented-out examples too: every password-like value is the placeholder
    for match in re.finditer(r"(?m)^#?\s*(\w*(?:PASSWORD|SECRET|TOKEN)\w*)=(.*)$", text):
        assert match[2].strip() == "CHANGE_ME", match[0]
    # no credentials inside a URL either
    assert not re.search(r"://[^/@\s:]+:[^/@\s]+@", text)
    assert "0600" in text  # it says how to install it
    # the unit's config takes the password by that name
    config = (ROOT / "config" / "hiw_monitor.yaml").read_text()
    assert "password_env: HIW_DB_PASSWORD" in config


def test_readme_install_steps_match_the_unit():
    readme = SYSTEMD_README.read_text()
    for step in ("systemctl daemon-reload", "systemctl enable --now hiw-monitor",
                 "install -m 0644 deploy/systemd/hiw-monitor.service /etc/systemd/system/",
                 "install -m 0600 -o root -g root deploy/systemd/hiw-monitor.env.example "
                 "/etc/hiw-monitor/hiw-monitor.env",
                 "/etc/hiw-monitor/hiw_monitor.yaml", "PIPX_BIN_DIR=/opt/hiw-monitor/bin",
                 "python3 -m venv /opt/hiw-monitor", "DynamicUser"):
        assert step in readme, step


# --- the agent under the unit's sandbox -----------------------------------------------------

# Run by the test's interpreter as root: take the identity, set no_new_privs, drop every
# capability, load the seccomp filters systemd would load for the unit, exec the agent.
# Filters as systemd 252 builds them (src/shared/seccomp-util.c): each its own program, so
# the most restrictive verdict wins.
SANDBOX = textwrap.dedent(r'''
    import ctypes, json, os, socket, sys

    spec = json.load(open(sys.argv[1]))
    lib = ctypes.CDLL("libseccomp.so.2", use_errno=True)
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]

    class Cmp(ctypes.Structure):
        _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int),
                    ("a", ctypes.c_uint64), ("b", ctypes.c_uint64)]

    lib.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int,
                                           ctypes.c_uint, ctypes.POINTER(Cmp)]
    lib.seccomp_load.argtypes = [ctypes.c_void_p]
    ALLOW, NE, EQ, GE, MASKED_EQ = 0x7FFF0000, 1, 4, 5, 7

    def errno(number):
        return 0x00050000 | number

    def nr(name):
        return lib.seccomp_syscall_resolve_name(name.encode())

    def rule(ctx, action, name, *cmps):
        number = nr(name)
        if number < 0:  # not a system call of this architecture
            return
        array = (Cmp * max(1, len(cmps)))(*[Cmp(*c) for c in cmps])
        rc = lib.seccomp_rule_add_array(ctx, action, number, len(cmps), array)
        if rc != 0:
            raise OSError(-rc, f"seccomp_rule_add {name} {cmps}")

    filters = []
    if spec["mdwe"]:
        ctx = lib.seccomp_init(ALLOW)
        wx, x, shm_exec, eperm = 0x2 | 0x4, 0x4, 0o100000, errno(1)
        rule(ctx, eperm, "mmap", (2, MASKED_EQ, wx, wx))
        rule(ctx, eperm, "mprotect", (2, MASKED_EQ, x, x))
        rule(ctx, eperm, "pkey_mprotect", (2, MASKED_EQ, x, x))
        rule(ctx, eperm, "shmat", (2, MASKED_EQ, shm_exec, shm_exec))
        filters.append(ctx)
    if spec["families"] is not None:
        ctx = lib.seccomp_init(ALLOW)
        allowed = {getattr(socket, name) for name in spec["families"]}
        refused = errno(97)  # EAFNOSUPPORT
        rule(ctx, refused, "socket", (0, GE, spec["af_max"], 0))
        for family in range(spec["af_max"]):
            if family not in allowed:
                rule(ctx, refused, "socket", (0, EQ, family, 0))
        filters.append(ctx)
    if spec["lock_personality"]:
        ctx = lib.seccomp_init(ALLOW)
        rule(ctx, errno(1), "personality", (0, NE, 0, 0))  # PER_LINUX only
        filters.append(ctx)
    if spec["allow"] is not None:  # last: seccomp() itself is not on the allow-list
        ctx = lib.seccomp_init(errno(spec["errno"]))
        for name in spec["allow"]:
            rule(ctx, ALLOW, name)
        filters.append(ctx)

    libc = ctypes.CDLL(None, use_errno=True)
    libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong,
                           ctypes.c_char_p]

    def check(rc, what):
        if rc != 0:
            raise OSError(ctypes.get_errno(), what)

    if spec["reveal"]:
        # the interpreter lives under /root (mode 0700): in a mount namespace of our own,
        # /root becomes an empty 0755 tmpfs holding only what the agent needs from it
        CLONE_NEWNS, MS_BIND, MS_REC, MS_PRIVATE = 0x20000, 0x1000, 0x4000, 0x40000
        check(libc.unshare(CLONE_NEWNS), "unshare")
        check(libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None), "private /")
        staged = []
        for index, path in enumerate(spec["reveal"]):
            stage = os.path.join(spec["stage"], str(index))
            os.mkdir(stage)
            check(libc.mount(path.encode(), stage.encode(), None, MS_BIND | MS_REC, None),
                  f"bind {path}")
            staged.append((stage, path))
        check(libc.mount(b"tmpfs", b"/root", b"tmpfs", 0, b"mode=0755"), "tmpfs /root")
        for stage, path in staged:
            os.makedirs(path)
            check(libc.mount(stage.encode(), path.encode(), None, MS_BIND | MS_REC, None),
                  f"bind {path} back")
    PR_CAPBSET_DROP, PR_SET_NO_NEW_PRIVS = 24, 38
    for cap in range(int(open("/proc/sys/kernel/cap_last_cap").read()) + 1):
        check(libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0), f"drop capability {cap}")
    if spec["uid"] != 0:
        os.setgroups([])
        os.setgid(spec["gid"])
        os.setuid(spec["uid"])  # permitted and effective capabilities go with root
    check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")
    for ctx in filters:
        rc = lib.seccomp_load(ctypes.c_void_p(ctx))
        if rc != 0:
            raise OSError(-rc, "seccomp_load")
    os.chdir(spec["cwd"])
    # an empty bounding set and no inheritable capability: the exec'd agent has none, as
    # root or not (capabilities(7), "Transformation of capabilities during execve")
    os.execve(spec["argv"][0], spec["argv"], spec["env"])
''')


def syscall_groups(analyze: str) -> dict[str, list[str]]:
    """``systemd-analyze syscall-filter``: every @group and what it lists."""
    out = subprocess.run([analyze, "syscall-filter"], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    groups: dict[str, list[str]] = {}
    current = None
    for line in out.splitlines():
        if line.startswith("@"):
            current = groups.setdefault(line.strip(), [])
        elif line.startswith("    ") and current is not None:
            item = line.strip()
            if item and not item.startswith("#"):
                current.append(item)
        else:
            current = None
    assert "@system-service" in groups, out[:2000]
    assert "@default" in groups, out[:2000]
    return groups


def expand(name: str, groups: dict[str, list[str]]) -> set[str]:
    if not name.startswith("@"):
        return {name}
    return set().union(*(expand(item, groups) for item in groups[name]))


def allowed_syscalls(analyze: str) -> set[str]:
    """SystemCallFilter= as systemd reads it: the first line being an allow-list, @default
    is added to it; a later '~' line removes from it."""
    groups = syscall_groups(analyze)
    allow: set[str] | None = None
    for value in service("SystemCallFilter"):
        deny = value.startswith("~")
        names = set().union(*(expand(n, groups) for n in value.lstrip("~").split()))
        if allow is None:
            assert not deny, "the first SystemCallFilter= is the allow-list"
            allow = expand("@default", groups) | names
        elif deny:
            allow -= names
        else:
            allow |= names
    assert allow is not None
    return allow


def read_env_file(path: Path) -> dict[str, str]:
    """EnvironmentFile= lines: VAR=value, '#' comments, optional quotes."""
    env = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";")):
            key, _, value = line.partition("=")
            env[key.strip()] = shlex.split(value)[0] if value.strip() else ""
    return env


def unit_environment(env_file: Path, user: str) -> dict[str, str]:
    """What systemd gives the service: its base, Environment=, then EnvironmentFile=
    (which wins)."""
    env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
           "LANG": "C.UTF-8", "HOME": "/", "USER": user, "LOGNAME": user,
           "SHELL": "/usr/sbin/nologin"}
    for value in service("Environment"):
        for item in shlex.split(value):
            key, _, val = item.partition("=")
            env[key] = val
    env.update(read_env_file(env_file))
    return env


def unprivileged_can_run(python: Path, user: str) -> bool:
    """Can ``user`` execute the agent's interpreter (it may live under /root)?"""
    result = subprocess.run(["runuser", "-u", user, "--", str(python), "-c", "pass"],
                            capture_output=True, timeout=60, check=False)
    return result.returncode == 0


@pytest.fixture
def _as_root() -> None:
    """Taking another identity (the unit's user) needs root: CI runs as root, so there a
    non-root run is a failure, elsewhere a skip."""
    if os.geteuid() != 0:
        if IN_CI:
            pytest.fail("taking another identity needs root: run the tests as root")
        pytest.skip("taking another identity needs root")


def require_libseccomp() -> None:
    """The sandbox loads its filters through libseccomp (systemd's own dependency)."""
    if ctypes.util.find_library("seccomp") is None:
        message = "libseccomp not found; apt-get install libseccomp2"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture
def public_dir() -> Iterator[Path]:
    """A directory any user may read (the config of an agent that runs as nobody)."""
    path = Path(tempfile.mkdtemp(prefix="hiw-systemd-", dir="/var/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.mark.integration
@pytest.mark.usefixtures("_as_root")
def test_agent_runs_under_the_units_sandbox(pg, public_dir, tmp_path):
    analyze = systemd_analyze()
    require_libseccomp()
    binary = agent_binary()
    # DynamicUser: a UID of no account that owns nothing; nobody is the nearest here
    user = "nobody"
    entry = pwd.getpwnam(user)
    uid, gid = entry.pw_uid, entry.pw_gid
    # a Python (pyenv), a venv or a checkout (the editable install) under /root is out of
    # an unprivileged user's reach: the sandbox shows them through an otherwise empty
    # /root (as if installed under /opt)
    reveal = [] if unprivileged_can_run(Path(sys.executable), user) else sorted(
        {p for p in (sys.base_prefix, sys.prefix, str(ROOT)) if p.startswith("/root/")})
    reveal = [p for p in reveal if not any(p.startswith(q + "/") for q in reveal)]
    assert unprivileged_can_run(Path(sys.executable), user) or reveal, (
        f"{sys.executable} is out of {user}'s reach and not under /root")

    # the config as the README installs it, but this PostgreSQL and a free port
    params = conninfo_to_dict(pg.monitor_dsn())
    port = free_port()
    config = public_dir / "hiw_monitor.yaml"
    config.write_text(textwrap.dedent(f"""\
        listen: 127.0.0.1:{port}
        targets:
          - name: hiw-sandboxed
            host: {params.get("host", "127.0.0.1")}
            port: {params.get("port", 5432)}
            dbname: {HIW_DB}
            user: hiw_monitor
            password_env: HIW_DB_PASSWORD
            sslmode: disable
        """))
    config.chmod(0o644)
    # the env file as the README installs it (0600, root): read by "PID 1", not the agent
    env_file = tmp_path / "hiw-monitor.env"
    env_file.write_text(ENV_EXAMPLE.read_text().replace(
        "HIW_DB_PASSWORD=CHANGE_ME", f"HIW_DB_PASSWORD={MONITOR_PASSWORD}"))
    env_file.chmod(0o600)
    env = unit_environment(env_file, user)
    env["HIW_MONITOR_CONFIG"] = str(config)  # the unit's /etc/hiw-monitor/... here
    argv = shlex.split(one("ExecStart"))
    argv[0] = str(binary)
    af_max = 46  # AF_MAX of Linux 5.x/6.x; systemd refuses everything from it on
    (public_dir / "stage").mkdir()
    spec = {"uid": uid, "gid": gid, "cwd": "/", "argv": argv, "env": env,
            "reveal": reveal, "stage": str(public_dir / "stage"),
            "allow": sorted(allowed_syscalls(analyze)),
            "errno": {"EPERM": 1}[one("SystemCallErrorNumber")],
            "mdwe": one("MemoryDenyWriteExecute") == "yes",
            "families": one("RestrictAddressFamilies").split(), "af_max": af_max,
            "lock_personality": one("LockPersonality") == "yes"}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    (tmp_path / "sandbox.py").write_text(SANDBOX)
    log = tmp_path / "agent.log"
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, str(tmp_path / "sandbox.py"),
                                 str(tmp_path / "spec.json")],
                                stdout=out, stderr=subprocess.STDOUT, env={})
    url = f"http://127.0.0.1:{port}"
    try:
        expected = {c.name for c in ALL} - set(PGBOUNCER_NAMES)

        def collected() -> bool:
            assert proc.poll() is None, log.read_text()[-5000:]
            try:
                body = http_get(url + "/metrics", timeout=10).text
            except OSError:
                return False
            ran = {dict(labels)["collector"] for (name, labels), runs in samples(body).items()
                   if name == "hiw_collector_runs_total" and runs >= 1}
            return expected <= ran

        wait_for(collected, timeout=180, what="every collector ran once in the sandbox")
        body = http_get(url + "/metrics").text
        series = samples(body)
        assert series[("hiw_up", frozenset({("target", "hiw-sandboxed")}))] == 1
        down = {dict(labels)["collector"]: value for (name, labels), value in series.items()
                if name == "hiw_collector_up" and value != 1}
        assert down == {}, log.read_text()[-5000:]
        # it is the sandbox: the agent has no capability and no_new_privs
        status = Path(f"/proc/{proc.pid}/status").read_text()
        fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
        assert fields["CapEff"].strip() == fields["CapBnd"].strip() == "0" * 16
        assert fields["NoNewPrivs"].strip() == "1"
        assert int(fields["Seccomp"].strip()) == 2  # filter mode
        assert int(fields["Uid"].split()[0]) == uid

        # systemctl reload: ExecReload's signal; the agent keeps running and serving
        assert one("ExecReload").split()[1] == "-HUP"
        proc.send_signal(signal.SIGHUP)
        wait_for(lambda: '"SIGHUP"' in log.read_text(), what="the SIGHUP logged")
        assert proc.poll() is None, log.read_text()[-5000:]
        assert http_get(url + "/healthz").status == 200

        # systemctl stop: KillSignal, then SIGKILL after TimeoutStopSec
        proc.send_signal(getattr(signal, one("KillSignal")))
        started = time.monotonic()
        try:
            code = proc.wait(timeout=seconds(one("TimeoutStopSec")))
        except subprocess.TimeoutExpired:
            pytest.fail(f"not stopped within TimeoutStopSec: systemd would SIGKILL it\n"
                        f"{log.read_text()[-5000:]}")
        print(f"stopped in {time.monotonic() - started:.1f} s")
        assert code == 0, log.read_text()[-5000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
    text = log.read_text()
    assert "Traceback" not in text, text[-5000:]
    assert "Operation not permitted" not in text, text[-5000:]
    assert '"stopped"' in text
    assert MONITOR_PASSWORD not in text


@pytest.mark.usefixtures("_as_root")
def test_the_sandbox_emulation_bites(tmp_path):
    """The filters refuse what the unit forbids and an unconfined process may do: a W+X
    mapping, a netlink socket, a @resources call (so the test above does not pass
    vacuously); the agent's own ctypes call still works."""
    analyze = systemd_analyze()
    require_libseccomp()
    probe = textwrap.dedent("""\
        import ctypes, errno, mmap, os, socket, sys
        results = {}
        try:
            mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
            results["wx"] = "allowed"
        except OSError as exc:
            results["wx"] = errno.errorcode[exc.errno]
        try:
            socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0).close()
            results["netlink"] = "allowed"
        except OSError as exc:
            results["netlink"] = errno.errorcode[exc.errno]
        try:  # setpriority (@resources): lowering one's own priority needs no capability
            os.nice(1)
            results["nice"] = "allowed"
        except OSError as exc:
            results["nice"] = errno.errorcode[exc.errno]
        import ctypes.util  # what the agent does at start (memory.limit_arenas)
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        results["mallopt"] = libc.mallopt(-8, 2)
        print(results)
        """)
    (tmp_path / "probe.py").write_text(probe)
    spec = {"uid": 0, "gid": 0, "cwd": "/", "env": {"PATH": "/usr/bin:/bin"}, "reveal": [],
            "argv": [sys.executable, str(tmp_path / "probe.py")],
            "allow": sorted(allowed_syscalls(analyze)), "errno": 1, "mdwe": True,
            "families": one("RestrictAddressFamilies").split(), "af_max": 46,
            "lock_personality": True}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    (tmp_path / "sandbox.py").write_text(SANDBOX)
    result = subprocess.run([sys.executable, str(tmp_path / "sandbox.py"),
                             str(tmp_path / "spec.json")], capture_output=True, text=True,
                            timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(
        {"wx": "EPERM", "netlink": "EAFNOSUPPORT", "nice": "EPERM", "mallopt": 1})
