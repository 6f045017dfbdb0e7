-- 17: more than one host (issue 14). The same columns and tables on both engines
-- (postgres/0017_hosts_and_leases.sql); SQLite installs have one host and keep their
-- file locks, so they leave most of this empty.
--
-- jobs.host: the ORCH_HOST_ID of the dispatch that claimed the job (NULL for jobs
-- claimed before this version: judged as this host's, by pid). jobs.heartbeat_at: the
-- last heartbeat of the job's run-job supervisor (unix seconds; on PostgreSQL the
-- database's clock), the liveness of a job on another host.
ALTER TABLE jobs ADD COLUMN host TEXT;
ALTER TABLE jobs ADD COLUMN heartbeat_at INTEGER;
CREATE INDEX jobs_running_by_host ON jobs (host) WHERE status = 'running';

-- Each host's last sign of life (its dispatch or a supervisor's heartbeat).
CREATE TABLE hosts (
    id           TEXT    NOT NULL PRIMARY KEY,
    heartbeat_at INTEGER NOT NULL
);

-- Leases that make one holder at a time across hosts: the merge lease, the passes that
-- must run once (reconcile, post-deploy-tick). A holder takes a free or expired lease
-- by raising its generation; it renews and releases only the generation it took.
CREATE TABLE leases (
    name        TEXT    NOT NULL PRIMARY KEY,
    holder      TEXT    NOT NULL,
    generation  INTEGER NOT NULL,
    acquired_at INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL,
    detail      TEXT
);

-- State that is a file on one host and must reach every host under PostgreSQL: an
-- agent's artefacts (kind 'artefact', key '<task key>/<file>'), post-deploy windows
-- ('window'), the reconcile cursor ('cursor').
CREATE TABLE shared_files (
    kind       TEXT    NOT NULL,
    key        TEXT    NOT NULL,
    body       BLOB    NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (kind, key)
);

-- When its holder released the lease (unix seconds; NULL while held or once lapsed):
-- a released lease is free at once, and status tells a release from a lapse.
ALTER TABLE leases ADD COLUMN released_at INTEGER;
