#!/bin/sh
# Write PgBouncer's auth_file (readable by this user only, in the container's own
# /run/hiw-pgbouncer) from the environment, then run PgBouncer in the foreground (its PID
# is the container's: SIGTERM stops it). hiw_monitor (HIW_MONITOR_PASSWORD) is a stats
# user of the console: SHOW only; postgres (POSTGRES_PASSWORD, optional) is the demo
# workload's user for the database behind PgBouncer.
set -eu
: "${HIW_MONITOR_PASSWORD:?HIW_MONITOR_PASSWORD is not set}"
umask 077
entry() {  # "user" "password", with a " in the password doubled
  printf '"%s" "%s"\n' "$1" "$(printf '%s' "$2" | sed 's/"/""/g')"
}
{
  entry hiw_monitor "$HIW_MONITOR_PASSWORD"
  if [ -n "${POSTGRES_PASSWORD:-}" ]; then entry postgres "$POSTGRES_PASSWORD"; fi
} > /run/hiw-pgbouncer/userlist.txt
exec "$@"
