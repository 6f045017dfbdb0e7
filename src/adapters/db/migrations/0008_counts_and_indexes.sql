-- 8: counts kept current, and the indexes the hot passes read along (issue 17).
--
-- `jobs.project` copies the task's project (a task never changes project), set by a
-- trigger on every insert however the row is written, so dispatch reads each project's
-- queue along one index in order with a `LIMIT`.
ALTER TABLE jobs ADD COLUMN project TEXT;
UPDATE jobs SET project = (SELECT project FROM tasks WHERE tasks.id = jobs.task_id);
CREATE TRIGGER jobs_take_their_task_project AFTER INSERT ON jobs
    WHEN NEW.project IS NULL
BEGIN
    UPDATE jobs SET project = (SELECT project FROM tasks WHERE id = NEW.task_id)
     WHERE id = NEW.id;
END;
CREATE INDEX jobs_queue_by_project ON jobs (project, stage = 'deploy-staging', enqueued_at, id)
    WHERE status = 'queued';
-- status lists the oldest running jobs by start without sorting them all.
CREATE INDEX jobs_running_by_start ON jobs (started_at, id) WHERE status = 'running';
-- status lists escalated tasks without scanning tasks.
CREATE INDEX tasks_escalated ON tasks (escalated_at) WHERE escalated_at IS NOT NULL;
-- reconcile asks, per escalated task, whether it was notified recently.
CREATE INDEX notifications_by_task ON notifications (task_id, kind, created_at);

-- Jobs per project and status, kept by triggers in the transaction that changes a row
-- (so a crash anywhere leaves them matching `count(*)`); status, dispatch and the
-- metrics read them instead of counting rows.
CREATE TABLE job_counts (
    project TEXT    NOT NULL,
    status  TEXT    NOT NULL,
    n       INTEGER NOT NULL,
    PRIMARY KEY (project, status)
) WITHOUT ROWID;
INSERT INTO job_counts (project, status, n)
    SELECT t.project, j.status, count(*) FROM jobs j JOIN tasks t ON t.id = j.task_id
     GROUP BY t.project, j.status;
CREATE TRIGGER job_counts_on_insert AFTER INSERT ON jobs
BEGIN
    INSERT INTO job_counts (project, status, n)
        VALUES ((SELECT project FROM tasks WHERE id = NEW.task_id), NEW.status, 1)
        ON CONFLICT (project, status) DO UPDATE SET n = n + 1;
END;
CREATE TRIGGER job_counts_on_status AFTER UPDATE OF status ON jobs
    WHEN OLD.status IS NOT NEW.status
BEGIN
    UPDATE job_counts SET n = n - 1
     WHERE project = (SELECT project FROM tasks WHERE id = OLD.task_id) AND status = OLD.status;
    INSERT INTO job_counts (project, status, n)
        VALUES ((SELECT project FROM tasks WHERE id = NEW.task_id), NEW.status, 1)
        ON CONFLICT (project, status) DO UPDATE SET n = n + 1;
END;
CREATE TRIGGER job_counts_on_delete AFTER DELETE ON jobs
BEGIN
    UPDATE job_counts SET n = n - 1
     WHERE project = (SELECT project FROM tasks WHERE id = OLD.task_id) AND status = OLD.status;
END;
