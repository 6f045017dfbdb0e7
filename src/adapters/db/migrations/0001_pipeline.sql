-- 1: tasks, their append-only stage events, and jobs.
CREATE TABLE tasks (
    id                 INTEGER PRIMARY KEY,
    project            TEXT    NOT NULL,
    work_item_id       TEXT    NOT NULL UNIQUE,
    key                TEXT    NOT NULL UNIQUE,
    title              TEXT    NOT NULL DEFAULT '',
    repo               TEXT    NOT NULL,
    branch             TEXT    NOT NULL,
    pr_number          INTEGER,
    stage              TEXT    NOT NULL CHECK (stage IN
                         ('analysis','development','review','deploy-staging','deploy','done','cancelled')),
    stage_entered_at   INTEGER NOT NULL,
    validated_revision TEXT,
    developer_retries  INTEGER NOT NULL DEFAULT 0 CHECK (developer_retries >= 0),
    escalated_at       INTEGER,
    escalation_reason  TEXT,
    created_at         INTEGER NOT NULL,
    updated_at         INTEGER NOT NULL
);
CREATE INDEX tasks_by_stage ON tasks (stage, stage_entered_at);
CREATE INDEX tasks_by_project ON tasks (project);

CREATE TABLE stage_events (
    id         INTEGER PRIMARY KEY,
    task_id    INTEGER NOT NULL REFERENCES tasks (id),
    from_stage TEXT,
    to_stage   TEXT    NOT NULL,
    reason     TEXT    NOT NULL,
    actor      TEXT    NOT NULL,
    at         INTEGER NOT NULL
);
CREATE INDEX stage_events_by_task ON stage_events (task_id, id);
CREATE TRIGGER stage_events_are_append_only BEFORE UPDATE ON stage_events
BEGIN
    SELECT RAISE(ABORT, 'stage_events are append-only');
END;

CREATE TABLE jobs (
    id             INTEGER PRIMARY KEY,
    task_id        INTEGER NOT NULL REFERENCES tasks (id),
    agent          TEXT    NOT NULL CHECK (agent IN ('analyst','developer','reviewer','deployer')),
    stage          TEXT    NOT NULL,
    status         TEXT    NOT NULL CHECK (status IN ('queued','running','succeeded','failed','cancelled')),
    attempt        INTEGER NOT NULL DEFAULT 1 CHECK (attempt >= 1),
    pid            INTEGER,
    pid_start_time INTEGER,
    supervisor_pid INTEGER,
    exit_code      INTEGER,
    enqueued_at    INTEGER NOT NULL,
    started_at     INTEGER,
    finished_at    INTEGER,
    reap_reason    TEXT,
    dead_ticks     INTEGER NOT NULL DEFAULT 0,
    rescue_count   INTEGER NOT NULL DEFAULT 0,
    log_path       TEXT
);
CREATE INDEX jobs_by_status ON jobs (status, enqueued_at, id);
CREATE INDEX jobs_by_task ON jobs (task_id, stage, id);
-- Entering a stage enqueues its job exactly once: one live job per task and stage.
CREATE UNIQUE INDEX jobs_one_live_per_task_stage ON jobs (task_id, stage)
    WHERE status IN ('queued','running');
