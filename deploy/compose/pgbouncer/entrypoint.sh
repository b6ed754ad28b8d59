#!/bin/sh
# Write PgBouncer's auth_file (readable by this user only, in the container's own
# /run/hiw-pgbouncer) from HIW_MONITOR_PASSWORD, then run PgBouncer in the foreground
# (its PID is the container's: SIGTERM stops it). The console user hiw_monitor is a
# stats user: SHOW only.
set -eu
: "${HIW_MONITOR_PASSWORD:?HIW_MONITOR_PASSWORD is not set}"
umask 077
escaped=$(printf '%s' "$HIW_MONITOR_PASSWORD" | sed 's/"/""/g')
printf '"hiw_monitor" "%s"\n' "$escaped" > /run/hiw-pgbouncer/userlist.txt
exec "$@"
