# Jobs beyond the loop: a job whose agent dies is rescued by reap after
# ORCH_REAPER_DEAD_TICKS passes, and the job commands an operator has. The clock still
# moves only through ORCH_NOW, so nothing here waits for a timer.

step "a job whose agent dies: the supervisor is gone, the job is left 'running'"
# Start a task by hand (the operator's path, the same as a start delivery), claim its
# analyst job the way dispatch does, and give it an agent that is killed with SIGKILL
# with no supervisor to record the end: the zombie the reaper rescues.
show orch task add --project orch --work-item 7b1e4c2a-2222-4c3a-9d2e-000000000007 --key ORCH-7 --title "Reaper demo"
orch-test-agent --hold-forever >/dev/null 2>&1 &
victim=$!
job=$(orch job list --status queued --json | json 'j[0]["id"]')
python3 - "$ORCH_DB" "$job" "$victim" "$((clock_base + clock))" <<'PY'
import sqlite3, sys
db, job, pid, now = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
start = int(open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[19])
c = sqlite3.connect(db)
c.execute("UPDATE jobs SET status='running', started_at=?, pid=?, pid_start_time=? WHERE id=?",
          (now, pid, start, job))
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
jid=$(orch job list --status queued --json | json 'j[0]["id"]')
show orch job cancel "$jid"
show_rc orch job cancel "$jid"

step "a move the pipeline table does not allow is refused (exit 1)"
show_rc orch task move ORCH-7 --to deploy --reason "skip ahead"

step "the reaper's last pass, at a glance"
show orch status
