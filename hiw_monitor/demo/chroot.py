"""PostgreSQL versions Debian 12 does not ship, from another Debian suite in a chroot.

PostgreSQL 13 comes from Debian ``bullseye`` and 17 from ``trixie``. Their packages need
their own suite's libraries, so each lives in a ``debootstrap --variant=minbase`` root
(never in the host's apt sources), cached outside any clone
(``/var/cache/hiw-monitor/roots/<suite>``, or ``$HIW_PG_ROOTS/<suite>``) so that a second
run on the same machine reuses it::

    python -m hiw_monitor.demo.chroot build 13 17     # as root; 1-2 minutes per root
    python -m hiw_monitor.demo.chroot status

A root is used through wrapper scripts (``<roots>/<suite>.bin/initdb``, ``pg_ctl``,
``postgres``, ``psql``, ``pgbench``...), so that :class:`~hiw_monitor.demo.cluster.Cluster`,
the tests and the benches call them exactly like the host's binaries. Each call runs in
its own private mount namespace (``unshare --mount``): ``/proc``, ``/dev`` and the temp
directories (``/tmp`` and ``$TMPDIR``, at the same paths, so data directories, sockets and
scripts under them are shared with the host) are mounted for that process tree only, then
``chroot`` switches to the root's own ``postgres`` user. The mounts are never visible on
the host and vanish with the last process of the namespace (a server started by
``pg_ctl`` keeps its own until it exits): nothing to unmount at stop, nothing left behind
when a run is killed. Needs root (chroot and mount), as CI runs.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from hiw_monitor.demo.cluster import Binaries, ClusterError

SUITES: dict[int, str] = {13: "bullseye", 17: "trixie"}
DEFAULT_ROOTS = Path("/var/cache/hiw-monitor/roots")
READY = ".hiw-ready"  # written last: a root without it is incomplete and is rebuilt
BUILD_TIMEOUT = 1800.0
_RUNNER = ".run"


def roots_dir() -> Path:
    return Path(os.environ.get("HIW_PG_ROOTS") or DEFAULT_ROOTS)


def root_of(major: int) -> Path:
    return roots_dir() / _suite(major)


def _suite(major: int) -> str:
    try:
        return SUITES[major]
    except KeyError:
        raise ClusterError(f"no Debian suite known for PostgreSQL {major} "
                           f"(known: {', '.join(map(str, SUITES))})") from None


def host_mirror() -> str:
    """The Debian mirror the host's apt already uses (``$HIW_DEBIAN_MIRROR`` wins)."""
    if os.environ.get("HIW_DEBIAN_MIRROR"):
        return os.environ["HIW_DEBIAN_MIRROR"]
    apt = Path("/etc/apt")
    candidates: list[str] = []
    for path in sorted((apt / "sources.list.d").glob("*.sources")):
        with contextlib.suppress(OSError):
            candidates += re.findall(r"(?m)^URIs:\s*(\S+)", path.read_text())
    for path in [apt / "sources.list", *sorted((apt / "sources.list.d").glob("*.list"))]:
        with contextlib.suppress(OSError):
            for line in path.read_text().splitlines():
                words = line.split()
                if words[:1] == ["deb"]:
                    candidates += [w for w in words[1:] if w.startswith("http")][:1]
    for uri in candidates:
        if "security" not in uri and "debian" in uri:
            return uri
    raise ClusterError("no Debian mirror found in /etc/apt/sources.list*; "
                       "set HIW_DEBIAN_MIRROR=http://deb.debian.org/debian")


def is_ready(major: int) -> bool:
    root = root_of(major)
    return (root / READY).is_file() and \
        (root / f"usr/lib/postgresql/{major}/bin/postgres").is_file()


def _owner(root: Path) -> tuple[int, int]:
    """uid and gid of the root's own ``postgres`` user (created by its packages)."""
    for line in (root / "etc/passwd").read_text().splitlines():
        fields = line.split(":")
        if fields[0] == "postgres":
            return int(fields[2]), int(fields[3])
    raise ClusterError(f"no postgres user in {root}/etc/passwd: rebuild the root "
                       f"(rm -rf {root}; python -m hiw_monitor.demo.chroot build)")


def missing(major: int) -> str | None:
    """Why PostgreSQL ``major`` cannot run from a root here (None: it can)."""
    if os.geteuid() != 0:
        return (f"PostgreSQL {major} runs from a Debian {_suite(major)} chroot, "
                "which needs root (chroot, mount)")
    if not is_ready(major):
        return (f"no PostgreSQL {major} root at {root_of(major)}: as root run "
                f"'python -m hiw_monitor.demo.chroot build {major}' (or bash scripts/test.sh)")
    for tool in ("unshare", "chroot", "mount"):
        if shutil.which(tool) is None:
            return f"'{tool}' is missing: apt-get install util-linux coreutils mount"
    return None


def chroot_binaries(major: int) -> Binaries | None:
    """PostgreSQL ``major`` from its Debian root, through wrappers; None when not usable."""
    if missing(major) is not None:
        return None
    root = root_of(major)
    bindir = _write_wrappers(major, root)
    return Binaries(bindir, major, f"chroot:{_suite(major)}", owner=_owner(root))


def _write_wrappers(major: int, root: Path) -> Path:
    inner = f"/usr/lib/postgresql/{major}/bin"
    uid, gid = _owner(root)
    bindir = root.parent / f"{root.name}.bin"
    bindir.mkdir(parents=True, exist_ok=True)
    runner = _runner_script(root, inner, uid, gid)
    wanted = {_RUNNER: runner}
    for program in sorted((root / inner.lstrip("/")).iterdir()):
        if program.is_file() and os.access(program, os.X_OK):
            wanted[program.name] = (
                "#!/bin/sh\n"
                f"# PostgreSQL {major} ({root.name}): {inner}/{program.name} inside {root}\n"
                f'exec "$(dirname "$0")/{_RUNNER}" {shlex.quote(program.name)} "$@"\n')
    for name, text in wanted.items():
        path = bindir / name
        with contextlib.suppress(OSError):
            if path.read_text() == text:
                continue
        fd, tmp = tempfile.mkstemp(dir=bindir, prefix=f".{name}.")
        with os.fdopen(fd, "w") as out:
            out.write(text)
        Path(tmp).chmod(0o755)
        Path(tmp).replace(path)  # atomic: a concurrent run never sees half a script
    return bindir


def _runner_script(root: Path, inner: str, uid: int, gid: int) -> str:
    q = shlex.quote
    return f"""#!/bin/sh
# Generated by hiw_monitor.demo.chroot. Usage: .run PROGRAM [ARGS...]
# Runs {inner}/PROGRAM inside {root} as its postgres user ({uid}:{gid}), in a private
# mount namespace: /proc, /dev, /tmp and $TMPDIR are mounted for this process tree only
# (never on the host) and vanish with its last process.
set -eu
root={q(str(root))}
case "${{HIW_CHROOT_STAGE:-}}" in
'')
  HIW_CHROOT_STAGE=ns HIW_CHROOT_CWD=$(pwd) \\
    exec unshare --mount --propagation private -- /bin/sh "$0" "$@" ;;
ns)
  mount -t proc proc "$root/proc"
  mount --rbind /dev "$root/dev"
  for dir in /tmp "${{TMPDIR:-/tmp}}"; do
    case "$dir" in /*) ;; *) continue ;; esac
    [ -d "$dir" ] || continue
    mountpoint -q "$root$dir" 2>/dev/null && continue
    mkdir -p "$root$dir"
    mount --rbind "$dir" "$root$dir"
  done
  program=$1; shift
  HIW_CHROOT_STAGE=in exec chroot --userspec={uid}:{gid} --groups={gid} "$root" \\
    /bin/sh -c 'cd "$HIW_CHROOT_CWD" 2>/dev/null || cd /; unset HIW_CHROOT_STAGE HIW_CHROOT_CWD
exec "$@"' sh \\
    /usr/bin/env HOME=/var/lib/postgresql USER=postgres LOGNAME=postgres LC_ALL=C \\
    PATH={q(inner)}:/usr/bin:/bin {q(inner)}/"$program" "$@" ;;
*)
  echo "hiw-chroot: unexpected stage $HIW_CHROOT_STAGE" >&2; exit 2 ;;
esac
"""


# ------------------------------------------------------------------ building a root

@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """One builder per root across processes (two CI runs on one machine)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _in_namespace(root: Path, argv: list[str], log: Path) -> None:
    """Run ``argv`` as root inside ``root`` with /proc and /dev in a private namespace."""
    script = ('set -eu; mount -t proc proc "$1/proc"; mount --rbind /dev "$1/dev"; '
              'r=$1; shift; exec chroot "$r" /usr/bin/env -i '
              'PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive LC_ALL=C "$@"')
    _logged(["unshare", "--mount", "--propagation", "private", "--", "/bin/sh", "-c", script,
             "sh", str(root), *argv], log)


def _logged(argv: list[str], log: Path) -> None:
    with log.open("a") as out:
        out.write(f"\n$ {shlex.join(argv)}\n")
        out.flush()
        result = subprocess.run(["nice", "-n", "10", *argv], stdout=out, stderr=subprocess.STDOUT,
                                timeout=BUILD_TIMEOUT, check=False)
    if result.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-20:])
        raise ClusterError(f"{argv[0]} failed ({result.returncode}), see {log}:\n{tail}")


def build_root(major: int, mirror: str | None = None) -> Path:
    """Make (or reuse) the root for PostgreSQL ``major``; idempotent and safe to race."""
    if os.geteuid() != 0:
        raise ClusterError("building a Debian root needs root (debootstrap, chroot, mount)")
    suite, root = _suite(major), root_of(major)
    with _locked(root.parent / f".{suite}.lock"):
        if is_ready(major):
            return root
        if shutil.which("debootstrap") is None:
            raise ClusterError("debootstrap is missing: apt-get install debootstrap")
        mirror = mirror or host_mirror()
        log = root.parent / f"{suite}.build.log"
        log.write_text(f"building PostgreSQL {major} from Debian {suite} ({mirror})\n")
        # Holding the lock, any other work directory is a crashed build's: remove it.
        # No mount can be left in one (every mount is made in a private namespace).
        for stale in [*root.parent.glob(f".{suite}.building-*"), root]:
            if stale.exists():
                subprocess.run(["rm", "-rf", "--one-file-system", str(stale)], check=True,
                               timeout=600)
        work = root.parent / f".{suite}.building-{os.getpid()}"
        # debootstrap mounts /proc and /sys into the root while it works: in a private
        # namespace, a killed build leaves no mount on the host.
        _logged(["unshare", "--mount", "--propagation", "private", "--", "debootstrap",
                 "--variant=minbase", suite, str(work), mirror], log)
        policy = work / "usr/sbin/policy-rc.d"  # never start a service inside the root
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)
        _in_namespace(work, ["apt-get", "update", "-q"], log)
        _in_namespace(work, ["apt-get", "install", "-y", "-q", "--no-install-recommends",
                             "postgresql-common"], log)
        conf = work / "etc/postgresql-common/createcluster.conf"
        conf.write_text(re.sub(r"(?m)^#?\s*create_main_cluster.*$",
                               "create_main_cluster = false", conf.read_text()))
        # contrib (pg_stat_statements, pgstattuple) is part of postgresql-N since 10
        _in_namespace(work, ["apt-get", "install", "-y", "-q", "--no-install-recommends",
                             f"postgresql-{major}", f"postgresql-client-{major}"], log)
        _in_namespace(work, ["apt-get", "clean"], log)
        lib = work / f"usr/lib/postgresql/{major}/lib"
        for needed in ("pg_stat_statements.so", "pgstattuple.so"):
            if not (lib / needed).is_file():
                raise ClusterError(f"{needed} missing in {lib} after install; see {log}")
        version = subprocess.run(
            ["chroot", str(work), f"/usr/lib/postgresql/{major}/bin/postgres", "--version"],
            capture_output=True, text=True, check=True, timeout=60).stdout.strip()
        (work / READY).write_text(f"{version}\nsuite {suite}\nmirror {mirror}\n")
        work.rename(root)
        return root


def status() -> list[str]:
    lines = []
    for major, suite in SUITES.items():
        root = root_of(major)
        why = missing(major)
        stamp = (root / READY).read_text().splitlines()[0] if is_ready(major) else "absent"
        lines.append(f"PostgreSQL {major} ({suite}) at {root}: {stamp}"
                     + (f" -- {why}" if why else ""))
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hiw_monitor.demo.chroot",
                                     description="Debian roots for PostgreSQL 13 and 17")
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build", help="build (or reuse) the roots of these versions")
    build.add_argument("majors", nargs="*", type=int, default=sorted(SUITES))
    sub.add_parser("status", help="which roots exist")
    args = parser.parse_args(argv)
    try:
        if args.command == "build":
            for major in args.majors:
                print(f"PostgreSQL {major}: {build_root(major)}", file=sys.stderr)
        for line in status():
            print(line)
    except ClusterError as exc:
        print(f"hiw-monitor chroot: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
