# Jobs: dispatch starts the queued analyst job under a supervisor, a job whose agent dies
# is rescued by reap after ORCH_REAPER_DEAD_TICKS passes, and job commands for operators.
# Time is stepped with ORCH_NOW, so nothing here waits for a timer.

step "dispatch starts the queued analyst job (direct launcher: a detached run-job)"
show orch job list
show orch dispatch --dry-run
show orch dispatch
# The supervisor runs the stub agent and flips the job; wait for it to exit (by pid).
read -r first sup < <(python3 - "$ORCH_DB" <<'PY'
import sqlite3, sys
c = sqlite3.connect(sys.argv[1])
print(*c.execute("SELECT id, coalesce(supervisor_pid, 0) FROM jobs ORDER BY id LIMIT 1").fetchone())
PY
)
[ "$sup" != 0 ] && timeout 60 tail --pid="$sup" -f /dev/null || true
show orch job list
show cat "$ORCH_STATE_DIR/jobs/$first.log"

step "a job whose agent dies: the supervisor is gone, the job is left 'running'"
# Enqueue a job by hand and claim it the way dispatch does, then give it an agent that is
# killed with SIGKILL (and no supervisor to record the end): the zombie the reaper rescues.
show orch task add --project orch --work-item 0b8f5d2e-2222-4c3a-9d2e-000000000002 --key ORCH-7 --title "Reaper demo"
orch-test-agent --hold-forever >/dev/null 2>&1 &
victim=$!
job=$(orch job list --status queued --json | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["id"])')
python3 - "$ORCH_DB" "$job" "$victim" <<'PY'
import sqlite3, sys, time
db, job, pid = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
start = int(open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[19])
c = sqlite3.connect(db)
c.execute("UPDATE jobs SET status='running', started_at=?, pid=?, pid_start_time=? WHERE id=?",
          (int(time.time()), pid, start, job))
c.commit()
PY
show orch status
show kill -KILL "$victim"
wait "$victim" 2>/dev/null || true

step "reap: dead for 1, 2 passes (the streak is kept in the database), flipped on the 3rd"
show orch reap --dry-run
show orch reap
show orch reap
show orch reap
show orch job list --status failed

step "operator commands: enqueue once, cancel"
show orch job enqueue --task ORCH-7 --agent analyst
show_rc orch job enqueue --task ORCH-7 --agent developer
jid=$(orch job list --status queued --json | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["id"])')
show orch job cancel "$jid"
show_rc orch job cancel "$jid"

step "the reaper's last pass and the lease holder, at a glance"
show orch status
