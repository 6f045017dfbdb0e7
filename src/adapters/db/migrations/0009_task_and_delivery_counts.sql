-- 9: the rest of the counts status shows, kept current as rows change (issue 17).
--
-- Tasks per project, stage and escalation, and deliveries per outcome, kept by triggers
-- in the transaction that changes a row (as `job_counts`, migration 8), so `status` and
-- the metrics read a handful of rows instead of counting tasks and deliveries.
CREATE TABLE task_counts (
    project   TEXT    NOT NULL,
    stage     TEXT    NOT NULL,
    escalated INTEGER NOT NULL,
    n         INTEGER NOT NULL,
    PRIMARY KEY (project, stage, escalated)
) WITHOUT ROWID;
INSERT INTO task_counts (project, stage, escalated, n)
    SELECT project, stage, escalated_at IS NOT NULL, count(*) FROM tasks GROUP BY 1, 2, 3;
CREATE TRIGGER task_counts_on_insert AFTER INSERT ON tasks
BEGIN
    INSERT INTO task_counts (project, stage, escalated, n)
        VALUES (NEW.project, NEW.stage, NEW.escalated_at IS NOT NULL, 1)
        ON CONFLICT (project, stage, escalated) DO UPDATE SET n = n + 1;
END;
CREATE TRIGGER task_counts_on_update AFTER UPDATE OF project, stage, escalated_at ON tasks
    WHEN OLD.project IS NOT NEW.project OR OLD.stage IS NOT NEW.stage
      OR (OLD.escalated_at IS NULL) <> (NEW.escalated_at IS NULL)
BEGIN
    UPDATE task_counts SET n = n - 1
     WHERE project = OLD.project AND stage = OLD.stage
       AND escalated = (OLD.escalated_at IS NOT NULL);
    INSERT INTO task_counts (project, stage, escalated, n)
        VALUES (NEW.project, NEW.stage, NEW.escalated_at IS NOT NULL, 1)
        ON CONFLICT (project, stage, escalated) DO UPDATE SET n = n + 1;
END;
CREATE TRIGGER task_counts_on_delete AFTER DELETE ON tasks
BEGIN
    UPDATE task_counts SET n = n - 1
     WHERE project = OLD.project AND stage = OLD.stage
       AND escalated = (OLD.escalated_at IS NOT NULL);
END;

CREATE TABLE delivery_counts (
    outcome TEXT    NOT NULL PRIMARY KEY,
    n       INTEGER NOT NULL
) WITHOUT ROWID;
INSERT INTO delivery_counts (outcome, n)
    SELECT outcome, count(*) FROM deliveries GROUP BY outcome;
CREATE TRIGGER delivery_counts_on_insert AFTER INSERT ON deliveries
BEGIN
    INSERT INTO delivery_counts (outcome, n) VALUES (NEW.outcome, 1)
        ON CONFLICT (outcome) DO UPDATE SET n = n + 1;
END;
CREATE TRIGGER delivery_counts_on_outcome AFTER UPDATE OF outcome ON deliveries
    WHEN OLD.outcome IS NOT NEW.outcome
BEGIN
    UPDATE delivery_counts SET n = n - 1 WHERE outcome = OLD.outcome;
    INSERT INTO delivery_counts (outcome, n) VALUES (NEW.outcome, 1)
        ON CONFLICT (outcome) DO UPDATE SET n = n + 1;
END;
CREATE TRIGGER delivery_counts_on_delete AFTER DELETE ON deliveries
BEGIN
    UPDATE delivery_counts SET n = n - 1 WHERE outcome = OLD.outcome;
END;
-- Its only reader was status's count of stale deliveries.
DROP INDEX deliveries_stale;
