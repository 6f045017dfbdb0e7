-- 6: the newest update seen of each work item (issue 13: stale deliveries).
-- One row per work item, raised with max() by every stored delivery of it and every
-- listing that shows it (whether or not anything was acted on). A delivery whose
-- data.updated_at is strictly older than this row acts on nothing (outcome `stale`).
-- `updated_us` is Plane's updated_at in microseconds since the epoch (Plane writes
-- microseconds); `updated_at` is the text as Plane wrote it, for people.
CREATE TABLE work_item_updates (
    work_item_id TEXT    PRIMARY KEY,
    updated_us   INTEGER NOT NULL,
    updated_at   TEXT    NOT NULL,
    source       TEXT    NOT NULL,
    seen_at      INTEGER NOT NULL
);
-- `status` counts stale deliveries without reading the whole table.
CREATE INDEX deliveries_stale ON deliveries (outcome) WHERE outcome = 'stale';
