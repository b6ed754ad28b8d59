"""Every review check, declared once: the review collector, the health score, ``/health``,
``hiw-monitor review`` and the status page all read this table (docs/review.md is
checked against it)."""

from __future__ import annotations

from collections.abc import Mapping

from hiw_monitor.review.model import Check

_REVIEW_INDEXES = """\
CREATE INDEX CONCURRENTLY idx_classrooms_active_facilitator
    ON classrooms (facilitator_id) WHERE is_active = true;
CREATE INDEX CONCURRENTLY idx_student_sessions_active
    ON student_sessions (classroom_id, last_activity_at) WHERE is_active = true;
CREATE INDEX CONCURRENTLY idx_student_progress_analytics
    ON student_progress (student_session_id, lesson_id, completed_at);
CREATE INDEX CONCURRENTLY idx_job_queue_pending
    ON job_queue (priority, scheduled_at) WHERE status = 'pending';"""

_COMPLEXITY_TRIGGER = """\
CREATE OR REPLACE FUNCTION validate_password_complexity() RETURNS trigger AS $$
BEGIN
    IF NEW.password_hash IS NOT NULL AND length(NEW.password_hash) < 60 THEN
        RAISE EXCEPTION 'Password hash must be at least 60 characters';
    END IF;
    RETURN NEW;
END;
$$ LANGUAGE plpgsql;
CREATE TRIGGER trigger_validate_password BEFORE INSERT OR UPDATE ON facilitators
    FOR EACH ROW EXECUTE FUNCTION validate_password_complexity();"""

CHECKS: tuple[Check, ...] = (
    # --- security and compliance (evaluated from the catalog) ---
    Check("rls_enabled", "Row-level security on sensitive tables", "security", "critical",
          "security", "sql",
          "ALTER TABLE <table> ENABLE ROW LEVEL SECURITY; CREATE POLICY ... ON <table> "
          "USING (...); and, where the owner must not bypass it, ALTER TABLE <table> FORCE "
          "ROW LEVEL SECURITY;",
          needs="pg_class and pg_policy (readable by every role)",
          review="Security: Row Level Security (RLS) enabled on sensitive tables"),
    Check("student_pii_columns", "No personal data columns in student tables", "compliance",
          "critical", "security", "sql",
          "Drop or rename the column and keep students anonymous (COPPA): "
          "ALTER TABLE <table> DROP COLUMN <column>;",
          needs="pg_attribute (readable by every role)",
          review="COPPA: no PII collection from students under 13"),
    Check("retention_overdue", "Student sessions kept past the retention period", "compliance",
          "critical", "security", "sql",
          "Run the retention job now (SELECT execute_retention_policy_optimized();) and "
          "schedule it daily; it deletes in batches of 1,000 and logs each batch in audit_log.",
          needs="GRANT SELECT (created_at) ON student_sessions; "
                "GRANT SELECT (id, table_name, created_at) ON audit_log",
          review="Data retention: student sessions deleted after 2 years"),
    Check("audit_log_active", "Audit log written recently", "compliance", "high", "security",
          "sql",
          "Check the audit triggers and the application's audit writer; the newest entry "
          "should be minutes old during school hours.",
          needs="GRANT SELECT (id, created_at) ON audit_log",
          review="Comprehensive audit logging"),
    Check("ssl_enabled", "SSL on, and used by client connections", "security", "high",
          "security", "sql",
          "ALTER SYSTEM SET ssl = on; ALTER SYSTEM SET ssl_ciphers = 'HIGH:!aNULL:!MD5'; "
          "SELECT pg_reload_conf(); then require it in pg_hba.conf (hostssl lines).",
          needs="pg_monitor (pg_stat_ssl of every session)",
          review="Security enhancements: enable SSL enforcement"),
    Check("scram_passwords", "Passwords stored as SCRAM, not MD5", "security", "high",
          "security", "sql",
          "ALTER SYSTEM SET password_encryption = 'scram-sha-256'; SELECT pg_reload_conf(); "
          "then set each MD5 password again (\\password <role>) and use scram-sha-256 in "
          "pg_hba.conf.",
          needs="none for the setting; a superuser role to see stored MD5 secrets "
                "(pg_authid)"),
    Check("password_complexity_trigger", "Password complexity trigger on facilitators",
          "security", "medium", "security", "sql", _COMPLEXITY_TRIGGER,
          needs="pg_trigger (readable by every role)",
          review="Security hardening: add password complexity validation"),
    Check("superuser_sessions", "The application does not connect as a superuser", "security",
          "high", "security", "sql",
          "Give the application its own role without SUPERUSER (CREATE ROLE app LOGIN; "
          "GRANT the tables it needs) and move its connection string to it; a superuser "
          "bypasses row-level security.",
          needs="pg_monitor (every session in pg_stat_activity)",
          review="Proper role-based access control"),
    # --- backups (from the backups and wal_archiving collectors) ---
    Check("backup_freshness", "Every backup succeeded within its thresholds (RPO < 24 h)",
          "backup", "critical", "backups", "metrics",
          "See the HiwBackupStale* runbooks: find why the job stopped, run it, and watch "
          "hiw_backup_status return to healthy.",
          needs="the backups collector (SELECT on the backup tables)",
          review="Recommended SLAs: backup RPO < 24 hours"),
    Check("backup_verification", "A restore test succeeded within its period", "backup",
          "critical", "backups", "metrics",
          "Restore the newest full backup on a scratch server, record the result in "
          "backup_execution_log.verified_restore and restore_duration_seconds, and schedule "
          "it (weekly).",
          needs="the backups collector (SELECT on the backup tables)",
          review="High priority: implement automated backup restore testing"),
    Check("backup_rto", "The last verified restore fits the RTO (< 2 h)", "backup", "high",
          "backups", "metrics",
          "Make restores faster (parallel restore, a closer copy, smaller full backups) or "
          "agree a longer RTO (collectors.backups.rto_target).",
          needs="the backups collector", review="Recommended SLAs: backup RTO < 2 hours"),
    Check("wal_archiving_enabled", "WAL archiving on and working (point-in-time recovery)",
          "backup", "high", "backups", "metrics",
          "ALTER SYSTEM SET archive_mode = on; ALTER SYSTEM SET archive_command = "
          "'gzip < %p > /backup/wal/%f.gz'; then restart; watch pg_stat_archiver.",
          needs="the wal_archiving collector (pg_monitor)",
          review="Optimize WAL archiving for faster recovery"),
    # --- availability and latency ---
    Check("availability", "Database availability (SLA 99.95 %)", "performance", "critical",
          "availability", "metrics",
          "See the HiwTargetDown runbook; for the SLA over 30 days use the recording rule "
          "hiw:target_availability:ratio_30d.",
          needs="nothing (the agent's own connection)",
          review="Recommended SLAs: database availability 99.95 %"),
    Check("latency_sla", "Query latency p95 < 100 ms", "performance", "high", "latency",
          "metrics",
          "See the HiwQueryLatencySLABreached runbook: find the heaviest statements "
          "(Query performance dashboard) and add the missing indexes.",
          needs="the statements collector (pg_stat_statements)",
          review="Recommended SLAs: query response time < 100 ms (95th percentile)"),
    Check("pg_stat_statements_loaded", "pg_stat_statements preloaded and installed",
          "performance", "medium", "latency", "metrics",
          "ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements'; restart; "
          "CREATE EXTENSION pg_stat_statements;",
          needs="the statements collector",
          review="Performance monitoring setup: enable query statistics"),
    Check("expected_indexes", "The review's partial and composite indexes exist and are valid",
          "performance", "high", "latency", "metrics", _REVIEW_INDEXES,
          needs="the indexes collector (pg_index, readable by every role)",
          review="High priority: incomplete indexing"),
    Check("matview_fresh", "Analytics materialized view refreshed every 15 minutes",
          "performance", "medium", "latency", "sql",
          "SELECT refresh_analytics_summary(); and schedule it every 15 minutes in school "
          "hours; REFRESH ... CONCURRENTLY needs a unique index on the view: CREATE UNIQUE "
          "INDEX ON classroom_analytics_summary (classroom_id);",
          needs="GRANT SELECT (job_type, status, finished_at) ON job_queue (the refresh jobs)",
          review="Query optimization: materialized view, refresh every 15 minutes in "
                 "school hours"),
    # --- connections and scalability ---
    Check("connection_headroom", "Peak connection use within the 60 % baseline",
          "scalability", "high", "connections", "metrics",
          "Put PgBouncer in front (pool_mode = transaction, default_pool_size = 20) or raise "
          "max_connections with the memory to match.",
          needs="the connections collector (pg_monitor)",
          review="Baseline: connection pool utilization ~60 % during peak hours"),
    Check("connection_pooling", "Connection pooling (PgBouncer) watched by the agent",
          "scalability", "medium", "connections", "metrics",
          "Deploy PgBouncer (pool_mode = transaction, max_client_conn = 1000, "
          "default_pool_size = 20, max_db_connections = 100) and add it as a target with "
          "type: pgbouncer.",
          needs="a pgbouncer target in the agent's config",
          review="High priority: missing connection pooling"),
    Check("job_queue_backlog", "Job queue keeps up", "scalability", "medium", "connections",
          "sql",
          "Add workers or find the failing job type; the review's partial index "
          "idx_job_queue_pending keeps the poll cheap.",
          needs="GRANT SELECT (status, scheduled_at) ON job_queue"),
    Check("data_growth", "Data growth near the 500 MB/month baseline", "scalability", "low",
          "maintenance", "sql",
          "Plan storage and retention for the measured growth; check that the retention "
          "job runs (retention_overdue).",
          needs="SELECT on backup_execution_log and backup_configurations (full backup sizes)",
          review="Baseline: data growth ~500 MB/month"),
    # --- maintenance ---
    Check("autovacuum_enabled", "Autovacuum on, for every table", "maintenance", "high",
          "maintenance", "metrics",
          "ALTER SYSTEM SET autovacuum = on; SELECT pg_reload_conf(); and ALTER TABLE <table> "
          "RESET (autovacuum_enabled);",
          needs="the vacuum collector (pg_monitor)",
          review="Low priority: schedule regular VACUUM and ANALYZE"),
    Check("tables_analyzed", "Every table with rows has statistics", "maintenance", "medium",
          "maintenance", "sql",
          "ANALYZE <table>; (and check that autovacuum runs)",
          needs="pg_stat_user_tables (readable by every role)",
          review="Low priority: schedule regular VACUUM and ANALYZE"),
    Check("xid_wraparound", "Transaction ID age far from wraparound", "maintenance",
          "critical", "maintenance", "metrics",
          "See the HiwXidWraparoundRisk runbook: VACUUM (FREEZE) the oldest tables.",
          needs="the database collector (pg_monitor)"),
    Check("table_bloat", "No table badly bloated", "maintenance", "medium", "maintenance",
          "metrics",
          "See the HiwTableBloatHigh runbook: VACUUM, or pg_repack for a large table.",
          needs="the bloat collector (pg_monitor)"),
    # --- replication (only where there is some) ---
    Check("replication_healthy", "Standbys streaming, lag within 5 minutes", "backup", "high",
          "replication", "metrics",
          "See the HiwStandbyNotStreaming and HiwReplicationLagSecondsHigh runbooks.",
          needs="the replication collector (pg_monitor)",
          review="Long-term: read replicas for the analytics workload"),
)

BY_ID: Mapping[str, Check] = {c.id: c for c in CHECKS}
SQL_CHECKS = tuple(c for c in CHECKS if c.source == "sql")
METRIC_CHECKS = tuple(c for c in CHECKS if c.source == "metrics")
