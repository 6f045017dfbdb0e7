-- 15: feedback for red CI (issue 16). Red CI does not move a task (it is at development
-- and its gate waits); reconcile re-runs the developer's job, and that re-run writes the
-- task's next numbered feedback file with the failing CI contexts. The count of those
-- re-runs, kept on the task in the same transaction as the re-run, numbers the files
-- together with the task's moves back to development (`stage_events`): the number comes
-- from the record, never from the artefact folder agents write.
ALTER TABLE tasks ADD COLUMN ci_feedbacks INTEGER NOT NULL DEFAULT 0;
