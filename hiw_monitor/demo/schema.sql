-- =============================================================================
-- Heroes in Waiting -- demo database for hiw-monitor
-- =============================================================================
--
-- An anti-bullying curriculum app for children.  The app is COPPA-regulated:
-- there is NO personal data about students anywhere in this schema.  Students
-- are anonymous sessions (a random token plus an avatar key chosen from a fixed
-- list); facilitators (adults) have an email and a password hash.
--
-- Load once, as a superuser, into a FRESH, EMPTY database:
--
--     psql -v ON_ERROR_STOP=1 -f schema.sql
--
-- Works on PostgreSQL 15 and later (tested on 15 and 18).  The file is plain
-- SQL (no psql meta-commands, no CREATE INDEX CONCURRENTLY) so it can also be
-- sent as one multi-statement string by a driver.
--
-- Random data is deterministic: setseed(0.42) is called once before the seed
-- data, and every random() call after it runs in a fixed order.  UUIDs come
-- from gen_random_uuid() (built in since PG 13) and are NOT deterministic;
-- nothing below depends on their values or their order.
--
-- All timestamps are relative to now(), so the backup health the demo shows
-- (healthy / running / warning / critical / never succeeded) is the same
-- whenever the file is loaded.
-- =============================================================================


-- -----------------------------------------------------------------------------
-- 1. Extensions
-- -----------------------------------------------------------------------------
-- pg_stat_statements needs shared_preload_libraries=pg_stat_statements to
-- collect anything; CREATE EXTENSION itself works without it.
CREATE EXTENSION IF NOT EXISTS pg_stat_statements;
CREATE EXTENSION IF NOT EXISTS pgstattuple;


-- -----------------------------------------------------------------------------
-- 2. Tables
-- -----------------------------------------------------------------------------

-- Adults who run the curriculum in a classroom.
CREATE TABLE public.facilitators (
    id             uuid         PRIMARY KEY DEFAULT gen_random_uuid(),
    email          varchar(255) NOT NULL UNIQUE,
    password_hash  varchar(255) NOT NULL,
    display_name   varchar(100) NOT NULL,
    is_active      boolean      NOT NULL DEFAULT true,
    created_at     timestamptz  NOT NULL DEFAULT now(),
    last_login_at  timestamptz
);

CREATE TABLE public.classrooms (
    id              uuid         PRIMARY KEY DEFAULT gen_random_uuid(),
    facilitator_id  uuid         NOT NULL REFERENCES public.facilitators (id) ON DELETE CASCADE,
    classroom_code  varchar(8)   NOT NULL UNIQUE
                    CHECK (classroom_code ~ '^[A-Z0-9]{8}$'),
    name            varchar(100) NOT NULL,
    grade_level     integer      CHECK (grade_level BETWEEN 0 AND 12),
    is_active       boolean      NOT NULL DEFAULT true,
    created_at      timestamptz  NOT NULL DEFAULT now()
);

CREATE TABLE public.lessons (
    id                serial       PRIMARY KEY,
    lesson_number     integer      NOT NULL UNIQUE CHECK (lesson_number > 0),
    title             varchar(200) NOT NULL,
    duration_minutes  integer      NOT NULL CHECK (duration_minutes > 0),
    is_published      boolean      NOT NULL DEFAULT false,
    created_at        timestamptz  NOT NULL DEFAULT now()
);

-- Anonymous student sessions: no name, no email, no birth date.  avatar_key
-- is one of a fixed set of cartoon avatars (e.g. 'blue-fox').
CREATE TABLE public.student_sessions (
    id                uuid         PRIMARY KEY DEFAULT gen_random_uuid(),
    classroom_id      uuid         NOT NULL REFERENCES public.classrooms (id) ON DELETE CASCADE,
    session_token     varchar(255) NOT NULL UNIQUE,
    avatar_key        varchar(50)  NOT NULL,
    is_active         boolean      NOT NULL DEFAULT true,
    created_at        timestamptz  NOT NULL DEFAULT now(),
    last_activity_at  timestamptz
);

CREATE TABLE public.student_progress (
    id                     bigserial    PRIMARY KEY,
    student_session_id     uuid         NOT NULL REFERENCES public.student_sessions (id) ON DELETE CASCADE,
    lesson_id              integer      NOT NULL REFERENCES public.lessons (id),
    completion_percentage  numeric(5,2) NOT NULL DEFAULT 0
                           CHECK (completion_percentage BETWEEN 0 AND 100),
    completed_at           timestamptz,
    created_at             timestamptz  NOT NULL DEFAULT now(),
    updated_at             timestamptz  NOT NULL DEFAULT now(),
    UNIQUE (student_session_id, lesson_id)
);

-- Background jobs.  payload never carries personal data (ids and counters only).
CREATE TABLE public.job_queue (
    id            bigserial   PRIMARY KEY,
    job_type      text        NOT NULL,
    priority      integer     NOT NULL DEFAULT 0,
    status        text        NOT NULL DEFAULT 'pending'
                  CHECK (status IN ('pending', 'running', 'done', 'failed')),
    scheduled_at  timestamptz NOT NULL DEFAULT now(),
    attempts      integer     NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    payload       jsonb       NOT NULL DEFAULT '{}'::jsonb,
    last_error    text,
    finished_at   timestamptz,
    created_at    timestamptz NOT NULL DEFAULT now()
);

-- Change log.  new_values holds flags and counters only, never emails or tokens.
CREATE TABLE public.audit_log (
    id          bigserial   PRIMARY KEY,
    table_name  text        NOT NULL,
    action      text        NOT NULL CHECK (action IN ('INSERT', 'UPDATE', 'DELETE')),
    new_values  jsonb,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- What backups exist, and their history (read by the hiw_monitor role).
CREATE TABLE public.backup_configurations (
    id              serial      PRIMARY KEY,
    backup_name     text        NOT NULL UNIQUE,
    backup_type     text        NOT NULL CHECK (backup_type IN ('full', 'incremental', 'wal')),
    schedule        text        NOT NULL,
    retention_days  integer     NOT NULL CHECK (retention_days > 0),
    is_enabled      boolean     NOT NULL DEFAULT true,
    created_at      timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE public.backup_execution_log (
    id                        bigserial   PRIMARY KEY,
    backup_config_id          integer     NOT NULL REFERENCES public.backup_configurations (id),
    status                    text        NOT NULL CHECK (status IN ('running', 'completed', 'failed')),
    start_time                timestamptz NOT NULL,
    end_time                  timestamptz,
    backup_size_bytes         bigint      CHECK (backup_size_bytes >= 0),
    error_message             text,
    verified_restore          boolean,     -- result of a restore test; NULL = not tested
    restore_duration_seconds  numeric     CHECK (restore_duration_seconds >= 0),
    created_at                timestamptz NOT NULL DEFAULT now(),
    CHECK (end_time IS NULL OR end_time >= start_time),
    CHECK (status = 'running' OR end_time IS NOT NULL)
);


-- -----------------------------------------------------------------------------
-- 3. Indexes
-- -----------------------------------------------------------------------------
-- Ordinary indexes on the foreign keys.
CREATE INDEX idx_classrooms_facilitator_id           ON public.classrooms (facilitator_id);
CREATE INDEX idx_student_sessions_classroom_id       ON public.student_sessions (classroom_id);
CREATE INDEX idx_student_progress_student_session_id ON public.student_progress (student_session_id);
CREATE INDEX idx_backup_execution_log_config_end     ON public.backup_execution_log (backup_config_id, end_time);

-- The DBA review recommends four partial indexes:
--   idx_classrooms_active_facilitator, idx_student_sessions_active,
--   idx_student_progress_analytics, idx_job_queue_pending.
-- The monitor checks whether they are present.  ON PURPOSE the demo creates
-- exactly ONE of them (below), so it shows one present and three absent.
-- Do not add the other three here.
CREATE INDEX idx_classrooms_active_facilitator
    ON public.classrooms (facilitator_id)
    WHERE is_active = true;


-- -----------------------------------------------------------------------------
-- 4. Seed data (deterministic: setseed before any random())
-- -----------------------------------------------------------------------------
-- setseed() seeds this backend's random(); a DO block keeps the output quiet.
DO $$ BEGIN PERFORM setseed(0.42); END $$;

-- Helper: a random string of length n over the given alphabet.  It lives in
-- pg_temp, so it disappears with the loading session.
CREATE FUNCTION pg_temp.rand_str(n integer, alphabet text)
RETURNS text
LANGUAGE sql VOLATILE
AS $$
    SELECT string_agg(substr(alphabet, 1 + floor(random() * length(alphabet))::int, 1), '')
    FROM generate_series(1, n)
$$;

-- Helper: a random element of an array.
CREATE FUNCTION pg_temp.pick(items text[])
RETURNS text
LANGUAGE sql VOLATILE
AS $$
    SELECT items[1 + floor(random() * array_length(items, 1))::int]
$$;

-- 4a. Facilitators: 50, facilitator001@example.org .. facilitator050@example.org.
-- password_hash looks like bcrypt ($2b$12$ + 53 chars = 60 chars) but is fake.
INSERT INTO public.facilitators (email, password_hash, display_name, is_active, created_at, last_login_at)
SELECT format('facilitator%s@example.org', lpad(g::text, 3, '0')),
       '$2b$12$' || pg_temp.rand_str(53, './ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789'),
       format('Facilitator %s', lpad(g::text, 3, '0')),
       g % 10 <> 0,                                                  -- 5 inactive
       now() - interval '400 days' + g * interval '5 days',
       CASE WHEN g % 17 = 0 THEN NULL                                -- never logged in
            ELSE now() - random() * interval '30 days' END
FROM generate_series(1, 50) AS g
ORDER BY g;

-- Ordinal -> uuid maps, so the seed data never depends on uuid order.
CREATE TEMP TABLE tmp_facilitator AS
SELECT row_number() OVER (ORDER BY email)::int AS n, id
FROM public.facilitators;

-- 4b. Classrooms: 200, 8-char uppercase codes (no 0/O/1/I), 20 inactive.
INSERT INTO public.classrooms (facilitator_id, classroom_code, name, grade_level, is_active, created_at)
SELECT f.id, s.code, s.name, s.grade, s.is_active, s.created_at
FROM (
    SELECT g,
           1 + floor(random() * 50)::int                          AS fac_n,
           pg_temp.rand_str(8, 'ABCDEFGHJKLMNPQRSTUVWXYZ23456789') AS code,
           3 + floor(random() * 4)::int                            AS grade,
           pg_temp.pick(ARRAY['Kindness Crew', 'Upstanders', 'Helping Hands', 'Brave Hearts',
                              'Friendship Club', 'Team Empathy', 'Courage Corner', 'Peacemakers'])
               || format(' (Room %s)', 100 + g)                    AS name,
           g % 10 <> 0                                             AS is_active,
           now() - interval '365 days' + random() * interval '240 days' AS created_at
    FROM generate_series(1, 200) AS g
    OFFSET 0                      -- optimisation fence: evaluate random() once per row
) AS s
JOIN tmp_facilitator AS f ON f.n = s.fac_n
ORDER BY s.g;

CREATE TEMP TABLE tmp_classroom AS
SELECT row_number() OVER (ORDER BY classroom_code)::int AS n, id, created_at
FROM public.classrooms;

-- 4c. Lessons: the 12-lesson curriculum, all published.
INSERT INTO public.lessons (lesson_number, title, duration_minutes, is_published)
VALUES
    ( 1, 'What Is a Hero? Kindness Every Day',                 30, true),
    ( 2, 'Understanding Feelings: Naming Our Emotions',        35, true),
    ( 3, 'Walking in Someone Else''s Shoes: Empathy',          35, true),
    ( 4, 'What Bullying Is (and What It Is Not)',              40, true),
    ( 5, 'Words Matter: Kind Words and Hurtful Words',         30, true),
    ( 6, 'From Bystander to Upstander',                        40, true),
    ( 7, 'Standing Up Safely: Getting Help from an Adult',     40, true),
    ( 8, 'Including Everyone: No One Sits Alone',              35, true),
    ( 9, 'Kindness Online: Being a Good Digital Citizen',      45, true),
    (10, 'Solving Conflicts Peacefully',                       40, true),
    (11, 'Building a Kind Classroom Community',                35, true),
    (12, 'Heroes in Waiting: Our Kindness Pledge',             30, true);

-- 4d. Student sessions: 5000 anonymous sessions, exactly 500 (10%) inactive.
INSERT INTO public.student_sessions (classroom_id, session_token, avatar_key, is_active, created_at, last_activity_at)
SELECT c.id, s.token, s.avatar, s.is_active, s.created_at,
       s.created_at + s.activity_frac * (now() - s.created_at)
FROM (
    SELECT g,
           1 + floor(random() * 200)::int AS cls_n,
           pg_temp.rand_str(43, 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_') AS token,
           pg_temp.pick(ARRAY['red', 'blue', 'green', 'purple', 'orange', 'teal'])
               || '-' ||
           pg_temp.pick(ARRAY['fox', 'owl', 'lion', 'panda', 'turtle', 'dolphin', 'eagle', 'bear'])
                                           AS avatar,
           g % 10 <> 0                     AS is_active,
           now() - random() * interval '90 days' AS created_at,
           random()                        AS activity_frac
    FROM generate_series(1, 5000) AS g
    OFFSET 0
) AS s
JOIN tmp_classroom AS c ON c.n = s.cls_n
ORDER BY s.g;

-- 4e. Student progress: each session has worked through lessons 1..k
-- (k uniform in 0..12, mean 6 -> about 30000 rows).  Lessons before k are
-- complete; lesson k is complete or still in progress.
INSERT INTO public.student_progress (student_session_id, lesson_id, completion_percentage,
                                     completed_at, created_at, updated_at)
SELECT p.session_id, l.id, p.pct,
       CASE WHEN p.pct = 100 THEN p.ts END,
       p.started, p.ts
FROM (
    SELECT s.id AS session_id, gs.lesson_no,
           CASE WHEN gs.lesson_no < s.k OR random() < 0.3 THEN 100.00
                ELSE round((5 + random() * 90)::numeric, 2) END              AS pct,
           s.created_at + (gs.lesson_no - 1)::float8 / s.k * s.span          AS started,
           s.created_at + gs.lesson_no::float8 / s.k * s.span                AS ts
    FROM (
        SELECT ss.id, ss.created_at,
               coalesce(ss.last_activity_at, ss.created_at) - ss.created_at AS span,
               floor(random() * 13)::int                                    AS k
        FROM (SELECT * FROM public.student_sessions ORDER BY session_token) AS ss
        OFFSET 0
    ) AS s
    CROSS JOIN LATERAL generate_series(1, s.k) AS gs(lesson_no)
    WHERE s.k > 0
    OFFSET 0
) AS p
JOIN public.lessons AS l ON l.lesson_number = p.lesson_no;

-- 4f. Job queue: 2000 jobs -- exactly 100 pending, 10 running, 40 failed, 1850 done.
INSERT INTO public.job_queue (job_type, priority, status, scheduled_at, attempts, payload,
                              last_error, finished_at, created_at)
SELECT s.job_type, s.priority, s.status, s.scheduled_at,
       CASE s.status WHEN 'pending' THEN 0 WHEN 'failed' THEN 3 ELSE 1 END,
       jsonb_build_object('batch', s.g, 'job_version', 2,
                          'items', 1 + floor(s.r * 500)::int),
       CASE WHEN s.status = 'failed' THEN 'statement timeout after 30000 ms' END,
       CASE WHEN s.status IN ('done', 'failed')
            THEN s.scheduled_at + (1 + s.r * 120) * interval '1 second' END,
       s.scheduled_at - interval '1 minute'
FROM (
    SELECT g,
           pg_temp.pick(ARRAY['refresh_analytics_summary', 'expire_student_sessions',
                              'send_facilitator_digest', 'generate_classroom_report',
                              'rotate_session_tokens', 'vacuum_audit_log']) AS job_type,
           floor(random() * 10)::int AS priority,
           CASE WHEN g <= 100  THEN 'pending'
                WHEN g <= 110  THEN 'running'
                WHEN g <= 150  THEN 'failed'
                ELSE 'done' END      AS status,
           CASE WHEN g <= 100  THEN now() - interval '10 minutes' + random() * interval '2 hours'
                WHEN g <= 110  THEN now() - random() * interval '5 minutes'
                ELSE now() - random() * interval '14 days' END AS scheduled_at,
           random() AS r
    FROM generate_series(1, 2000) AS g
    OFFSET 0
) AS s
ORDER BY s.g;

-- 4g. Audit log: 5000 entries over the last 30 days, flags and counters only.
INSERT INTO public.audit_log (table_name, action, new_values, created_at)
SELECT s.table_name,
       s.action,
       CASE WHEN s.action = 'DELETE' THEN NULL
            WHEN s.table_name = 'student_progress'
                THEN jsonb_build_object('lesson_id', 1 + floor(s.r * 12)::int,
                                        'completion_percentage', round((s.r * 100)::numeric, 2))
            WHEN s.table_name = 'classrooms'
                THEN jsonb_build_object('is_active', s.r > 0.1, 'grade_level', 3 + floor(s.r * 4)::int)
            WHEN s.table_name = 'facilitators'
                THEN jsonb_build_object('is_active', s.r > 0.05)
            ELSE jsonb_build_object('is_active', s.r > 0.1)
       END,
       s.created_at
FROM (
    SELECT g,
           CASE WHEN x < 0.60 THEN 'student_progress'
                WHEN x < 0.85 THEN 'student_sessions'
                WHEN x < 0.95 THEN 'classrooms'
                ELSE 'facilitators' END AS table_name,
           CASE WHEN y < 0.30 THEN 'INSERT'
                WHEN y < 0.97 THEN 'UPDATE'
                ELSE 'DELETE' END       AS action,
           r,
           now() - interval '30 days' + g * interval '30 days' / 5000
               - random() * interval '5 minutes' AS created_at
    FROM (SELECT g, random() AS x, random() AS y, random() AS r
          FROM generate_series(1, 5000) AS g
          OFFSET 0) AS t
    OFFSET 0
) AS s
ORDER BY s.g;


-- 4h. What the review finds (hiw-monitor's review checks), planted on purpose.
-- No random() here, so everything above stays deterministic.
--   retention_overdue: 37 anonymous sessions created ~2.5 years ago, past the 2-year
--   retention period; the retention job last logged a batch 9 days ago.
INSERT INTO public.student_sessions (classroom_id, session_token, avatar_key, is_active,
                                     created_at, last_activity_at)
SELECT (SELECT id FROM public.classrooms ORDER BY classroom_code LIMIT 1),
       format('retention-overdue-%s', lpad(g::text, 4, '0')), 'teal-owl', false,
       now() - interval '900 days' - g * interval '1 day',
       now() - interval '880 days' - g * interval '1 day'
FROM generate_series(1, 37) AS g
ORDER BY g;

INSERT INTO public.audit_log (table_name, action, new_values, created_at)
VALUES ('retention_policy', 'DELETE',
        '{"records_processed": 1000, "table": "student_sessions"}'::jsonb,
        now() - interval '9 days');

--   matview_fresh: the analytics refresh job last finished ~3 hours ago (the review
--   wants every 15 minutes in school hours).
UPDATE public.job_queue
SET scheduled_at = scheduled_at - interval '3 hours',
    finished_at  = finished_at - interval '3 hours',
    created_at   = created_at - interval '3 hours'
WHERE job_type = 'refresh_analytics_summary' AND status IN ('done', 'failed');

--   rls_enabled: classrooms (a sensitive table: names and facilitators) has no RLS;
--   see section 7.


-- -----------------------------------------------------------------------------
-- 5. Backups: configurations and ~14 days of history, relative to now()
-- -----------------------------------------------------------------------------
-- Intended state at load time (last *completed* end_time, age):
--   nightly_full        ~6 h    healthy  (< 24 h); one failed run 3 days ago
--   hourly_incremental  ~40 min healthy; plus one run 'running' since 5 min
--   weekly_archive      ~30 h   warning  (24 h .. 48 h)
--   wal_archive         ~72 h   critical (> 48 h)
--   offsite_copy        never   3 failed runs in the last 2 days
INSERT INTO public.backup_configurations (backup_name, backup_type, schedule, retention_days, is_enabled, created_at)
VALUES
    ('nightly_full',       'full',        'daily 02:00',      14, true, now() - interval '180 days'),
    ('hourly_incremental', 'incremental', 'hourly :20',        3, true, now() - interval '180 days'),
    ('weekly_archive',     'full',        'weekly sun 03:00', 90, true, now() - interval '180 days'),
    ('wal_archive',        'wal',         'continuous',        7, true, now() - interval '180 days'),
    ('offsite_copy',       'full',        'daily 05:00',      30, true, now() - interval '10 days');

-- 5a. nightly_full: one run a day for 14 days, ~15 min each, 2-3 GB.
--     Day 0 ends ~6 h ago and was restore-tested; day 3 failed.
INSERT INTO public.backup_execution_log (backup_config_id, status, start_time, end_time,
                                         backup_size_bytes, error_message, verified_restore,
                                         restore_duration_seconds, created_at)
SELECT c.id,
       CASE WHEN r.d = 3 THEN 'failed' ELSE 'completed' END,
       r.start_time,
       CASE WHEN r.d = 3 THEN r.start_time + interval '4 minutes 12 seconds'
            ELSE r.start_time + r.duration END,
       CASE WHEN r.d = 3 THEN NULL
            ELSE (2150000000 + (13 - r.d) * 45000000 + r.jitter * 200000000)::bigint END,
       CASE WHEN r.d = 3 THEN 'pg_basebackup: error: could not write to file "base.tar.gz": No space left on device' END,
       CASE WHEN r.d IN (0, 7) THEN true END,  -- NULL: no restore test for that run
       CASE WHEN r.d = 0 THEN round((2940 + r.jitter * 120)::numeric, 1)
            WHEN r.d = 7 THEN round((2880 + r.jitter * 120)::numeric, 1) END,
       r.start_time
FROM public.backup_configurations AS c
CROSS JOIN (
    SELECT d, jitter,
           now() - interval '6 hours' - d * interval '1 day' - duration
               - jitter * interval '3 minutes' AS start_time,
           duration
    FROM (SELECT d, random() AS jitter,
                 interval '13 minutes' + random() * interval '4 minutes' AS duration
          FROM generate_series(0, 13) AS d
          OFFSET 0) AS t
) AS r
WHERE c.backup_name = 'nightly_full'
ORDER BY r.d DESC;

-- 5b. hourly_incremental: one run an hour for 14 days (336 runs), ~2 min,
--     50-200 MB, the last ending ~40 min ago; plus one still running.
INSERT INTO public.backup_execution_log (backup_config_id, status, start_time, end_time,
                                         backup_size_bytes, error_message, verified_restore,
                                         restore_duration_seconds, created_at)
SELECT c.id, 'completed', r.end_time - r.duration, r.end_time,
       (50000000 + r.size_frac * 150000000)::bigint, NULL, NULL, NULL,
       r.end_time - r.duration
FROM public.backup_configurations AS c
CROSS JOIN (
    SELECT h,
           now() - interval '40 minutes' - h * interval '1 hour'
               - CASE WHEN h = 0 THEN interval '0' ELSE random() * interval '90 seconds' END AS end_time,
           interval '90 seconds' + random() * interval '60 seconds' AS duration,
           random() AS size_frac
    FROM generate_series(0, 335) AS h
    OFFSET 0
) AS r
WHERE c.backup_name = 'hourly_incremental'
ORDER BY r.h DESC;

INSERT INTO public.backup_execution_log (backup_config_id, status, start_time, end_time,
                                         backup_size_bytes, error_message, verified_restore,
                                         restore_duration_seconds, created_at)
SELECT id, 'running', now() - interval '5 minutes', NULL, NULL, NULL, NULL, NULL,
       now() - interval '5 minutes'
FROM public.backup_configurations
WHERE backup_name = 'hourly_incremental';

-- 5c. weekly_archive: weekly, ~25 min, ~3 GB; the last ended ~30 h ago.
INSERT INTO public.backup_execution_log (backup_config_id, status, start_time, end_time,
                                         backup_size_bytes, error_message, verified_restore,
                                         restore_duration_seconds, created_at)
SELECT c.id, 'completed', r.end_time - r.duration, r.end_time,
       (2800000000 + r.size_frac * 400000000)::bigint, NULL, NULL, NULL,
       r.end_time - r.duration
FROM public.backup_configurations AS c
CROSS JOIN (
    SELECT w,
           now() - interval '30 hours' - w * interval '7 days' AS end_time,
           interval '22 minutes' + random() * interval '6 minutes' AS duration,
           random() AS size_frac
    FROM generate_series(0, 2) AS w
    OFFSET 0
) AS r
WHERE c.backup_name = 'weekly_archive'
ORDER BY r.w DESC;

-- 5d. wal_archive: configured as continuous, but the log shows only weekly-ish
--     sweeps and nothing since ~72 h ago (the archiver is stuck).
INSERT INTO public.backup_execution_log (backup_config_id, status, start_time, end_time,
                                         backup_size_bytes, error_message, verified_restore,
                                         restore_duration_seconds, created_at)
SELECT c.id, 'completed', r.end_time - r.duration, r.end_time,
       (300000000 + r.size_frac * 500000000)::bigint, NULL, NULL, NULL,
       r.end_time - r.duration
FROM public.backup_configurations AS c
CROSS JOIN (
    SELECT w,
           now() - interval '72 hours' - w * interval '7 days'
               - CASE WHEN w = 0 THEN interval '0' ELSE random() * interval '6 hours' END AS end_time,
           interval '4 minutes' + random() * interval '3 minutes' AS duration,
           random() AS size_frac
    FROM generate_series(0, 1) AS w
    OFFSET 0
) AS r
WHERE c.backup_name = 'wal_archive'
ORDER BY r.w DESC;

-- 5e. offsite_copy: set up 10 days ago and has NEVER succeeded.
INSERT INTO public.backup_execution_log (backup_config_id, status, start_time, end_time,
                                         backup_size_bytes, error_message, verified_restore,
                                         restore_duration_seconds, created_at)
SELECT c.id, 'failed', r.start_time, r.start_time + r.duration, NULL, r.error_message, NULL, NULL,
       r.start_time
FROM public.backup_configurations AS c
CROSS JOIN (
    VALUES
        (now() - interval '44 hours', interval '61 seconds',
         'rsync: failed to connect to offsite-backup.example.net (203.0.113.10): Connection timed out (110)'),
        (now() - interval '20 hours', interval '2 minutes 37 seconds',
         'upload failed: destination bucket returned 403 AccessDenied'),
        (now() - interval '2 hours',  interval '2 minutes 41 seconds',
         'upload failed: destination bucket returned 403 AccessDenied')
) AS r (start_time, duration, error_message)
WHERE c.backup_name = 'offsite_copy'
ORDER BY r.start_time;


-- -----------------------------------------------------------------------------
-- 6. Analytics materialized view (as in the DBA review)
-- -----------------------------------------------------------------------------
CREATE MATERIALIZED VIEW public.classroom_analytics_summary AS
SELECT
    c.id as classroom_id,
    c.name,
    COUNT(DISTINCT ss.id) as active_students,
    COUNT(DISTINCT sp.lesson_id) as lessons_completed,
    AVG(sp.completion_percentage) as avg_completion
FROM classrooms c
LEFT JOIN student_sessions ss ON c.id = ss.classroom_id AND ss.is_active = true
LEFT JOIN student_progress sp ON ss.id = sp.student_session_id
WHERE c.is_active = true
GROUP BY c.id, c.name;

-- REFRESH MATERIALIZED VIEW CONCURRENTLY needs a unique index on the view.
CREATE UNIQUE INDEX idx_classroom_analytics_summary_classroom_id
    ON public.classroom_analytics_summary (classroom_id);

CREATE OR REPLACE FUNCTION public.refresh_analytics_summary()
RETURNS void AS $$
BEGIN
    REFRESH MATERIALIZED VIEW CONCURRENTLY classroom_analytics_summary;
END;
$$ LANGUAGE plpgsql;


-- -----------------------------------------------------------------------------
-- 7. Row Level Security
-- -----------------------------------------------------------------------------
-- The app sets app.facilitator_id per connection/transaction; a facilitator
-- then sees only their own row, classrooms' sessions and progress.  When the
-- setting is absent (NULL) or reset (''), the policies do not filter, so
-- maintenance connections keep working.  The table owner bypasses RLS anyway
-- (no FORCE ROW LEVEL SECURITY), and superusers always do.  ON PURPOSE classrooms
-- has no RLS, so the review's rls_enabled check shows a failure in the demo.
ALTER TABLE public.facilitators     ENABLE ROW LEVEL SECURITY;
ALTER TABLE public.student_sessions ENABLE ROW LEVEL SECURITY;
ALTER TABLE public.student_progress ENABLE ROW LEVEL SECURITY;

CREATE POLICY facilitators_own_row ON public.facilitators
    USING (
        NULLIF(current_setting('app.facilitator_id', true), '') IS NULL
        OR id = NULLIF(current_setting('app.facilitator_id', true), '')::uuid
    );

CREATE POLICY student_sessions_own_classrooms ON public.student_sessions
    USING (
        NULLIF(current_setting('app.facilitator_id', true), '') IS NULL
        OR classroom_id IN (
            SELECT c.id FROM public.classrooms AS c
            WHERE c.facilitator_id = NULLIF(current_setting('app.facilitator_id', true), '')::uuid
        )
    );

CREATE POLICY student_progress_own_classrooms ON public.student_progress
    USING (
        NULLIF(current_setting('app.facilitator_id', true), '') IS NULL
        OR student_session_id IN (
            SELECT ss.id
            FROM public.student_sessions AS ss
            JOIN public.classrooms AS c ON c.id = ss.classroom_id
            WHERE c.facilitator_id = NULLIF(current_setting('app.facilitator_id', true), '')::uuid
        )
    );


-- -----------------------------------------------------------------------------
-- 8. Monitoring role
-- -----------------------------------------------------------------------------
-- Roles are cluster-wide: create it only if absent.  No password here (the
-- loader sets it).  It reads statistics through pg_monitor and the backup
-- tables directly -- and nothing about students or facilitators.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'hiw_monitor') THEN
        CREATE ROLE hiw_monitor LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION;
    END IF;
END
$$;

GRANT pg_monitor TO hiw_monitor;
GRANT USAGE ON SCHEMA public TO hiw_monitor;
GRANT SELECT ON public.backup_configurations, public.backup_execution_log TO hiw_monitor;
-- the job queue examples of config/custom/: the scheduling columns only, never payload or
-- last_error (which may carry application data)
GRANT SELECT (job_type, status, scheduled_at, finished_at) ON public.job_queue TO hiw_monitor;
-- the review's retention and audit checks: timestamps and the audit entry's table name,
-- never a session's token or an audit entry's values
GRANT SELECT (created_at) ON public.student_sessions TO hiw_monitor;
GRANT SELECT (id, table_name, created_at) ON public.audit_log TO hiw_monitor;
-- student_sessions has row-level security, whose policies the role could not evaluate:
-- BYPASSRLS lets it count every row's created_at (still the one column it may read)
ALTER ROLE hiw_monitor BYPASSRLS;


-- -----------------------------------------------------------------------------
-- 9. Statistics
-- -----------------------------------------------------------------------------
ANALYZE;
