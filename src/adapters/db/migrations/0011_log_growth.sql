-- 11: stall detection (issue 16). `reap` stores the size of a running job's log and the
-- pass time it last saw that size change; a live agent whose log has not grown for
-- ORCH_AGENT_STALL_S is stopped as `stalled`. NULL until the first reap pass sees the
-- attempt (a claim clears both).
ALTER TABLE jobs ADD COLUMN log_size INTEGER;
ALTER TABLE jobs ADD COLUMN log_grew_at INTEGER;
