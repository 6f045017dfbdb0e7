-- 3: the supervisor's process start time, so a reused supervisor pid is never taken for
-- a live supervisor (nor its process group signalled).
ALTER TABLE jobs ADD COLUMN supervisor_start_time INTEGER;
