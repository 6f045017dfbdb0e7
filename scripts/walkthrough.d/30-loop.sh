# The main act: the whole loop, through the real binary and real passes only. A human
# moves the work item in Plane twice (start, approve); everything else is what the
# timers (dispatch, reconcile, post-deploy-tick), CI and the stub agents do. No
# `task move`, no SQL: if the pipeline cannot get a ticket through, the act stops here.

# plane_move PROJECT ITEM STATE_ID: a human moves a work item in Plane (the API call
# Plane's web UI makes); Plane's webhook delivery is sent separately (deliver).
plane_move() {
  curl -fsS -o /dev/null -X PATCH -H "X-API-Key: $ORCH_PLANE_API_KEY" -H 'Content-Type: application/json' \
    -d "{\"state\": \"$3\"}" "$ORCH_PLANE_URL/api/v1/workspaces/acme/projects/$1/work-items/$2/"
}
# plane_request PROJECT ITEM SEQ TITLE STATE_ID STATE_NAME GROUP DELIVERY [forged]:
# writes the HTTP request Plane sends for that state change to $WALK/request.http,
# signed over the raw body with the webhook secret (or with a forged signature).
plane_request() {
  python3 - "$@" <<'PY'
import hashlib, hmac, json, os, sys
project, item, seq, title, sid, sname, group, delivery = sys.argv[1:9]
body = json.dumps({
    "event": "issue", "action": "updated",
    "webhook_id": "7b1e4c2a-5d3f-4e8a-9c61-2f0d8b3a1e03",
    "workspace_id": "7b1e4c2a-5d3f-4e8a-9c61-2f0d8b3a1e01",
    "data": {"id": item, "name": title, "sequence_id": int(seq), "project": project,
             "state": {"id": sid, "name": sname, "color": "#60646C", "group": group}},
    "activity": {"field": "state_id", "new_value": sid, "old_value": None,
                 "old_identifier": None, "new_identifier": None},
}).encode()
secret = os.environ["ORCH_PLANE_WEBHOOK_SECRET"].encode()
sig = "0" * 64 if sys.argv[9:] == ["forged"] else hmac.new(secret, body, hashlib.sha256).hexdigest()
head = ("POST /webhooks/plane HTTP/1.1\r\nHost: orch.example\r\nContent-Type: application/json\r\n"
        "User-Agent: Autopilot\r\nX-Plane-Event: issue\r\nX-Plane-Delivery: %s\r\n"
        "X-Plane-Signature: %s\r\nContent-Length: %d\r\n\r\n" % (delivery, sig, len(body)))
open(os.path.join(os.environ["WALK"], "request.http"), "wb").write(head.encode() + body)
PY
}
# deliver ...: plane_request, then hands it to webhook-handle as the systemd socket does.
deliver() {
  plane_request "$@"
  printf '$ orch webhook-handle --stdio < request.http   (%s -> %s, delivery %s%s)\n' "$4" "$6" "$8" "${9:+, $9}"
  set +e; orch webhook-handle --stdio <"$WALK/request.http" | tr -d '\r'; local rc=${PIPESTATUS[0]}; set -e
  echo; echo "(exit $rc)"
}
# run_job: the dispatch timer fires; wait for the job's supervisor (dispatch names it)
# to exit, on a pidfd (an event, not a sleep); then show what the agent did, from its log.
run_job() {
  local out job pid
  printf '$ orch dispatch\n'
  out=$(orch dispatch 2>&1)
  echo "$out"
  read -r job pid < <(sed -n 's/.*started job \([0-9]*\) (direct, supervisor pid \([0-9]*\)).*/\1 \2/p' <<<"$out")
  if [ -z "${job:-}" ]; then echo "THE LOOP STOPPED: dispatch started no job"; exit 1; fi
  orch-test-agent --wait-pid "$pid"
  echo "--- job $job's log (what the agent did, then the gate):"
  grep -v '^\$ orch task show\|^(exit 0)$\|^{\|^ \|^}' "$ORCH_STATE_DIR/jobs/$job.log" | sed 's/^/    /' || true
}
# task_field KEY FIELD: a top-level string field of `orch task show KEY --json` (pretty
# printed, so a top-level key is the one indented by two spaces; no python start-up).
task_field() { orch task show "$1" --json | sed -n "s/^  \"$2\": \"\(.*\)\",\{0,1\}\$/\1/p"; }
# expect_stage KEY STAGE: the loop goes on only if the pipeline moved the task there.
expect_stage() {
  local got
  got=$(task_field "$1" stage)
  if [ "$got" != "$2" ]; then
    echo "THE LOOP STOPPED: $1 is at $got, expected $2"
    orch task show "$1"
    exit 1
  fi
  echo "=> $1 is at $2"
}
# open_pr KEY REPO: sets pr_number and pr_head from the open PR of the task's branch.
open_pr() {
  local branch
  branch=$(task_field "$1" branch)
  read -r pr_number pr_head < <(gitea_get "repos/$2/pulls?state=open" |
    json "' '.join(next(([str(p['number']), p['head']['sha']] for p in j if p['head']['ref'] == '$branch'), ['-', '-']))")
  echo "=> PR #$pr_number is open for $branch at $pr_head"
}
# ci_green REPO SHA: the CI system reports success on a commit.
ci_green() {
  printf '$ curl -X POST .../repos/%s/statuses/%s {"state": "success", "context": "ci/test"}\n' "$1" "$2"
  curl -fsS -o /dev/null -X POST -H "Authorization: token $ORCH_GITEA_TOKEN" -H 'Content-Type: application/json' \
    -d '{"state": "success", "context": "ci/test"}' "$ORCH_GITEA_URL/api/v1/repos/$1/statuses/$2"
}
# next_host: which host the next timer fires on; one host here (70-two-hosts.sh
# alternates between two).
next_host() { :; }
# round KEY REPO N: one round from development to done, driven as the timers would.
round() {
  local key=$1 repo=$2 n=$3
  step "round $n: dispatch starts the developer: it commits to the task's branch and opens a PR"
  next_host; run_job
  open_pr "$key" "$repo"
  expect_stage "$key" development
  echo "(no CI result yet: the development gate waits)"

  step "round $n: CI goes green on the PR head; the reconcile timer (after its grace) re-drives the gate"
  ci_green "$repo" "$pr_head"
  advance 301
  next_host; show orch reconcile
  expect_stage "$key" review

  step "round $n: the reviewer approves; run-job's gate moves the task on at once"
  next_host; run_job
  expect_stage "$key" deploy-staging

  step "round $n: the deployer puts the PR head on staging and runs staging-check --task"
  next_host; run_job
  show sed -n '1,/^---$/{/^---$/!p}' "$ORCH_ARTEFACTS_DIR/$key/10-staging-report.md"
  printf '$ curl %s/version\n' "$STUB_STAGING_URL"; curl -fsS "$STUB_STAGING_URL/version"; echo
  expect_stage "$key" deploy

  step "round $n: the deployer merges through merge-guard, deploys main to production, reports"
  next_host; run_job
  printf '$ curl %s/version\n' "$STUB_PROD_URL"; curl -fsS "$STUB_PROD_URL/version"; echo
  expect_stage "$key" done
}

# --- Act 1: an ordinary repository, shop ---------------------------------------------
export STUB_PROD_URL=$url_shop_prod
SHOP_IN_PROGRESS=3f9a1c0e-8b7d-4c2a-a1e5-000000000b02
SHOP_APPROVED=3f9a1c0e-8b7d-4c2a-a1e5-000000000b03

step "a human moves SHOP-7 to In Progress in Plane; Plane sends a signed delivery"
plane_move "$SHOP_PROJECT" "$SHOP_ITEM" "$SHOP_IN_PROGRESS"
deliver "$SHOP_PROJECT" "$SHOP_ITEM" 7 "Add a basket page" "$SHOP_IN_PROGRESS" "In Progress" started d-0001
show orch task show SHOP-7

step "Plane retries with a new delivery id and the same bytes: 200, nothing done twice"
deliver "$SHOP_PROJECT" "$SHOP_ITEM" 7 "Add a basket page" "$SHOP_IN_PROGRESS" "In Progress" started d-0002

step "a forged signature is refused (401) and leaves nothing behind"
deliver "$SHOP_PROJECT" "$SHOP_ITEM" 7 "Add a basket page" "$SHOP_IN_PROGRESS" "In Progress" started d-0003 forged

step "dispatch starts the analyst (a detached run-job supervising the stub agent)"
run_job
expect_stage SHOP-7 analysis
echo "(analysis is a human's call: nothing moves until Plane says Approved)"

step "the human approves SHOP-7 in Plane: the only human step of the loop"
advance 60
plane_move "$SHOP_PROJECT" "$SHOP_ITEM" "$SHOP_APPROVED"
deliver "$SHOP_PROJECT" "$SHOP_ITEM" 7 "Add a basket page" "$SHOP_APPROVED" Approved started d-0004
expect_stage SHOP-7 development

round SHOP-7 acme/shop 1
shop_first_pr=$pr_number

step "a re-driven deployer would run the guard again: already merged, nothing merged twice"
show_rc orch merge-guard --task SHOP-7

step "production degrades in the post-deploy window: three failed probes mean DEGRADED"
post "$url_shop_prod/_control/health?status=503"
for _ in 1 2 3 4; do
  advance 60
  show orch post-deploy-tick
done
show sed -n '1,/^---$/{/^---$/!p}' "$ORCH_ARTEFACTS_DIR/SHOP-7/16-post-deploy-log.md"
printf '$ curl %s/version   (the rollback went back to the previous revision)\n' "$url_shop_prod"
curl -fsS "$url_shop_prod/version"; echo
expect_stage SHOP-7 development

step "reopened: round 2 starts with a fresh branch from main, no PR and no pin"
echo "(the timers go on: a reconcile pass completes the round's branch if the reopen could not)"
advance 301
show orch reconcile
show orch task show SHOP-7

round SHOP-7 acme/shop 2
if [ "$pr_number" = "$shop_first_pr" ]; then
  echo "THE LOOP STOPPED: round 2 reused PR #$pr_number"; exit 1
fi
echo "=> round 1 shipped PR #$shop_first_pr, round 2 shipped PR #$pr_number"

step "SHOP-7's history: every stage change made by the pipeline (webhook, reconcile, run-job, post-deploy)"
show orch task show SHOP-7
