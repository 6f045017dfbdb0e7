# Doctor: what an operator runs after init and after every upgrade of Plane or Gitea.
# Read-only (GETs only); one OK/WARN/FAIL line per check with the fix (docs/doctor.md).
# This pipeline file gives no state the meaning "rejected": a WARN, so doctor exits 0.
step "check Plane, Gitea, Telegram and the local state (read-only)"
show orch doctor
