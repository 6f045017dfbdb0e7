-- 7: the green CI verdict of each PR head seen (issue 13, reconcile's request economy).
-- A head that passed CI stays passed, so a pass reads a head's combined status only
-- while it has no row here. Only `success` is stored: a failure can turn green when CI
-- is re-run on the same commit, and a pending head, one without CI, or one in a state
-- orch does not know may change too; those are read again every time.
CREATE TABLE IF NOT EXISTS ci_verdicts (
    repo        TEXT NOT NULL,
    head_sha    TEXT NOT NULL,
    verdict     TEXT NOT NULL CHECK (verdict = 'success'),
    recorded_at INTEGER NOT NULL,
    PRIMARY KEY (repo, head_sha)
) WITHOUT ROWID;
