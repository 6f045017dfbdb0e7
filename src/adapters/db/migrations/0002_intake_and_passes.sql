-- 2: webhook deliveries, the Plane state cache, notifications, and pass records.
CREATE TABLE deliveries (
    id           INTEGER PRIMARY KEY,
    body_sha256  TEXT    NOT NULL UNIQUE,
    delivery_id  TEXT,
    event        TEXT,
    body         BLOB    NOT NULL,
    received_at  INTEGER NOT NULL,
    outcome      TEXT    NOT NULL DEFAULT 'pending',
    detail       TEXT,
    attempts     INTEGER NOT NULL DEFAULT 0,
    processed_at INTEGER,
    error        TEXT
);
CREATE INDEX deliveries_pending ON deliveries (outcome, received_at) WHERE outcome = 'pending';

CREATE TABLE plane_states (
    project    TEXT    NOT NULL,
    state_id   TEXT    NOT NULL,
    name       TEXT    NOT NULL,
    state_group TEXT   NOT NULL,
    fetched_at INTEGER NOT NULL,
    PRIMARY KEY (project, state_id)
);

CREATE TABLE notifications (
    id         INTEGER PRIMARY KEY,
    dedupe_key TEXT    NOT NULL UNIQUE,
    kind       TEXT    NOT NULL,
    task_id    INTEGER REFERENCES tasks (id),
    message    TEXT    NOT NULL,
    created_at INTEGER NOT NULL,
    sent_at    INTEGER,
    channel    TEXT,
    error      TEXT
);

CREATE TABLE passes (
    command     TEXT    PRIMARY KEY,
    started_at  INTEGER NOT NULL,
    duration_ms INTEGER NOT NULL,
    outcome     TEXT    NOT NULL,
    counts      TEXT    NOT NULL DEFAULT '{}'
);
