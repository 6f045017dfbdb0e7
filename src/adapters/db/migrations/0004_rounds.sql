-- 4: rounds and branch readiness (issue 11).
-- `round` counts the task's rounds: 1 at creation, +1 for every move back to
-- development after its PR was merged (the task then gets a fresh branch, no PR and no
-- validated revision). `branch_ready_at` is when the current round's branch was
-- confirmed on Gitea (created, or found existing); NULL means reconcile must still
-- create it.
ALTER TABLE tasks ADD COLUMN round INTEGER NOT NULL DEFAULT 1;
ALTER TABLE tasks ADD COLUMN branch_ready_at INTEGER;
-- A task past development had its branch (its PR was opened from it); confirming it
-- again could recreate a branch its merge deleted. Tasks at analysis or development
-- start NULL: reconcile confirms each such branch once (an existing one answers 409,
-- which counts as ready), which also completes a start that found Gitea down.
UPDATE tasks SET branch_ready_at = updated_at
 WHERE stage NOT IN ('analysis', 'development');
