-- 4: rounds and branch readiness (issue 11).
-- `round` counts the task's rounds: 1 at creation, +1 for every move back to
-- development after its PR was merged (the task then gets a fresh branch, no PR and no
-- validated revision). `branch_ready_at` is when the current round's branch was
-- confirmed on Gitea (created, or found existing); NULL means reconcile must still
-- create it. Existing rows start NULL: reconcile confirms each live task's branch once
-- (an existing branch answers 409, which counts as ready).
ALTER TABLE tasks ADD COLUMN round INTEGER NOT NULL DEFAULT 1;
ALTER TABLE tasks ADD COLUMN branch_ready_at INTEGER;
