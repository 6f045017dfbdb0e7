-- 5: the final CI verdict of each PR head seen (issue 13, reconcile's request economy).
-- A head's final verdict does not change, so a pass reads a head's combined status only
-- while it has no row here. Only final verdicts are stored (`success`, `failure`); a
-- pending head, one without CI, or one in a state orch does not know is read again.
CREATE TABLE IF NOT EXISTS ci_verdicts (
    repo        TEXT NOT NULL,
    head_sha    TEXT NOT NULL,
    verdict     TEXT NOT NULL CHECK (verdict IN ('success', 'failure')),
    recorded_at INTEGER NOT NULL,
    PRIMARY KEY (repo, head_sha)
) WITHOUT ROWID;
