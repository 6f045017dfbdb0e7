-- 5: provenance of stage changes (issue 18).
-- `delivery` is the Plane delivery (deliveries row) whose acting made the move, for a
-- webhook or a reconcile replay: its X-Plane-Delivery id tells a delivery Plane sent
-- from one signed with a leaked secret. `agent_job` is the job whose agent's process
-- group ran the command that made the move (an agent running `orch task move`, or
-- `webhook-handle` with a secret of its own): a move made from inside an agent is
-- visibly attributed to it. Both NULL for everything before this version.
ALTER TABLE stage_events ADD COLUMN delivery INTEGER REFERENCES deliveries (id);
ALTER TABLE stage_events ADD COLUMN agent_job INTEGER;
