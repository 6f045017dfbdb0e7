-- 17: more than one host (issue 14); the SQLite file of the same number says why.
ALTER TABLE jobs ADD COLUMN host TEXT;
ALTER TABLE jobs ADD COLUMN heartbeat_at BIGINT;
CREATE INDEX jobs_running_by_host ON jobs (host) WHERE status = 'running';

CREATE TABLE hosts (
    id           TEXT   NOT NULL PRIMARY KEY,
    heartbeat_at BIGINT NOT NULL
);

CREATE TABLE leases (
    name        TEXT   NOT NULL PRIMARY KEY,
    holder      TEXT   NOT NULL,
    generation  BIGINT NOT NULL,
    acquired_at BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL,
    detail      TEXT
);

CREATE TABLE shared_files (
    kind       TEXT   NOT NULL,
    key        TEXT   NOT NULL,
    body       BYTEA  NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (kind, key)
);

-- When its holder released the lease (unix seconds; NULL while held or once lapsed):
-- a released lease is free at once, and status tells a release from a lapse.
ALTER TABLE leases ADD COLUMN released_at BIGINT;
