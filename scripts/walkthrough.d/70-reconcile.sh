# Reconcile: a lost approval webhook is re-driven by the next pass, and a task at the
# developer retry limit (escalated) is left alone, with no request made for it.
plane_item="$ORCH_PLANE_URL/api/v1/workspaces/acme/projects/7b1e4c2a-5d3f-4e8a-9c61-2f0d8b3a1e02/work-items/7b1e4c2a-5d3f-4e8a-9c61-2f0d8b3a1e04/"
export ORCH_RECONCILE_GRACE_S=0

step "ORCH-42 is approved in Plane, but the webhook is lost (nothing reaches orch)"
echo '$ curl -X PATCH .../work-items/<ORCH-42>/ {"state": "<Approved>"}'
curl -fsS -o /dev/null -X PATCH -H "X-API-Key: $ORCH_PLANE_API_KEY" -H 'Content-Type: application/json' \
  -d '{"state": "7b1e4c2a-5d3f-4e8a-9c61-2f0d8b3a1eb6"}' "$plane_item"
show orch task show ORCH-42

step "a task bounced back to development three times: developer retries at the limit"
show orch task add --project orch --work-item 7b1e4c2a-5d3f-4e8a-9c61-2f0d8b3a1e77 --key ORCH-77 --title "Flaky export"
for _ in 1 2 3; do
  orch task move ORCH-77 --to development --reason "walkthrough: approved" >/dev/null 2>&1 || true
  orch task move ORCH-77 --to review --reason "walkthrough: developer done" >/dev/null
  orch task move ORCH-77 --to development --reason "walkthrough: reviewer requested changes" >/dev/null
done
sqlite3 "$ORCH_DB" "UPDATE jobs SET status='cancelled' WHERE status IN ('queued','running') AND task_id=(SELECT id FROM tasks WHERE key='ORCH-77')"
show orch task show ORCH-77

step "what the next pass would do, task by task (changes nothing)"
show orch reconcile --dry-run

step "the pass: ORCH-42 moves to development; ORCH-77 is left alone"
show orch reconcile
show orch task show ORCH-42

step "a second pass does nothing new"
show orch reconcile
show orch status
unset ORCH_RECONCILE_GRACE_S
