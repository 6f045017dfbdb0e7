-- 13: the Plane work item's priority, and dispatch's queue read in priority order
-- (issue 16).
--
-- `tasks.priority` is Plane's value (`core::priority`), recorded at start and refreshed
-- by reconcile's listing. `jobs.priority_rank` copies it as the start order (0 urgent
-- .. 4 none) so each project's queue is one index read in order: it is kept equal to
-- the task's by triggers however a row is written (a job inserted without it, or with
-- another rank, takes its task's; a task whose priority changes carries every one of
-- its jobs along, so a re-run job keeps the current one). Adding the columns with a
-- default rewrites no row: every existing task is `none`, every existing job rank 4.
ALTER TABLE tasks ADD COLUMN priority TEXT NOT NULL DEFAULT 'none'
    CHECK (priority IN ('urgent','high','medium','low','none'));
ALTER TABLE jobs ADD COLUMN priority_rank INTEGER NOT NULL DEFAULT 4;

CREATE TRIGGER jobs_take_their_task_priority AFTER INSERT ON jobs
    WHEN NEW.priority_rank IS NOT (SELECT CASE priority WHEN 'urgent' THEN 0 WHEN 'high' THEN 1
                                   WHEN 'medium' THEN 2 WHEN 'low' THEN 3 ELSE 4 END
                                   FROM tasks WHERE id = NEW.task_id)
BEGIN
    UPDATE jobs SET priority_rank = (SELECT CASE priority WHEN 'urgent' THEN 0 WHEN 'high' THEN 1
                                     WHEN 'medium' THEN 2 WHEN 'low' THEN 3 ELSE 4 END
                                     FROM tasks WHERE id = NEW.task_id)
     WHERE id = NEW.id;
END;
CREATE TRIGGER tasks_priority_to_their_jobs AFTER UPDATE OF priority ON tasks
    WHEN OLD.priority IS NOT NEW.priority
BEGIN
    UPDATE jobs SET priority_rank = CASE NEW.priority WHEN 'urgent' THEN 0 WHEN 'high' THEN 1
                                    WHEN 'medium' THEN 2 WHEN 'low' THEN 3 ELSE 4 END
     WHERE task_id = NEW.id;
END;

-- Each project's queue by priority, then age: dispatch reads it in order with a stop,
-- as it read `jobs_queue_by_project` (which this replaces; keeping both would cost
-- every job write a second index for nothing).
DROP INDEX jobs_queue_by_project;
CREATE INDEX jobs_queue_by_priority
    ON jobs (project, stage = 'deploy-staging', priority_rank, enqueued_at, id)
    WHERE status = 'queued';
