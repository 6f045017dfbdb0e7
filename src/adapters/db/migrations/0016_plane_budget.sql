-- 16: the last Plane rate-limit budget seen (issue 15): X-RateLimit-Remaining of the
-- newest Plane answer that carried it, whichever command read it, kept in one row so
-- every pass shares it and `status --prometheus` exports it.
CREATE TABLE plane_budget (
    id        INTEGER NOT NULL PRIMARY KEY CHECK (id = 1),
    remaining INTEGER NOT NULL,
    seen_at   INTEGER NOT NULL
);
