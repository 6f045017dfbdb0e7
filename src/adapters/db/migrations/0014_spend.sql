-- 14: spend (issue 16). The usage an agent reports for a job (docs/jobs.md, "Spend"),
-- on the job row (NULL: nothing reported), and running totals per task and per project
-- kept in the same transaction as the job's usage, so `task show`, `status` and
-- dispatch's budget check read one row instead of summing jobs. Cost is in micro-units
-- (millionths of the reported currency): integer sums never drift.
ALTER TABLE jobs ADD COLUMN tokens_in INTEGER;
ALTER TABLE jobs ADD COLUMN tokens_out INTEGER;
ALTER TABLE jobs ADD COLUMN cost_micros INTEGER;
ALTER TABLE jobs ADD COLUMN currency TEXT;
CREATE TABLE task_spend (
    task_id     INTEGER NOT NULL PRIMARY KEY REFERENCES tasks(id) ON DELETE CASCADE,
    jobs        INTEGER NOT NULL,
    tokens_in   INTEGER NOT NULL,
    tokens_out  INTEGER NOT NULL,
    cost_micros INTEGER NOT NULL
);
CREATE TABLE project_spend (
    project     TEXT    NOT NULL PRIMARY KEY,
    jobs        INTEGER NOT NULL,
    tokens_in   INTEGER NOT NULL,
    tokens_out  INTEGER NOT NULL,
    cost_micros INTEGER NOT NULL
) WITHOUT ROWID;
