-- 12: human holds (issue 15): "freeze project P now / until T". One row per `hold set`
-- and `hold clear`, never updated nor deleted: the table is the record of who froze
-- and thawed what, and when. A project's hold is its newest row when that row is a
-- `set` whose `until` (if any) is still ahead of the pass's time.
CREATE TABLE IF NOT EXISTS hold_events (
    id        INTEGER PRIMARY KEY,
    project   TEXT    NOT NULL,
    action    TEXT    NOT NULL CHECK (action IN ('set', 'clear')),
    reason    TEXT    NOT NULL,
    -- Unix seconds the hold lapses at by itself; only on a `set`, NULL: until cleared.
    until     INTEGER CHECK (until IS NULL OR action = 'set'),
    -- Who: `--by`, else the OS user; the OS user always.
    by_name   TEXT    NOT NULL,
    os_user   TEXT    NOT NULL,
    -- The job whose agent made the call, when made from inside one (as stage events).
    agent_job INTEGER,
    at        INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS hold_events_by_project ON hold_events (project, id);
