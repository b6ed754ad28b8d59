#!/bin/sh
# Run once by the postgres image's entrypoint, after 10-hiw-schema.sql created the
# hiw_monitor role: give it its password (from HIW_MONITOR_PASSWORD, set from .env),
# stored as SCRAM. psql's :'pw' quotes it; it never reaches a command line or a log.
set -eu
: "${HIW_MONITOR_PASSWORD:?HIW_MONITOR_PASSWORD is not set}"
psql -v ON_ERROR_STOP=1 --no-psqlrc --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
  --set=pw="$HIW_MONITOR_PASSWORD" <<'SQL'
SET password_encryption = 'scram-sha-256';
ALTER ROLE hiw_monitor PASSWORD :'pw';
SQL
